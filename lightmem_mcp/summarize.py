"""Summaries of a session, a time window or a topic, stored as searchable `summary` records.

LightMem's approach: the memories of one window, plus a few related earlier memories as
cross-event seeds, go to the LLM in one call per window. Without an LLM the summary is
extractive: the most central sentences (by embedding similarity to the rest of the window), in
time order, within the token budget, and marked as such.

A summary's id depends only on its scope, window and topic, so summarizing the same window again
replaces it in place (the previous text goes to its history) and never duplicates. The schedule's
progress (which facts are already summarized) is a record in the store per user, never a pointer
in this process, so restarts and several replicas stay correct.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from pydantic import BaseModel, Field

from lightmem_mcp.config import SummarySettings
from lightmem_mcp.embedder import Embedder
from lightmem_mcp.indexing import Indexer
from lightmem_mcp.ledger import UsageLedger
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.llm import LLMCall, LLMClient, LLMError
from lightmem_mcp.records import FoundPoint, RecordFilter, Scope, StoredPoint, record_id, record_payload
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import from_epoch, now, to_epoch
from lightmem_mcp.tokens import TokenCounter

log = logging.getLogger(__name__)

PURPOSE = "summary"
PROGRESS_KIND = "progress"

Window = Literal["all", "session", "day", "week"]
Progress = Callable[[float, float, str], None]

_MAX_READ = 10_000
# A topic summary reads the memories at least this similar to the topic (cosine).
_TOPIC_FLOOR = 0.3
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

SYSTEM_PROMPT = """\
You write summaries of a person's long-term memory, to be recalled later. You get the memories \
of one period, numbered and with their times, and a few related EARLIER memories for context.

Summarize the period in the third person: the events, decisions, plans, preferences and changes, \
with the names, numbers, places and absolute dates given. Use the earlier memories only where \
they explain the period. Stay under {words} words and add nothing the memories do not say.

Answer with JSON only, in this shape: {{"summary": "..."}}"""


class SummaryAnswer(BaseModel):
    """The whole JSON answer."""

    summary: str = Field(min_length=1)


class SummaryInfo(BaseModel):
    """One summary written."""

    id: str = Field(description="The summary record's id (get_memory, search_memory kind 'summary').")
    text: str
    method: Literal["llm", "extractive"] = Field(description="extractive: no LLM configured, central sentences.")
    window: Window
    window_key: str = Field(description="The session id, the day (YYYY-MM-DD), the ISO week or 'all'.")
    topic: str | None
    start: datetime = Field(description="Time of the earliest memory covered.")
    end: datetime = Field(description="Time of the latest memory covered.")
    covered_ids: list[str] = Field(description="The memory records summarized.")
    source_ids: list[str] = Field(description="The messages they come from.")


class SummarizeResult(BaseModel):
    """What summarize wrote."""

    summaries: list[SummaryInfo]
    llm_calls: int
    error: str | None = Field(default=None, description="Why some windows were not summarized.")


@dataclass(frozen=True)
class _Entry:
    point: FoundPoint

    @property
    def text(self) -> str:
        return str(self.point.payload["text"])

    @property
    def ts(self) -> float:
        return float(cast(float, self.point.payload["event_ts"]))


class Summarizer:
    """Writes summary records for the windows of a scope."""

    def __init__(
        self,
        settings: SummarySettings,
        store: VectorStore,
        embedder: Embedder,
        lexical: LexicalEncoder,
        llm: LLMClient,
        ledger: UsageLedger,
        counter: TokenCounter,
    ) -> None:
        self._settings = settings
        self._store = store
        self._embedder = embedder
        self._indexer = Indexer(embedder, lexical)
        self._llm = llm
        self._ledger = ledger
        self._counter = counter

    def run(
        self,
        scope: Scope,
        *,
        window: Window = "all",
        since_ts: float | None = None,
        until_ts: float | None = None,
        topic: str | None = None,
        progress: Progress | None = None,
    ) -> SummarizeResult:
        """Summarize the scope's memories in range, one summary per window."""
        entries = self._entries(scope, since_ts, until_ts, topic)
        groups = _group(entries, window)
        summaries: list[SummaryInfo] = []
        calls = 0
        error = None
        for number, (key, group) in enumerate(groups, start=1):
            group = group[-self._settings.max_entries :]
            try:
                info, called = self._summarize(scope, window, key, topic, group)
            except LLMError as exc:
                calls += 1
                error = str(exc)
                break
            calls += called
            summaries.append(info)
            if progress is not None:
                progress(number, len(groups), f"summarized {number} of {len(groups)} windows")
        return SummarizeResult(summaries=summaries, llm_calls=calls, error=error)

    def run_scheduled(self, user_id: str) -> SummarizeResult | None:
        """Re-summarize each day of the user with facts newer than the stored progress mark."""
        mark_id = record_id(Scope(user_id), PROGRESS_KIND, "summary")
        found = self._store.scroll(RecordFilter(user_id, kinds=(PROGRESS_KIND,), ids=(mark_id,)), 1)
        mark = float(cast(float, found[0].payload.get("summarized_created_ts", 0.0))) if found else 0.0
        facts = self._store.scroll(RecordFilter(user_id, kinds=("fact",), statuses=("active",)), _MAX_READ)
        fresh = [p for p in facts if float(cast(float, p.payload["created_ts"])) > mark]
        if not fresh:
            return None
        days = sorted({from_epoch(_Entry(p).ts).date() for p in fresh})
        result = SummarizeResult(summaries=[], llm_calls=0)
        for day in days:
            start = datetime(day.year, day.month, day.day, tzinfo=from_epoch(0).tzinfo)
            done = self.run(
                Scope(user_id),
                window="day",
                since_ts=to_epoch(start),
                until_ts=to_epoch(start + timedelta(days=1)) - 1e-6,
            )
            result.summaries += done.summaries
            result.llm_calls += done.llm_calls
            if done.error:
                result.error = done.error
                return result
        newest = max(float(cast(float, p.payload["created_ts"])) for p in fresh)
        payload: dict[str, object] = {
            "user_id": user_id,
            "agent_id": None,
            "session_id": None,
            "kind": PROGRESS_KIND,
            "status": "active",
            "summarized_created_ts": newest,
            "event_ts": to_epoch(now()),
            "created_ts": to_epoch(now()),
        }
        self._store.upsert([StoredPoint(mark_id, None, None, payload)])
        return result

    # -- reading -------------------------------------------------------------------------

    def _entries(self, scope: Scope, since_ts: float | None, until_ts: float | None, topic: str | None) -> list[_Entry]:
        """The facts in range (the turns when there are no facts), oldest first."""
        for kind in ("fact", "turn"):
            where = RecordFilter(
                scope.user_id,
                scope.agent_id,
                scope.session_id,
                kinds=(kind,),
                statuses=("active",),
                since_ts=since_ts,
                until_ts=until_ts,
            )
            if topic:
                query = self._embedder.embed_query(topic)
                found = self._store.nearest(query, where, self._settings.max_entries)
                found = [p for p in found if p.score >= _TOPIC_FLOOR]
            else:
                found = self._store.scroll(where, _MAX_READ, with_vectors=True)
            if found:
                return sorted((_Entry(p) for p in found), key=_order)
        return []

    def _seeds(self, scope: Scope, group: Sequence[_Entry]) -> list[_Entry]:
        """Earlier facts most like the window: LightMem's cross-event seeds."""
        if not self._settings.seeds:
            return []
        stored = [e.point.dense for e in group if e.point.dense is not None]
        vectors = stored if len(stored) == len(group) else self._embedder.embed_documents([e.text for e in group])
        centroid = [sum(column) / len(vectors) for column in zip(*vectors, strict=True)]
        where = RecordFilter(
            scope.user_id, scope.agent_id, kinds=("fact",), statuses=("active",), until_ts=group[0].ts - 1e-6
        )
        found = self._store.nearest(centroid, where, self._settings.seeds)
        return sorted((_Entry(p) for p in found), key=lambda e: e.ts)

    # -- writing -------------------------------------------------------------------------

    def _summarize(
        self, scope: Scope, window: Window, key: str, topic: str | None, group: Sequence[_Entry]
    ) -> tuple[SummaryInfo, int]:
        """One summary record for the window; returns it and the LLM calls made (0 or 1)."""
        call: LLMCall | None = None
        if self._llm.configured:
            seeds = self._seeds(scope, group)
            words = max(20, self._settings.max_tokens * 3 // 4)
            try:
                result = self._llm.complete_json(
                    PURPOSE, SYSTEM_PROMPT.format(words=words), render(group, seeds, topic), SummaryAnswer
                )
            except LLMError as exc:
                self._ledger.record(scope, exc.call)
                raise
            self._ledger.record(scope, result.call)
            call = result.call
            text = " ".join(result.value.summary.split())
            method: Literal["llm", "extractive"] = "llm"
        else:
            text = self._extractive(group)
            method = "extractive"

        owner = Scope(scope.user_id, scope.agent_id, key if window == "session" and key != "-" else scope.session_id)
        summary_id = record_id(owner, "summary", "\x1f".join([window, key, topic or ""]))
        covered = [e.point.id for e in group]
        source_ids = list(dict.fromkeys(s for e in group for s in cast(list[str], e.point.payload["source_ids"])))
        stored_at = now()
        payload: dict[str, Any] = record_payload(
            owner,
            "summary",
            text,
            role=None,
            speaker=None,
            source_ids=source_ids,
            event_time=from_epoch(group[-1].ts),
            stored_at=stored_at,
        )
        previous = self._store.scroll(RecordFilter(scope.user_id, kinds=("summary",), ids=(summary_id,)), 1)
        history: list[dict[str, Any]] = []
        if previous:
            old = previous[0].payload
            history = [*cast(list[dict[str, Any]], old.get("history") or [])]
            history.append({"action": "resummarize", "time": stored_at.isoformat(), "old_text": old["text"]})
            payload["created_ts"] = old["created_ts"]
        payload.update(
            method=method,
            window=window,
            window_key=key,
            topic=topic,
            window_start_ts=group[0].ts,
            window_end_ts=group[-1].ts,
            covered_ids=covered,
            llm_call_id=call.call_id if call else None,
            history=history,
            stage="summarized",
        )
        self._store.upsert(self._indexer.points([(summary_id, payload)]))
        info = SummaryInfo(
            id=summary_id,
            text=text,
            method=method,
            window=window,
            window_key=key,
            topic=topic,
            start=from_epoch(group[0].ts),
            end=from_epoch(group[-1].ts),
            covered_ids=covered,
            source_ids=source_ids,
        )
        return info, 1 if call else 0

    def _extractive(self, group: Sequence[_Entry]) -> str:
        """The most central sentences within the token budget, in time order."""
        sentences = [(i, s) for i, e in enumerate(group) for s in _SENTENCE.split(e.text.strip()) if s.strip()]
        if len(sentences) == 1:
            return sentences[0][1]
        vectors = self._embedder.embed_documents([s for _, s in sentences])
        # Mean similarity to every sentence is the similarity to their sum: one pass, not n².
        total = [sum(column) for column in zip(*vectors, strict=True)]
        centrality = [sum(a * b for a, b in zip(v, total, strict=True)) / len(vectors) for v in vectors]
        budget = self._settings.max_tokens
        chosen: list[int] = []
        used = 0
        for index in sorted(range(len(sentences)), key=lambda i: -centrality[i]):
            tokens = self._counter.count(sentences[index][1])
            if used + tokens > budget:
                continue
            chosen.append(index)
            used += tokens
        if not chosen:  # one very long sentence: keep its start
            return sentences[max(range(len(sentences)), key=lambda i: centrality[i])][1][: budget * 4]
        return " ".join(sentences[i][1] for i in sorted(chosen))


def _order(entry: _Entry) -> tuple[float, float, int, str]:
    """Time order; messages stored in one call at the same time keep their order in the call."""
    p = entry.point.payload
    return (entry.ts, float(cast(float, p["created_ts"])), int(cast(int, p.get("position") or 0)), entry.point.id)


def _group(entries: Sequence[_Entry], window: Window) -> list[tuple[str, list[_Entry]]]:
    groups: dict[str, list[_Entry]] = {}
    for entry in entries:
        moment = from_epoch(entry.ts)
        if window == "session":
            key = str(entry.point.payload.get("session_id") or "-")
        elif window == "day":
            key = moment.date().isoformat()
        elif window == "week":
            year, week, _ = moment.isocalendar()
            key = f"{year}-W{week:02d}"
        else:
            key = "all"
        groups.setdefault(key, []).append(entry)
    return sorted(groups.items(), key=lambda item: item[1][0].ts)


def render(group: Sequence[_Entry], seeds: Sequence[_Entry], topic: str | None) -> str:
    """The user prompt: earlier context, then the window's memories."""
    lines = []
    if topic:
        lines += [f"Focus on: {topic}", ""]
    if seeds:
        lines.append("EARLIER memories (context only):")
        lines += [f"- ({from_epoch(e.ts):%Y-%m-%d}) {e.text}" for e in seeds]
        lines.append("")
    lines.append("Memories of the period:")
    lines += [f"[{n}] ({from_epoch(e.ts):%Y-%m-%d %H:%M}) {e.text}" for n, e in enumerate(group, start=1)]
    lines += ["", "Write the summary as JSON."]
    return "\n".join(lines)
