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
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace

from lightmem_mcp.api import FlushResult
from lightmem_mcp.config import PipelineSettings
from lightmem_mcp.embedder import Embedder
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.events import MemoryObserver
from lightmem_mcp.extractor import BufferedTurn, DraftFact, FactExtractor
from lightmem_mcp.indexing import RecordWriter
from lightmem_mcp.lease import Leases, scope_key
from lightmem_mcp.records import Fact, RecordFilter, Scope, Turn
from lightmem_mcp.segmenter import TopicSegmenter
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import now, to_epoch

log = logging.getLogger(__name__)

# A single topic longer than this many buffer thresholds is cut, so no call outgrows the context.
_MAX_SEGMENT_FACTOR = 4
_MAX_PENDING_READ = 10_000
_RETRY_AFTER_FAILURE_S = 60.0


class ShortTermBuffer:
    """Decides when a scope's pending turns are extracted, and extracts them."""

    def __init__(
        self,
        settings: PipelineSettings,
        store: VectorStore,
        writer: RecordWriter,
        embedder: Embedder,
        segmenter: TopicSegmenter,
        extractor: FactExtractor | None,
        observer: MemoryObserver,
        leases: Leases,
        lease_ttl_s: float,
    ) -> None:
        self._settings = settings
        self._store = store
        self._writer = writer
        self._embedder = embedder
        self._segmenter = segmenter
        self._extractor = extractor
        # Told how many facts each flush wrote (the sleep-time schedule counts them).
        self._observer = observer
        # One replica at a time extracts a scope (Redis leases when replicas share a store).
        self._leases = leases
        self._lease_ttl_s = lease_ttl_s
        self._guard = threading.Lock()
        self._scope_locks: dict[Scope, threading.Lock] = {}
        self._scheduled: set[Scope] = set()
        self._cooldown: dict[Scope, float] = {}
        self._jobs: set[Future[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lightmem-extract")

    @property
    def active(self) -> bool:
        """Whether extraction is on (an LLM is configured)."""
        return self._extractor is not None

    def feeds_extraction(self, role: str) -> bool:
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
        scope = scope.stored
        if not self.active or not self._may_schedule(scope):
            return
        if _tokens(self._pending(scope)) >= self._settings.buffer_tokens:
            self._schedule(scope)

    def resume(self) -> None:
        """At start: schedule the scopes whose stored pending turns already fill the buffer."""
        if not self.active:
            return
        for scope in self._store.pending_scopes(_MAX_PENDING_READ):
            self.notify(scope)

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
        """Extract the pending turns of exactly this scope (its project included): all of them when
        forced, else whole batches only."""
        scope = scope.stored
        extracted = facts = calls = 0
        error = None
        lease = (
            self._leases.hold(f"extract:{scope_key(scope)}", self._lease_ttl_s) if self.active else nullcontext(True)
        )
        with self._scope_lock(scope), lease as held:
            if self._extractor is not None and held:
                pending = self._pending(scope)
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
        if facts:
            self._observer.facts_stored(scope, facts)
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

    def _batches(self, pending: list[Turn], force: bool) -> list[list[list[BufferedTurn]]]:
        """Topic segments grouped into batches of about `buffer_tokens` each."""
        if not pending:
            return []
        texts = [turn.text for turn in pending]
        # Embedded as extraction reads them (no speaker name, compressed when compression applied): the
        # stored vectors embed the speaker's name and the words as sent (indexing.py), which would move
        # the similarity of neighbours that segmentation looks for. So the pending turns are read
        # without their vectors.
        vectors = self._embedder.embed_documents(texts)
        threshold = self._settings.buffer_tokens
        tokens_of = {turn.id: turn.tokens_compressed for turn in pending}
        batches: list[list[list[BufferedTurn]]] = []
        current: list[list[BufferedTurn]] = []
        tokens = 0
        for indices in self._segments(texts, vectors):
            topic_id = f"topic-{pending[indices[0]].id}"
            segment = [BufferedTurn.of(pending[i], topic_id) for i in indices]
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
        exact = RecordFilter(scope.user_id, scope.agent_id, scope.session_id, exact_scope=True, project=scope.project)
        for segment in batch:
            ids = tuple(turn.record_id for turn in segment)
            self._store.set_payload(replace(exact, ids=ids), Turn.topic(segment[0].topic_id))
        drafts, call = extractor.extract(scope, batch)
        facts = _facts(scope, drafts, turn_ids, call.call_id)
        # Facts of an earlier attempt on these turns, in any tier (facts about the user went global).
        self._store.delete(RecordFilter(scope.user_id, kinds=("fact",), batch_turn_ids=turn_ids))
        self._writer.write(facts)
        self._store.set_payload(replace(exact, ids=turn_ids), Turn.extracted(to_epoch(now())))
        log.info("extracted %d facts from %d turns in one call", len(facts), len(turns))
        return len(facts), 1

    # -- reading the buffer --------------------------------------------------------------

    def _pending(self, scope: Scope) -> list[Turn]:
        where = RecordFilter(
            scope.user_id,
            scope.agent_id,
            scope.session_id,
            kinds=("turn",),
            stages=("pending",),
            exact_scope=True,
            project=scope.project,
        )
        found = self._store.scroll(where, _MAX_PENDING_READ)
        return sorted((Turn.read(p) for p in found), key=lambda turn: turn.order)

    def _scope_lock(self, scope: Scope) -> threading.Lock:
        with self._guard:
            return self._scope_locks.setdefault(scope, threading.Lock())


def _tokens(turns: Sequence[Turn]) -> int:
    return sum(turn.tokens_compressed for turn in turns)


def _facts(scope: Scope, drafts: Sequence[DraftFact], turn_ids: tuple[str, ...], call_id: str) -> list[Fact]:
    """The batch's facts, one per distinct id (the same words from the same turns are one fact). In a
    project, a lasting fact about the person goes to the global tier: every project reads it."""
    stored_at = now()
    facts: dict[str, Fact] = {}
    for draft in drafts:
        roles = {turn.role for turn in draft.sources}
        speakers = {turn.speaker for turn in draft.sources}
        fact = Fact.new(
            replace(scope, project=None) if draft.about == "user" else scope,
            draft.text,
            source_ids=[turn.message_id for turn in draft.sources],
            role=roles.pop() if len(roles) == 1 else None,
            speaker=speakers.pop() if len(speakers) == 1 else None,
            event_time=min(turn.event_time for turn in draft.sources),
            stored_at=stored_at,
            topic_id=draft.sources[0].topic_id,
            batch_turn_ids=turn_ids,
            llm_call_id=call_id,
        )
        facts[fact.id] = fact
    return list(facts.values())


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
