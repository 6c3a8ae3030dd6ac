"""The short-term buffer: pending turns of each scope, segmented and sent to extraction in batches.

The buffer holds no state of its own: a turn waiting for extraction is a stored turn with
`stage = "pending"`, so a restart resumes where it stopped and a crash loses nothing. A batch is
written in an order that makes any crash safe: facts of an earlier, unfinished attempt on the same
turns are deleted, the new facts are written, and only then are the turns marked extracted, in
one operation. Facts have deterministic ids, so a retried batch never duplicates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from typing import cast

from pydantic import BaseModel, Field

from lightmem_mcp.config import PipelineSettings
from lightmem_mcp.embedder import Embedder
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.extractor import BufferedTurn, DraftFact, FactExtractor
from lightmem_mcp.indexing import Indexer
from lightmem_mcp.lease import Leases, LocalLeases, scope_key
from lightmem_mcp.ledger import UsageLedger
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.llm import LLMError
from lightmem_mcp.records import FoundPoint, RecordFilter, Scope, StoredPoint, record_id, record_payload
from lightmem_mcp.segmenter import TopicSegmenter
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import from_epoch, now, to_epoch

log = logging.getLogger(__name__)

# A single topic longer than this many buffer thresholds is cut, so no call outgrows the context.
_MAX_SEGMENT_FACTOR = 4
_MAX_PENDING_READ = 10_000
_RETRY_AFTER_FAILURE_S = 60.0


class FlushResult(BaseModel):
    """What one flush did."""

    extracted_turns: int = Field(description="Turns turned into facts by this flush.")
    facts: int = Field(description="Facts written.")
    llm_calls: int = Field(description="Extraction calls made (one per batch of topic segments).")
    pending_turns: int = Field(description="Turns still waiting for extraction.")
    pending_tokens: int = Field(description="Their tokens.")
    error: str | None = Field(default=None, description="Why extraction stopped early; the turns stay pending.")


class ShortTermBuffer:
    """Decides when a scope's pending turns are extracted, and extracts them."""

    def __init__(
        self,
        settings: PipelineSettings,
        store: VectorStore,
        embedder: Embedder,
        lexical: LexicalEncoder,
        segmenter: TopicSegmenter,
        extractor: FactExtractor | None,
        ledger: UsageLedger,
    ) -> None:
        self._settings = settings
        self._store = store
        self._embedder = embedder
        self._indexer = Indexer(embedder, lexical)
        self._segmenter = segmenter
        self._extractor = extractor
        self._ledger = ledger
        self._guard = threading.Lock()
        self._scope_locks: dict[Scope, threading.Lock] = {}
        self._scheduled: set[Scope] = set()
        self._cooldown: dict[Scope, float] = {}
        self._jobs: set[Future[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lightmem-extract")
        # Told how many facts each flush wrote (the sleep-time schedule counts them).
        self.on_facts: Callable[[Scope, int], None] | None = None
        # One replica at a time extracts a scope; replaced by Redis leases when replicas share a store.
        self.leases: Leases = LocalLeases()
        self.lease_ttl_s = 60.0

    @property
    def active(self) -> bool:
        """Whether extraction is on (an LLM is configured)."""
        return self._extractor is not None

    def uses(self, role: str) -> bool:
        """Whether messages of this role go to extraction (`messages_use`)."""
        use = self._settings.messages_use
        return (
            use == "hybrid"
            or (use == "user_only" and role == "user")
            or (use == "assistant_only" and role == "assistant")
        )

    # -- scheduling ----------------------------------------------------------------------

    def notify(self, scope: Scope) -> None:
        """After an add: extract in the background once the scope's pending tokens reach the threshold."""
        if not self.active or not self._may_schedule(scope):
            return
        if _tokens(self._pending(scope)) >= self._settings.buffer_tokens:
            self._schedule(scope)

    def resume(self) -> None:
        """At start: schedule the scopes whose stored pending turns already fill the buffer."""
        if not self.active:
            return
        for user_id, agent_id, session_id in self._store.pending_scopes(_MAX_PENDING_READ):
            self.notify(Scope(user_id, agent_id, session_id))

    def _blocked(self, scope: Scope) -> bool:
        """Already scheduled, or cooling down after a failure. The caller holds the guard."""
        return scope in self._scheduled or time.monotonic() < self._cooldown.get(scope, 0.0)

    def _may_schedule(self, scope: Scope) -> bool:
        with self._guard:
            return not self._blocked(scope)

    def _schedule(self, scope: Scope) -> None:
        with self._guard:
            if self._blocked(scope):
                return
            self._scheduled.add(scope)
            job = self._executor.submit(self._background, scope)
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    def _background(self, scope: Scope) -> None:
        failed = True
        try:
            result = self.flush(scope, force=False)
            failed = result.error is not None
            if failed:
                log.warning("extraction for a scope stopped, turns stay pending: %s", result.error)
        except Exception:
            log.exception("background extraction failed; the turns stay pending")
        finally:
            with self._guard:
                self._scheduled.discard(scope)
                if failed:
                    # No retry storm against a failing LLM: adds wait a while, flush_memory does not.
                    self._cooldown[scope] = time.monotonic() + _RETRY_AFTER_FAILURE_S
                else:
                    self._cooldown.pop(scope, None)
        if not failed:
            # Turns added while this job ran may have filled the buffer again.
            self.notify(scope)

    def drain(self, timeout: float | None = None) -> None:
        """Wait for scheduled background extraction (tests, shutdown)."""
        while True:
            with self._guard:
                jobs = list(self._jobs)
            if not jobs:
                return
            for job in jobs:
                job.result(timeout=timeout)

    def close(self) -> None:
        """Stop taking work; running batches finish, unstarted ones stay pending in the store."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- extraction ----------------------------------------------------------------------

    def flush(self, scope: Scope, force: bool = True) -> FlushResult:
        """Extract the scope's pending turns: all of them when forced, else whole batches only."""
        extracted = facts = calls = 0
        error = None
        lease = self.leases.hold(f"extract:{scope_key(scope)}", self.lease_ttl_s) if self.active else nullcontext(True)
        with self._scope_lock(scope), lease as held:
            if self._extractor is not None and held:
                pending = self._pending(scope, with_vectors=True)
                for batch in self._batches(pending, force):
                    try:
                        written, tried = self._extract(scope, self._extractor, batch)
                    except BackendUnavailable as exc:
                        error = str(exc)
                        calls += 1
                        break
                    calls += tried
                    facts += written
                    extracted += sum(len(segment) for segment in batch)
            left = self._pending(scope)
        if facts and self.on_facts is not None:
            self.on_facts(scope, facts)
        return FlushResult(
            extracted_turns=extracted,
            facts=facts,
            llm_calls=calls,
            pending_turns=len(left),
            pending_tokens=_tokens(left),
            error=error
            or (None if held else "another replica is extracting this scope now; its turns stay pending until then")
            or (None if self.active else "no LLM configured (LIGHTMEM_LLM_PROVIDER): turns are kept as memories"),
        )

    def _batches(self, pending: list[FoundPoint], force: bool) -> list[list[list[BufferedTurn]]]:
        """Topic segments grouped into batches of about `buffer_tokens` each."""
        if not pending:
            return []
        texts = [str(p.payload["text"]) for p in pending]
        # The turns' own words: stored vectors carry the turns before each one too (indexing.py), which
        # would blur the similarity of neighbours that segmentation looks for.
        vectors = self._embedder.embed_documents(texts)
        threshold = self._settings.buffer_tokens
        tokens_of = {p.id: _turn_tokens(p) for p in pending}
        batches: list[list[list[BufferedTurn]]] = []
        current: list[list[BufferedTurn]] = []
        tokens = 0
        for indices in self._segments(texts, vectors):
            segment = [_buffered(pending[i], pending[indices[0]].id) for i in indices]
            for piece in _cut(segment, tokens_of, threshold * _MAX_SEGMENT_FACTOR):
                current.append(piece)
                tokens += sum(tokens_of[turn.record_id] for turn in piece)
                if tokens >= threshold:
                    batches.append(current)
                    current, tokens = [], 0
        if current and force:
            batches.append(current)
        return batches

    def _segments(self, texts: list[str], vectors: list[list[float]]) -> list[list[int]]:
        # Attention windows stay within one encoder pass; boundaries are found per window.
        window = 32
        segments: list[list[int]] = []
        for start in range(0, len(texts), window):
            part = self._segmenter.segment(texts[start : start + window], vectors[start : start + window])
            segments.extend([[start + i for i in segment] for segment in part])
        return segments

    def _extract(
        self, scope: Scope, extractor: FactExtractor, batch: Sequence[Sequence[BufferedTurn]]
    ) -> tuple[int, int]:
        """One LLM call for the batch, then the crash-safe write. Returns (facts written, calls made)."""
        turns = [turn for segment in batch for turn in segment]
        turn_ids = tuple(turn.record_id for turn in turns)
        exact = RecordFilter(scope.user_id, scope.agent_id, scope.session_id, exact_scope=True)
        for segment in batch:
            ids = tuple(turn.record_id for turn in segment)
            self._store.set_payload(replace(exact, ids=ids), {"topic_id": segment[0].topic_id})
        try:
            drafts, call = extractor.extract(batch)
        except LLMError as exc:
            self._ledger.record(scope, exc.call, turns=len(turns))
            raise
        self._ledger.record(scope, call, turns=len(turns))
        points = self._fact_points(scope, drafts, turn_ids, call.call_id)
        self._store.delete(replace(exact, kinds=("fact",), batch_turn_ids=turn_ids))
        self._store.upsert(points)
        self._store.set_payload(replace(exact, ids=turn_ids), {"stage": "extracted", "extracted_ts": to_epoch(now())})
        log.info("extracted %d facts from %d turns in one call", len(points), len(turns))
        return len(points), 1

    def _fact_points(
        self, scope: Scope, drafts: Sequence[DraftFact], turn_ids: tuple[str, ...], call_id: str
    ) -> list[StoredPoint]:
        stored_at = now()
        records: dict[str, dict[str, object]] = {}
        for draft in drafts:
            source_ids = [turn.message_id for turn in draft.sources]
            roles = {turn.role for turn in draft.sources}
            speakers = {turn.speaker for turn in draft.sources}
            key = "\x1f".join([*sorted(source_ids), " ".join(draft.text.lower().split())])
            payload = record_payload(
                scope,
                "fact",
                draft.text,
                role=roles.pop() if len(roles) == 1 else None,
                speaker=speakers.pop() if len(speakers) == 1 else None,
                source_ids=source_ids,
                event_time=min(turn.event_time for turn in draft.sources),
                stored_at=stored_at,
            )
            payload.update(
                topic_id=draft.sources[0].topic_id,
                batch_turn_ids=list(turn_ids),
                llm_call_id=call_id,
                stage="extracted",
            )
            records[record_id(scope, "fact", key)] = payload
        return self._indexer.points(list(records.items()))

    # -- reading the buffer --------------------------------------------------------------

    def _pending(self, scope: Scope, with_vectors: bool = False) -> list[FoundPoint]:
        where = RecordFilter(
            scope.user_id,
            scope.agent_id,
            scope.session_id,
            kinds=("turn",),
            stages=("pending",),
            exact_scope=True,
        )
        found = self._store.scroll(where, _MAX_PENDING_READ, with_vectors=with_vectors)
        return sorted(found, key=_order)

    def _scope_lock(self, scope: Scope) -> threading.Lock:
        with self._guard:
            return self._scope_locks.setdefault(scope, threading.Lock())


def _order(point: FoundPoint) -> tuple[float, float, int]:
    p = point.payload
    return (
        float(cast(float, p["event_ts"])),
        float(cast(float, p["created_ts"])),
        int(cast(int, p.get("position", 0))),
    )


def _turn_tokens(point: FoundPoint) -> int:
    return int(cast(int, point.payload.get("tokens_compressed") or 0))


def _tokens(points: Sequence[FoundPoint]) -> int:
    return sum(_turn_tokens(p) for p in points)


def _buffered(point: FoundPoint, first_of_segment: str) -> BufferedTurn:
    p = point.payload
    return BufferedTurn(
        record_id=point.id,
        message_id=str(cast(list[str], p["source_ids"])[0]),
        role=str(p["role"]),
        speaker=cast(str | None, p.get("speaker")),
        text=str(p["text"]),
        event_time=from_epoch(float(cast(float, p["event_ts"]))),
        topic_id=f"topic-{first_of_segment}",
    )


def _cut(turns: list[BufferedTurn], tokens_of: dict[str, int], limit: int) -> list[list[BufferedTurn]]:
    pieces: list[list[BufferedTurn]] = [[]]
    size = 0
    for turn in turns:
        count = tokens_of[turn.record_id]
        if pieces[-1] and size + count > limit:
            pieces.append([])
            size = 0
        pieces[-1].append(turn)
        size += count
    return pieces
