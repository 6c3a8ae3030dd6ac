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
from datetime import datetime, timedelta
from typing import Literal, cast

from pydantic import BaseModel, Field

from lightmem_mcp.api import Progress, Stop, SummarizeResult, SummaryInfo, Window
from lightmem_mcp.config import SummarySettings
from lightmem_mcp.embedder import Embedder
from lightmem_mcp.indexing import RecordWriter
from lightmem_mcp.llm import LLMClient, LLMError
from lightmem_mcp.records import (
    GLOBAL,
    PROGRESS_KIND,
    Fact,
    LLMCall,
    Record,
    RecordFilter,
    Scope,
    Summary,
    SummaryMark,
    view,
)
from lightmem_mcp.spend import BudgetReached
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import from_epoch, now, to_epoch
from lightmem_mcp.tokens import TokenCounter

log = logging.getLogger(__name__)

SUMMARY_PURPOSE = "summary"

_MAX_READ = 10_000
# A topic summary reads the memories at least this similar to the topic (cosine).
_TOPIC_FLOOR = 0.3
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

SUMMARY_PROMPT = """\
You write summaries of a person's long-term memory, to be recalled later. You get the memories \
of one period, numbered and with their times, and a few related EARLIER memories for context.

Summarize the period in the third person: the events, decisions, plans, preferences and changes, \
with the names, numbers, places and absolute dates given. Use the earlier memories only where \
they explain the period. Stay under {words} words and add nothing the memories do not say.

Answer with JSON only, in this shape: {{"summary": "..."}}"""


class SummaryAnswer(BaseModel):
    """The whole JSON answer."""

    summary: str = Field(min_length=1)


class Summarizer:
    """Writes summary records for the windows of a scope."""

    def __init__(
        self,
        settings: SummarySettings,
        store: VectorStore,
        writer: RecordWriter,
        embedder: Embedder,
        llm: LLMClient,
        counter: TokenCounter,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self._settings = settings
        # Expired memories are summarized no more: the time they are checked against.
        self._clock = clock
        self._store = store
        self._writer = writer
        self._embedder = embedder
        self._llm = llm
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
        stop: Stop | None = None,
    ) -> SummarizeResult:
        """Summarize the scope's memories in range, one summary per window. Once `stop` says so, the run
        ends before the next window: the summaries written stay, the other windows keep their old ones."""
        entries = self._entries(scope, since_ts, until_ts, topic)
        groups = _group(entries, window)
        summaries: list[SummaryInfo] = []
        calls = 0
        error = None
        left = 0
        for number, (key, group) in enumerate(groups, start=1):
            if stop is not None and stop():
                left = len(groups) - number + 1
                log.info("summarize cancelled after %d of %d windows: %d LLM calls", number - 1, len(groups), calls)
                break
            group = group[-self._settings.max_entries :]
            try:
                info, called = self._summarize(scope, window, key, topic, group)
            except BudgetReached as exc:  # refused before any request: no call made
                error = str(exc)
                break
            except LLMError as exc:
                calls += 1
                error = str(exc)
                break
            calls += called
            summaries.append(info)
            if progress is not None:
                progress(number, len(groups), f"summarized {number} of {len(groups)} windows")
        return SummarizeResult(
            summaries=summaries, llm_calls=calls, error=error, cancelled=bool(left), windows_left=left
        )

    def run_scheduled(self, user_id: str) -> SummarizeResult | None:
        """Re-summarize each day of the user with facts newer than the stored progress mark, in the tier
        of those facts: a project's day in that project (which reads the global tier too), the global
        tier's day in the global tier alone, so that no summary shows one project's facts to another."""
        mark_id = SummaryMark.id_of(user_id)
        found = self._store.scroll(RecordFilter(user_id, kinds=(PROGRESS_KIND,), ids=(mark_id,)), 1)
        mark = SummaryMark.read(found[0]).summarized_created_ts if found else 0.0
        live = RecordFilter(user_id, kinds=("fact",), statuses=("active",), live_at=to_epoch(self._clock()))
        facts = self._store.scroll(live, _MAX_READ)
        fresh = [fact for fact in map(Fact.read, facts) if fact.created_ts > mark]
        if not fresh:
            return None
        days = sorted({(fact.scope.project or GLOBAL, from_epoch(fact.event_ts).date()) for fact in fresh})
        result = SummarizeResult(summaries=[], llm_calls=0)
        for project, day in days:
            start = datetime(day.year, day.month, day.day, tzinfo=from_epoch(0).tzinfo)
            done = self.run(
                Scope(user_id, project=project),
                window="day",
                since_ts=to_epoch(start),
                until_ts=to_epoch(start + timedelta(days=1)) - 1e-6,
            )
            result.summaries += done.summaries
            result.llm_calls += done.llm_calls
            if done.error:
                result.error = done.error
                return result
        newest = max(fact.created_ts for fact in fresh)
        # The mark is vector-less bookkeeping, not a memory: stored as is, never indexed.
        self._store.upsert([SummaryMark(mark_id, newest).point(user_id, now())])
        return result

    # -- reading -------------------------------------------------------------------------

    def _entries(self, scope: Scope, since_ts: float | None, until_ts: float | None, topic: str | None) -> list[Record]:
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
                project=scope.project,
                live_at=to_epoch(self._clock()),
            )
            if topic:
                query = self._embedder.embed_query(topic)
                found = self._store.nearest(query, where, self._settings.max_entries)
                found = [p for p in found if p.score >= _TOPIC_FLOOR]
            else:
                found = self._store.scroll(where, _MAX_READ, with_vectors=True)
            if found:
                return sorted(map(view, found), key=lambda record: record.order)
        return []

    def _seeds(self, scope: Scope, group: Sequence[Record]) -> list[Fact]:
        """Earlier facts most like the window: LightMem's cross-event seeds."""
        if not self._settings.seeds:
            return []
        stored = [record.dense for record in group if record.dense is not None]
        vectors = stored if len(stored) == len(group) else self._embedder.embed_documents([r.text for r in group])
        centroid = [sum(column) / len(vectors) for column in zip(*vectors, strict=True)]
        where = RecordFilter(
            scope.user_id,
            scope.agent_id,
            kinds=("fact",),
            statuses=("active",),
            until_ts=group[0].event_ts - 1e-6,
            project=scope.project,
            live_at=to_epoch(self._clock()),
        )
        found = self._store.nearest(centroid, where, self._settings.seeds)
        return sorted(map(Fact.read, found), key=lambda fact: fact.event_ts)

    # -- writing -------------------------------------------------------------------------

    def plan(
        self,
        scope: Scope,
        *,
        window: Window = "all",
        since_ts: float | None = None,
        until_ts: float | None = None,
        topic: str | None = None,
    ) -> tuple[int, list[tuple[str, str]]]:
        """What a run would do, writing and calling nothing: its windows, and the (system, user)
        prompts it would send, one per window (none without an LLM: the summaries are extractive)."""
        groups = _group(self._entries(scope, since_ts, until_ts, topic), window)
        if not self._llm.configured:
            return len(groups), []
        return len(groups), [self._prompt(scope, topic, group[-self._settings.max_entries :]) for _, group in groups]

    def _prompt(self, scope: Scope, topic: str | None, group: Sequence[Record]) -> tuple[str, str]:
        words = max(20, self._settings.max_tokens * 3 // 4)
        return SUMMARY_PROMPT.format(words=words), render_window(group, self._seeds(scope, group), topic)

    def _summarize(
        self, scope: Scope, window: Window, key: str, topic: str | None, group: Sequence[Record]
    ) -> tuple[SummaryInfo, int]:
        """One summary record for the window; returns it and the LLM calls made (0 or 1)."""
        call: LLMCall | None = None
        if self._llm.configured:
            system, user = self._prompt(scope, topic, group)
            result = self._llm.complete_json(SUMMARY_PURPOSE, system, user, SummaryAnswer, scope=scope)
            call = result.call
            text = " ".join(result.value.summary.split())
            method: Literal["llm", "extractive"] = "llm"
        else:
            text = self._extractive(group)
            method = "extractive"

        session = key if window == "session" and key != "-" else scope.session_id
        owner = Scope(scope.user_id, scope.agent_id, session, scope.project)
        stored_at = now()
        summary_id = Summary.id_of(owner, window, key, topic)
        found = self._store.scroll(RecordFilter(scope.user_id, kinds=("summary",), ids=(summary_id,)), 1)
        summary = Summary.new(
            owner,
            text,
            window=window,
            window_key=key,
            topic=topic,
            method=method,
            covered=group,
            llm_call_id=call.call_id if call else None,
            stored_at=stored_at,
            previous=Summary.read(found[0]) if found else None,
        )
        self._writer.write([summary])
        return summary_info(summary), 1 if call else 0

    def _extractive(self, group: Sequence[Record]) -> str:
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


def summary_info(summary: Summary) -> SummaryInfo:
    """A stored summary as the tools and resources show it."""
    return SummaryInfo(
        id=summary.id,
        text=summary.text,
        method="llm" if summary.method == "llm" else "extractive",
        window=cast(Window, summary.window),
        window_key=summary.window_key,
        topic=summary.topic,
        start=from_epoch(summary.window_start_ts),
        end=from_epoch(summary.window_end_ts),
        covered_ids=summary.covered_ids,
        source_ids=summary.source_ids,
    )


def _group(entries: Sequence[Record], window: Window) -> list[tuple[str, list[Record]]]:
    groups: dict[str, list[Record]] = {}
    for entry in entries:
        moment = from_epoch(entry.event_ts)
        if window == "session":
            key = entry.scope.session_id or "-"
        elif window == "day":
            key = moment.date().isoformat()
        elif window == "week":
            year, week, _ = moment.isocalendar()
            key = f"{year}-W{week:02d}"
        else:
            key = "all"
        groups.setdefault(key, []).append(entry)
    return sorted(groups.items(), key=lambda item: item[1][0].event_ts)


def render_window(group: Sequence[Record], seeds: Sequence[Record], topic: str | None) -> str:
    """The user prompt: earlier context, then the window's memories."""
    lines = []
    if topic:
        lines += [f"Focus on: {topic}", ""]
    if seeds:
        lines.append("EARLIER memories (context only):")
        lines += [f"- ({from_epoch(e.event_ts):%Y-%m-%d}) {e.text}" for e in seeds]
        lines.append("")
    lines.append("Memories of the period:")
    lines += [f"[{n}] ({from_epoch(e.event_ts):%Y-%m-%d %H:%M}) {e.text}" for n, e in enumerate(group, start=1)]
    lines += ["", "Write the summary as JSON."]
    return "\n".join(lines)
