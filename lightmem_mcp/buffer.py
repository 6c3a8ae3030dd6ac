"""The short-term buffer: pending turns of each scope, segmented and sent to extraction in batches.

The buffer holds no state of its own: a turn waiting for extraction is a stored turn with
`stage = "pending"`, so a restart resumes where it stopped and a crash loses nothing. Turns are
stored as sent; the buffer compresses them (LLMLingua-2, batched) when it flushes, right before
segmentation, and keeps the compressed words on the turn (`compressed_text`), so a crash after
compression neither loses the turn nor compresses it again. A batch is
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
from dataclasses import dataclass, replace
from datetime import datetime

from lightmem_mcp.api import FlushResult, Progress, Stop
from lightmem_mcp.compressor import Compressor
from lightmem_mcp.config import PipelineSettings
from lightmem_mcp.embedder import Embedder
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.events import MemoryObserver
from lightmem_mcp.extractor import BufferedTurn, DraftFact, FactExtractor, extraction_prompt, render_batch
from lightmem_mcp.indexing import RecordWriter
from lightmem_mcp.lease import Leases, scope_key
from lightmem_mcp.records import Fact, RecordFilter, Scope, Turn
from lightmem_mcp.segmenter import TopicSegmenter
from lightmem_mcp.spend import BudgetReached, SpendGuard
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import now, to_epoch

log = logging.getLogger(__name__)

# A single topic longer than this many buffer thresholds is cut, so no call outgrows the context.
_MAX_SEGMENT_FACTOR = 4
_MAX_PENDING_READ = 10_000
_RETRY_AFTER_FAILURE_S = 60.0
# Deferred turns compressed per model call, and whose results are written before the next.
_COMPRESS_CHUNK = 64
# Backlog turns marked pending per store write.
_REQUEUE_CHUNK = 512


@dataclass
class _Steps:
    """A flush's batch boundaries: the caller's stop, asked before each compression chunk and each
    extraction call, and its progress, counted in turns compressed plus turns extracted (so that it
    only grows)."""

    progress: Progress | None = None
    stop: Stop | None = None
    turns: int = 0
    deferred: int = 0
    compressed: int = 0
    extracted: int = 0
    facts: int = 0
    cancelled: bool = False

    def go_on(self) -> bool:
        """At a boundary: whether to start the next batch (no, once the caller has cancelled)."""
        if not self.cancelled and self.stop is not None and self.stop():
            self.cancelled = True
        return not self.cancelled

    def compressed_chunk(self, count: int) -> None:
        self.compressed += count
        self._report(f"compressed {self.compressed} of {self.deferred} turns")

    def extracted_batch(self, turns: int, facts: int) -> None:
        self.extracted += turns
        self.facts += facts
        self._report(f"extracted {self.extracted} of {self.turns} turns: {self.facts} facts")

    def _report(self, message: str) -> None:
        if self.progress is not None:
            self.progress(self.compressed + self.extracted, self.deferred + self.turns, message)


@dataclass(frozen=True)
class FlushPlan:
    """What a flush would do: the turns it would take, and the prompts of its extraction calls."""

    turns: int
    backlog: int
    prompts: list[tuple[str, str]]
    pending_turns: int  # waiting now, as the flush would find them
    pending_tokens: int


class ShortTermBuffer:
    """Decides when a scope's pending turns are extracted, and extracts them."""

    def __init__(
        self,
        settings: PipelineSettings,
        store: VectorStore,
        writer: RecordWriter,
        embedder: Embedder,
        compressor: Compressor,
        segmenter: TopicSegmenter,
        extractor: FactExtractor | None,
        observer: MemoryObserver,
        leases: Leases,
        lease_ttl_s: float,
        spend: SpendGuard,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self._settings = settings
        self._store = store
        # Expired turns are no extraction input: the time they are checked against.
        self._clock = clock
        self._writer = writer
        self._embedder = embedder
        self._compressor = compressor
        self._segmenter = segmenter
        self._extractor = extractor
        # Told the turns each flush compressed and how many facts it wrote (metrics, the sleep-time schedule).
        self._observer = observer
        # One replica at a time extracts a scope (Redis leases when replicas share a store).
        self._leases = leases
        self._lease_ttl_s = lease_ttl_s
        # Daily token budgets: a spent one makes extraction wait, and a timer resumes it at midnight.
        self._spend = spend
        self._renewal: threading.Timer | None = None
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
        if not self.active or not self._may_schedule(scope) or self._waits(scope) is not None:
            return
        if self._expected_tokens(self._pending(scope)) >= self._settings.buffer_tokens:
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
        with self._guard:
            if self._renewal is not None:
                self._renewal.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _waits(self, scope: Scope) -> BudgetReached | None:
        """The spent budget the scope's extraction waits for, if any (and the renewal is armed)."""
        reached = self._spend.blocked(scope.user_id)
        if reached is not None:
            self._resume_at(reached)
        return reached

    def _resume_at(self, reached: BudgetReached) -> None:
        """Look at every scope's pending turns again when the spent budget renews."""
        with self._guard:
            if self._renewal is not None and self._renewal.is_alive():
                return
            delay = max(1.0, self._spend.seconds_until(reached.until))
            self._renewal = threading.Timer(delay, self.resume)
            self._renewal.name = "lightmem-budget-renewal"
            self._renewal.daemon = True
            self._renewal.start()

    # -- extraction ----------------------------------------------------------------------

    def flush(
        self,
        scope: Scope,
        force: bool = True,
        backlog: bool = False,
        progress: Progress | None = None,
        stop: Stop | None = None,
    ) -> FlushResult:
        """Extract the pending turns of exactly this scope (its project included): all of them when
        forced, else whole batches only. With `backlog`, the scope's skipped turns (stored while no
        LLM was configured) are taken too, oldest first, batched as they would have been had they
        arrived with an LLM configured (see `_rounds`). Once `stop` says so, it stops at the next
        batch boundary (before a compression chunk or an extraction call); `progress` hears of each."""
        scope = scope.stored
        extracted = facts = calls = taken = 0
        error = None
        steps = _Steps(progress, stop)
        lease = (
            self._leases.hold(f"extract:{scope_key(scope)}", self._lease_ttl_s) if self.active else nullcontext(True)
        )
        with self._scope_lock(scope), lease as held:
            extractor = self._extractor
            if extractor is not None and held:
                reached = self._waits(scope)
                if reached is not None:
                    error = str(reached)
                else:
                    taken = self._requeue(scope, self._backlog(scope, 0)) if backlog else 0
                    pending = self._pending(scope)
                    steps.turns = len(pending)
                    steps.deferred = sum(turn.compression == "deferred" for turn in pending)

                    def extract(batch: Sequence[Sequence[BufferedTurn]]) -> bool:
                        nonlocal error, calls, facts, extracted
                        try:
                            written, tried = self._extract(scope, extractor, batch)
                        except BudgetReached as exc:  # refused before any request: no call made
                            error = str(exc)
                            self._resume_at(exc)
                            return False
                        except BackendUnavailable as exc:
                            error = str(exc)
                            calls += 1
                            return False
                        calls += tried
                        facts += written
                        turns = sum(len(segment) for segment in batch)
                        extracted += turns
                        steps.extracted_batch(turns, written)
                        return True

                    self._rounds(scope, pending, bool(taken), force, extract, persist=True, steps=steps)
            left = self._pending(scope)
        if facts:
            self._observer.facts_stored(scope, facts)
        if steps.cancelled:
            log.info(
                "flush cancelled after %d of %d turns: %d facts in %d calls, %d turns stay pending",
                extracted,
                steps.turns,
                facts,
                calls,
                len(left),
            )
        return FlushResult(
            extracted_turns=extracted,
            backlog_turns=taken,
            facts=facts,
            llm_calls=calls,
            pending_turns=len(left),
            pending_tokens=_tokens(left),
            error=error
            or (None if held else "another replica is extracting this scope now; its turns stay pending until then")
            or (None if self.active else "no LLM configured (LIGHTMEM_LLM_PROVIDER): turns are kept as memories"),
            cancelled=steps.cancelled,
        )

    def plan(self, scope: Scope, backlog: bool = False) -> FlushPlan:
        """What a forced flush (with `backlog`: of the backlog too) would send, changing nothing: the
        turns are compressed and segmented in memory and the prompts rendered, but no call is made."""
        scope = scope.stored
        pending = self._pending(scope)
        arriving = self._backlog(scope, len(pending)) if backlog else []
        prompts: list[tuple[str, str]] = []

        def render(batch: Sequence[Sequence[BufferedTurn]]) -> bool:
            prompts.append((extraction_prompt(scope), render_batch(batch)))
            return True

        self._rounds(scope, [*pending, *arriving], bool(arriving), True, render, persist=False, steps=_Steps())
        return FlushPlan(
            turns=len(pending) + len(arriving),
            backlog=len(arriving),
            prompts=prompts,
            pending_turns=len(pending),
            pending_tokens=_tokens(pending),
        )

    def _rounds(
        self,
        scope: Scope,
        turns: Sequence[Turn],
        fed: bool,
        force: bool,
        extract: Callable[[Sequence[Sequence[BufferedTurn]]], bool],
        persist: bool,
        steps: _Steps,
    ) -> None:
        """Hand `extract` the batches of `turns`. With `fed` (a backlog), the turns are fed in one at a
        time in conversation order, as adds would have: whole batches each time the buffer fills, so a
        backlog makes the calls its turns would have made on arrival rather than a few oversized ones.
        Then, when forced, the rest. Stops at the first batch `extract` refuses, or once `steps` say
        the caller cancelled (asked between compression chunks and before each batch)."""
        ordered = sorted(turns, key=lambda turn: turn.order)
        waiting: list[Turn] = [] if fed else ordered
        threshold = self._settings.buffer_tokens

        def run(whole: bool) -> bool:
            nonlocal waiting
            waiting = self.compress(scope, waiting, persist, steps)
            if steps.cancelled:
                return False
            for batch in self._batches(waiting, whole):
                if not steps.go_on() or not extract(batch):
                    return False
                done = {turn.record_id for segment in batch for turn in segment}
                waiting = [turn for turn in waiting if turn.id not in done]
            return True

        for turn in ordered if fed else ():
            waiting.append(turn)
            if self._expected_tokens(waiting) >= threshold and not run(False):
                return
        run(force)

    def _backlog(self, scope: Scope, pending: int) -> list[Turn]:
        """The scope's skipped turns whose role feeds extraction, oldest first, as they will be once
        taken (as many as one flush reads, with `pending` turns already waiting)."""
        skipped = sorted(map(Turn.read, self._store.scan(self._backlog_filter(scope))), key=lambda turn: turn.order)
        # A role that fed no extraction when it was stored was never meant to be compressed.
        plan = "disabled" if self._compressor.status == "disabled" else "deferred"
        taken = []
        for turn in skipped[: max(_MAX_PENDING_READ - pending, 0)]:
            fields = Turn.requeued(plan if turn.compression == "not_extracted" else turn.compression)
            taken.append(replace(turn, payload={**turn.payload, **fields}))
        return taken

    def backlog_size(self, scope: Scope) -> int:
        """How many skipped turns of exactly this scope a backlog flush would take (roles that feed extraction)."""
        return self._store.count(self._backlog_filter(scope.stored))

    def _backlog_filter(self, scope: Scope) -> RecordFilter:
        use = self._settings.messages_use
        roles = {"user_only": ("user",), "assistant_only": ("assistant",)}.get(use, ())
        return RecordFilter(
            scope.user_id,
            scope.agent_id,
            scope.session_id,
            kinds=("turn",),
            roles=roles,
            stages=("skipped",),
            exact_scope=True,
            project=scope.project,
            live_at=to_epoch(self._clock()),
        )

    def _requeue(self, scope: Scope, turns: Sequence[Turn]) -> int:
        """Mark backlog turns (as `_backlog` returns them) pending in the store, so a crash after this
        loses nothing: the normal pipeline extracts them. Returns how many."""
        exact = RecordFilter(scope.user_id, scope.agent_id, scope.session_id, exact_scope=True, project=scope.project)
        groups: dict[str, list[str]] = {}
        for turn in turns:
            groups.setdefault(turn.compression, []).append(turn.id)
        for compression, ids in groups.items():
            fields = Turn.requeued(compression)
            for start in range(0, len(ids), _REQUEUE_CHUNK):
                self._store.set_payload(replace(exact, ids=tuple(ids[start : start + _REQUEUE_CHUNK])), fields)
        return len(turns)

    def _batches(self, pending: list[Turn], force: bool) -> list[list[list[BufferedTurn]]]:
        """Topic segments grouped into batches of about `buffer_tokens` each."""
        if not pending:
            return []
        texts = [turn.for_extraction for turn in pending]
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

    # -- compression ---------------------------------------------------------------------

    def compress(
        self, scope: Scope, turns: Sequence[Turn], persist: bool = True, steps: _Steps | None = None
    ) -> list[Turn]:
        """The turns with the deferred ones compressed (in batched model passes); with `persist`, each
        chunk's results are written to its turns before the next chunk runs. With `steps`, each chunk
        is a batch boundary: once the caller cancels, the turns not reached stay deferred."""
        deferred = [i for i, turn in enumerate(turns) if turn.compression == "deferred"]
        done = list(turns)
        exact = RecordFilter(scope.user_id, scope.agent_id, scope.session_id, exact_scope=True, project=scope.project)
        for start in range(0, len(deferred), _COMPRESS_CHUNK):
            if steps is not None and not steps.go_on():
                break
            chunk = deferred[start : start + _COMPRESS_CHUNK]
            results = self._compressor.compress_many([turns[i].text for i in chunk])
            for i, result in zip(chunk, results, strict=True):
                fields = Turn.compressed(
                    result.text if result.applied else None,
                    result.compressed_tokens,
                    result.skipped_reason or "applied",
                )
                if persist:
                    self._store.set_payload(replace(exact, ids=(turns[i].id,)), fields)
                done[i] = replace(turns[i], payload={**turns[i].payload, **fields})
            if persist:
                self._observer.turns_compressed([done[i] for i in chunk])
            if steps is not None:
                steps.compressed_chunk(len(chunk))
        return done

    def _expected_tokens(self, turns: Sequence[Turn]) -> int:
        """The pending tokens extraction will be sent, counting a deferred turn at what compression is
        expected to leave of it."""
        return sum(
            self._compressor.expected_tokens(t.tokens_original) if t.compression == "deferred" else t.tokens_compressed
            for t in turns
        )

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
            live_at=to_epoch(self._clock()),
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
            sources=[turn.lineage for turn in draft.sources],
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
