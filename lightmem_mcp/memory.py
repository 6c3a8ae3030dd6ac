"""The transport-free memory service: every tool, the CLI and the tests call this."""

from __future__ import annotations

import base64
import binascii
import builtins
import itertools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TextIO, get_args

from lightmem_mcp.api import (
    ActivityBucket,
    ActivityResult,
    AddResult,
    BucketSize,
    ConsolidateResult,
    ContextWindow,
    DeleteResult,
    ExportPage,
    ExportResult,
    FlushResult,
    GetResult,
    HistoryEntry,
    HistoryResult,
    ImportResult,
    Known,
    ListResult,
    LLMCallInfo,
    MemoryRecord,
    Message,
    Progress,
    RecallResult,
    SearchFilters,
    SearchHit,
    SearchResult,
    SpendEstimate,
    StatsResult,
    Stop,
    Suggestion,
    SummarizeResult,
    SummaryInfo,
    Window,
    WindowTurn,
)
from lightmem_mcp.buffer import ShortTermBuffer
from lightmem_mcp.compressor import Compression, Compressor
from lightmem_mcp.config import SearchMode, Settings
from lightmem_mcp.consolidate import Consolidator
from lightmem_mcp.conversation import preceding, session_run, session_tail, turns_near
from lightmem_mcp.embedder import Embedder, SentenceTransformerEmbedder
from lightmem_mcp.errors import InvalidInput, NotFound
from lightmem_mcp.events import MemoryObserver, Observers
from lightmem_mcp.expiry import ExpiryPurger
from lightmem_mcp.extractor import EXTRACTION_PURPOSE, FactExtractor
from lightmem_mcp.fusion import Ranking, fuse
from lightmem_mcp.indexing import CONTEXT_TURNS, RecordWriter, context_line, is_long, store_layout
from lightmem_mcp.lease import RedisLeases, open_leases
from lightmem_mcp.ledger import UsageLedger
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.llm import LLMClient
from lightmem_mcp.recall import (
    DEFAULT_RECALL_CONTEXT,
    DEFAULT_RECALL_TOKENS,
    MAX_RECALL_TOKENS,
    MIN_RECALL_TOKENS,
    RECALL_CANDIDATES,
    pack,
)
from lightmem_mcp.records import (
    GLOBAL,
    KINDS,
    LEDGER_KIND,
    MAX_ID_CHARS,
    MAX_SPEAKERS,
    SPEAKER_FIELD,
    Fact,
    FoundPoint,
    Kind,
    LedgerEntry,
    MetadataValue,
    Record,
    RecordFilter,
    Scope,
    Summary,
    Turn,
    check_metadata,
    expiry,
    is_blank,
    metadata_pairs,
    record_id,
    scope_of,
    view,
)
from lightmem_mcp.redact import SecretRedactor
from lightmem_mcp.reindex import reindex_store
from lightmem_mcp.segmenter import SegmentationEncoders, TopicSegmenter
from lightmem_mcp.sleep import SleepSchedule
from lightmem_mcp.spend import SpendGuard, completion_share, estimate
from lightmem_mcp.stats import call_info, collect_stats_until
from lightmem_mcp.store import VectorStore, open_store
from lightmem_mcp.store.schema import StoreLayout
from lightmem_mcp.summarize import SUMMARY_PURPOSE, Summarizer, summary_info
from lightmem_mcp.timestamps import ACCEPTED, from_epoch, now, parse_timestamp, to_epoch
from lightmem_mcp.transfer import export_page, export_points, import_points

_MAX_VERSIONS = 100
# Newest summaries read to pick one window's (a scope holds a few hundred at most).
SUMMARIES_READ = 1_000
# Newest records read to suggest argument values (session ids, projects, topics) from.
SUGGESTIONS_READ = 2_000
# Most distinct values `known` returns.
MAX_KNOWN = 1_000
# How long a scope's stats are reused while this process has not written the user (see `Memory.stats`).
STATS_KEPT_S = 60.0
_STATS_SCOPES_KEPT = 256
# Speaker names looked at to tell whether a query names one.
_MAX_SPEAKERS = 256
# Scopes read at once when looking for a backlog.
_MAX_SCOPES = 100_000
# Most buckets one activity read counts: a year of days.
MAX_ACTIVITY_BUCKETS = 366
# Most point lines one export page holds.
MAX_EXPORT_PAGE = 5_000


@dataclass(frozen=True)
class _KeptStats:
    """A scope's stats, and what they hold for: this process's write count of the user, a monotonic
    deadline, and the first expiry among the records counted (epoch seconds)."""

    written: tuple[int, int]
    until: float
    expiry: float
    result: StatsResult


class Memory:
    """Store, search, read and delete memories, always within one scope."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        store: VectorStore,
        lexical: LexicalEncoder,
        compressor: Compressor | None = None,
        observers: Sequence[MemoryObserver] = (),
        clock: Callable[[], datetime] = now,
    ) -> None:
        """Wire the stages over an open store: the one place that does (see `open` and `open_idle`).
        `clock` tells the daily budgets what day it is, and every read which memories have expired."""
        self._settings = settings
        self._clock = clock
        self._stats_lock = threading.Lock()
        self._stats_kept: dict[Scope, _KeptStats] = {}
        self._limits = settings.limits
        self.redactor = SecretRedactor(settings.redaction)
        self.embedder = embedder
        self.store = store
        self.lexical = lexical
        self.writer = RecordWriter(store, embedder, lexical)
        self.reindexed = 0  # records rewritten at open for this version's index (see reindex)
        self.compressor = compressor or Compressor(settings.compression)
        # Told every stored turn, written fact and LLM call: the usage ledger first, then the
        # sleep-time schedule, then the caller's observers (hosted mode's metrics).
        self.events = Observers()
        self.ledger = UsageLedger(store)
        self.events.add(self.ledger)
        # Daily token budgets: told every call after the ledger, asked before each one.
        self.spend = SpendGuard(settings.budget, store, clock)
        self.events.add(self.spend)
        self.llm = LLMClient(
            settings.llm,
            on_call=self.events.llm_called,
            before_call=self.spend.check,
            counter=self.compressor.counter,
        )
        # Leases: one replica at a time extracts or consolidates a scope (Redis when replicas share a store).
        self.leases = open_leases(settings.leases)
        lease_ttl_s = settings.leases.lease_ttl_s
        self._encoders = SegmentationEncoders(self.compressor, embedder)
        self.buffer = ShortTermBuffer(
            settings.pipeline,
            store,
            self.writer,
            embedder,
            self.compressor,
            TopicSegmenter(settings.pipeline, self._encoders.get),
            FactExtractor(self.llm) if self.llm.configured else None,
            self.events,
            self.leases,
            lease_ttl_s,
            self.spend,
            clock,
        )
        self.consolidator = Consolidator(
            settings.consolidation,
            store,
            self.writer,
            embedder,
            self.llm,
            self.leases,
            lease_ttl_s,
            settings.price,
            clock,
        )
        self.summarizer = Summarizer(
            settings.summary, store, self.writer, embedder, self.llm, self.compressor.counter, clock
        )
        self.purger = ExpiryPurger(store, self.leases, lease_ttl_s, clock)
        self.sleep = SleepSchedule(settings.sleep, store, self.consolidator, self.summarizer, self.purger)
        self.events.add(self.sleep)
        for observer in observers:
            self.events.add(observer)
        self._ranking = Ranking.from_settings(settings.search)

    @classmethod
    def open(
        cls, settings: Settings, observers: Sequence[MemoryObserver] = (), embedder: Embedder | None = None
    ) -> Memory:
        """The serving memory: load the embedder (unless one is given, already loaded), open the
        configured store, and start the background work (compressor load, extraction of buffers filled
        before a restart, sleep-time schedule). Blocking: seconds on first load."""
        embedder, lexical, store = _open(settings, embedder)
        compressor = Compressor(settings.compression)
        # Loaded ahead of the first flush, which compresses the buffered turns: the LLMLingua-2 model
        # may take minutes to download. add_memory never waits for it.
        threading.Thread(target=compressor.load, name="lightmem-compressor", daemon=True).start()
        memory = cls(settings, embedder, store, lexical, compressor, observers)
        memory.reindex()
        memory.buffer.resume()  # a restart picks up buffers that filled before it
        memory.sleep.start(llm=memory.llm.configured)
        return memory

    @classmethod
    def open_idle(cls, settings: Settings, reindex_batch: int = 64) -> Memory:
        """The embedder and the store only: no compressor load, no background extraction or sleep-time
        work. For export, import and other offline maintenance."""
        embedder, lexical, store = _open(settings)
        memory = cls(settings, embedder, store, lexical)
        memory.reindex(reindex_batch)
        return memory

    def close(self) -> None:
        """Let running extraction and sleep-time work finish, then flush and release the store."""
        self.sleep.close()
        self.buffer.close()
        if isinstance(self.leases, RedisLeases):
            self.leases.close()
        self.store.close()

    # -- writing -------------------------------------------------------------------------

    def add(
        self,
        messages: Sequence[Message],
        scope: Scope,
        metadata: Mapping[str, MetadataValue] | None = None,
        expires_at: str | None = None,
        ttl: int | None = None,
    ) -> AddResult:
        """Store each message as a `turn` record, durable and searchable when this returns. `metadata`
        goes on every message (and the facts and summaries made from them); `expires_at` (a time) or
        `ttl` (seconds from now) ends them: hidden from then on, deleted by the sleep-time job."""
        _check_scope(scope)
        checked = check_metadata(metadata)
        expires = expiry(expires_at, ttl, self._clock())
        if not messages:
            raise InvalidInput("messages", "empty list: send at least one message")
        if len(messages) > self._limits.max_messages_per_call:
            raise InvalidInput(
                "messages",
                f"{len(messages)} messages in one call; at most {self._limits.max_messages_per_call} "
                "(LIGHTMEM_MAX_MESSAGES_PER_CALL): split them into several calls",
            )
        stored_at = now()
        seen: dict[str, int] = {}
        prepared: list[tuple[str, Message, datetime]] = []
        redactions: list[dict[str, int]] = []  # per message: secrets taken out, by kind
        for index, message in enumerate(messages):
            field = f"messages[{index}]"
            if is_blank(message.content):
                raise InvalidInput(f"{field}.content", "empty: a memory needs some text")
            if len(message.content) > self._limits.max_message_chars:
                raise InvalidInput(
                    f"{field}.content",
                    f"{len(message.content)} characters; at most {self._limits.max_message_chars} "
                    "(LIGHTMEM_MAX_MESSAGE_CHARS): split the message",
                )
            # Secrets go before anything is compressed, embedded, stored or sent to the LLM.
            redacted = self.redactor.redact(message.content)
            if redacted.kinds:
                message = message.model_copy(update={"content": redacted.text})
            redactions.append(redacted.kinds)
            message_id = message.id if message.id is not None else uuid.uuid4().hex
            if message_id in seen:
                raise InvalidInput(f"{field}.id", f"{message_id!r} repeats messages[{seen[message_id]}].id")
            seen[message_id] = index
            event_time = stored_at
            if message.timestamp is not None:
                try:
                    event_time = parse_timestamp(message.timestamp)
                except ValueError:
                    raise InvalidInput(
                        f"{field}.timestamp", f"{message.timestamp!r} is not a time; use {ACCEPTED}"
                    ) from None
            prepared.append((message_id, message, event_time))

        # Stored as sent: compression only serves extraction, so the buffer compresses a turn in the
        # background when it is flushed, just before segmentation (see buffer.py).
        counts = self.compressor.counter.count_many([message.content for _, message, _ in prepared])
        turns: list[Turn] = []
        for position, ((message_id, message, event_time), tokens) in enumerate(zip(prepared, counts, strict=True)):
            fed = self.buffer.feeds_extraction(message.role)
            turns.append(
                Turn.new(
                    scope,
                    message_id,
                    message.content,
                    original_text=message.content,
                    role=message.role,
                    speaker=message.name,
                    event_time=event_time,
                    stored_at=stored_at,
                    position=position,
                    stage="pending" if fed and self.buffer.active else "skipped",
                    tokens_original=tokens,
                    tokens_compressed=tokens,
                    compression=self._compression_plan(fed),
                    redactions=redactions[position],
                    metadata=checked,
                    expires_at=expires,
                )
            )
        turns = self._with_context(scope, turns)
        self.writer.write(turns)
        self.events.turns_stored(turns)
        self.buffer.notify(scope)
        return AddResult(ids=[turn.id for turn in turns], source_ids=[m for m, _, _ in prepared])

    def _with_context(self, scope: Scope, turns: Sequence[Turn]) -> list[Turn]:
        """Each new turn with the turns said just before it in its session (stored ones, then the
        earlier messages of this call), as the `context` its index text carries."""
        gap_s = self._settings.search.session_gap_minutes * 60
        ids = {turn.id for turn in turns}
        earlier = preceding(
            self.store, scope, turns[0].order, CONTEXT_TURNS, gap_s, exclude=ids, live_at=self._live_at()
        )
        written: list[Turn] = []
        for turn in turns:
            before = session_tail(earlier, turn.event_ts, CONTEXT_TURNS, gap_s)
            written.append(turn.with_context([context_line(t) for t in before]))
            earlier.append(turn)
        return written

    def _compression_plan(self, fed: bool) -> str:
        """How a new turn's words will reach extraction: compressed later by its buffer (`deferred`), or
        as they are because compression is off or the role feeds no extraction (`messages_use`)."""
        if not fed:
            return "not_extracted"
        return "disabled" if self.compressor.status == "disabled" else "deferred"

    def flush(
        self,
        scope: Scope,
        backlog: bool = False,
        dry_run: bool = False,
        progress: Progress | None = None,
        *,
        stop: Stop | None = None,
    ) -> FlushResult:
        """Segment and extract every pending turn of exactly this scope now; with `backlog`, also the
        turns stored while no LLM was configured, oldest first. A dry run changes nothing and says
        what it would take: turns, calls, tokens and the estimated cost. Once `stop` says so, the
        flush ends at the next batch boundary: each batch is whole, the rest stays pending."""
        _check_scope(scope)
        if dry_run:
            return self._plan_flush(scope, backlog)
        return self.buffer.flush(scope, force=True, backlog=backlog, progress=progress, stop=stop)

    def backlog_scopes(self, user_id: str | None = None) -> list[Scope]:
        """The exact scopes holding skipped turns (stored while no LLM was configured), of one user or all."""
        scopes = self.store.pending_scopes(_MAX_SCOPES, "turn", "skipped")
        mine = [scope for scope in scopes if user_id is None or scope.user_id == user_id]
        # Skipped only for their role (an assistant's, under messages_use=user_only) is no backlog.
        return [scope for scope in mine if self.buffer.backlog_size(scope)]

    def _plan_flush(self, scope: Scope, backlog: bool) -> FlushResult:
        plan = self.buffer.plan(scope, backlog)
        return FlushResult(
            dry_run=True,
            extracted_turns=plan.turns,
            backlog_turns=plan.backlog,
            facts=0,
            llm_calls=0,
            pending_turns=plan.pending_turns,
            pending_tokens=plan.pending_tokens,
            error=None if self.llm.configured else "no LLM configured (LIGHTMEM_LLM_PROVIDER): nothing would be sent",
            estimate=self._estimate(scope, EXTRACTION_PURPOSE, plan.prompts),
        )

    def _estimate(self, scope: Scope, purpose: str, prompts: Sequence[tuple[str, str]]) -> SpendEstimate:
        """What sending these (system, user) prompts would cost: one call each, the prompts counted with
        the configured tokenizer, answers as long as the user's earlier ones of that purpose."""
        prompt = sum(self.llm.estimate_tokens(system, user) for system, user in prompts)
        share = completion_share(self.store, scope.user_id, purpose)
        return estimate(
            self._settings.price, self.llm.provider, self.llm.model, len(prompts), prompt, round(prompt * share)
        )

    # -- sleep time ----------------------------------------------------------------------

    def consolidate(
        self,
        scope: Scope | None,
        since: str | None = None,
        until: str | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
        *,
        stop: Stop | None = None,
    ) -> ConsolidateResult:
        """Let newer facts update or supersede older ones, for one scope or (None) every user. Once
        `stop` says so, the run ends at the next LLM call: each decided group stays applied."""
        if scope is not None:
            _check_scope(scope)
        since_ts, until_ts = _time_range(since, until)
        return self.consolidator.run(
            scope, since_ts=since_ts, until_ts=until_ts, dry_run=dry_run, progress=progress, stop=stop
        )

    def summarize(
        self,
        scope: Scope,
        window: Window = "all",
        since: str | None = None,
        until: str | None = None,
        topic: str | None = None,
        progress: Progress | None = None,
        dry_run: bool = False,
        *,
        stop: Stop | None = None,
    ) -> SummarizeResult:
        """Write one summary record per window (session, day, week or all) of the scope's memories; a
        dry run writes and calls nothing and says what it would take. Once `stop` says so, the run
        ends before the next window."""
        _check_scope(scope)
        since_ts, until_ts = _time_range(since, until)
        if topic is not None and is_blank(topic):
            raise InvalidInput("topic", "empty: omit it or name what to summarize")
        if dry_run:
            windows, prompts = self.summarizer.plan(
                scope, window=window, since_ts=since_ts, until_ts=until_ts, topic=topic
            )
            return SummarizeResult(
                dry_run=True,
                summaries=[],
                llm_calls=0,
                windows=windows,
                estimate=self._estimate(scope, SUMMARY_PURPOSE, prompts),
            )
        result = self.summarizer.run(
            scope, window=window, since_ts=since_ts, until_ts=until_ts, topic=topic, progress=progress, stop=stop
        )
        if not result.summaries and result.error is None and not result.cancelled:
            raise InvalidInput(
                "scope",
                "nothing to summarize: no memories in this scope and time range" + (" on this topic" if topic else ""),
            )
        return result

    def history(self, record: str, scope: Scope) -> HistoryResult:
        """Every version of a memory: what it said, what replaced it, when and why."""
        found = self._fetch([record], scope)
        if record not in found:
            raise NotFound(f"no memory {record!r} in this scope (record)")
        versions = dict(found)
        frontier = [record]
        while frontier and len(versions) < _MAX_VERSIONS:
            edges = [versions[i] for i in frontier]
            linked = {i for version in edges if isinstance(version, Fact) for i in version.supersedes}
            linked |= {v.superseded_by for v in edges if v.superseded_by}
            where = RecordFilter(
                scope.user_id,
                kinds=KINDS,
                superseded_by=tuple(frontier),
                project=scope.project,
                live_at=self._live_at(),
            )
            replaced = [view(p) for p in self.store.scroll(where, _MAX_VERSIONS)]
            linked -= versions.keys()
            fetched = (
                self.store.scroll(replace(where, superseded_by=(), ids=tuple(linked)), _MAX_VERSIONS) if linked else []
            )
            fresh = {r.id: r for r in [*map(view, fetched), *replaced] if r.id not in versions}
            versions.update(fresh)
            frontier = list(fresh)
        changes: dict[tuple[str, str, str], HistoryEntry] = {}
        for version in versions.values():
            for raw in version.changes:
                entry = HistoryEntry.model_validate(raw)
                changes[(entry.action, entry.target_id, entry.new_id)] = entry
        ordered = sorted(versions.values(), key=lambda r: (r.created_ts, r.id))
        return HistoryResult(
            id=record,
            versions=[_record(r) for r in ordered],
            changes=sorted(changes.values(), key=lambda e: e.time),
        )

    def compress(
        self, text: str, rate: float | None = None, target_tokens: int | None = None, force_tokens: Sequence[str] = ()
    ) -> Compression:
        """Compress text for the caller's own prompt; raises when no compression model is available."""
        if is_blank(text):
            raise InvalidInput("text", "empty: give the text to compress")
        if len(text) > self._limits.max_message_chars:
            raise InvalidInput("text", f"longer than {self._limits.max_message_chars} characters: split it")
        if rate is not None and target_tokens is not None:
            raise InvalidInput("target_tokens", "give either rate or target_tokens, not both")
        return self.compressor.compress(
            text, rate=rate, target_tokens=target_tokens, force_tokens=list(force_tokens) or None, required=True
        )

    # -- reading -------------------------------------------------------------------------

    def search(
        self,
        query: str,
        scope: Scope,
        limit: int = 10,
        filters: SearchFilters | None = None,
        mode: SearchMode | None = None,
        context: int = 0,
    ) -> SearchResult:
        """Best matches for `query` within the scope and filters; with `context`, the turns around each
        turn hit (that many before and after, same session), overlapping windows merged."""
        where = self._check_query(query, scope, filters)
        self._check_limit(limit)
        _check_context(context)
        ranking = self._ranking if mode is None else replace(self._ranking, mode=mode)
        found = self._rank(query, where, limit, ranking)
        hits = [_hit(record) for record in found]
        if not context:
            return SearchResult(hits=hits)
        windows: list[ContextWindow] = []
        read: dict[tuple[Scope, float, float], list[Turn]] = {}
        for run, members in _merged([(i, self._window(r, context, read, where)) for i, r in enumerate(found)]):
            hit_ids = {found[i].id for i in members}
            for i in members:
                hits[i].window = len(windows)
            windows.append(
                ContextWindow(
                    session_id=run[0].scope.session_id,
                    turns=[_window_turn(turn, turn.id in hit_ids) for turn in run],
                    hits=members,
                )
            )
        return SearchResult(hits=hits, windows=windows)

    def recall(
        self,
        query: str,
        scope: Scope,
        max_tokens: int = DEFAULT_RECALL_TOKENS,
        context: int = DEFAULT_RECALL_CONTEXT,
        filters: SearchFilters | None = None,
        compress: bool = False,
    ) -> RecallResult:
        """The context to put in a prompt before answering: the best hits with up to `context` short
        turns around each (a short reply or question next to a hit is cheap and often the rest of the
        exchange; a long one would crowd out other hits), packed into at most `max_tokens` tokens,
        grouped by session in time order, each line citing its message id."""
        where = self._check_query(query, scope, filters)
        if not MIN_RECALL_TOKENS <= max_tokens <= MAX_RECALL_TOKENS:
            raise InvalidInput(
                "max_tokens", f"{max_tokens} is out of range: use {MIN_RECALL_TOKENS} to {MAX_RECALL_TOKENS}"
            )
        _check_context(context)
        found = self._rank(query, where, RECALL_CANDIDATES, self._ranking)
        shrink = None
        if compress and self.compressor.status == "ready":
            shrink = self._shrink
        read: dict[tuple[Scope, float, float], list[Turn]] = {}
        return pack(
            found,
            lambda hit: _short_neighbours(self._window(hit, context, read, where), hit) if context else [hit],
            max_tokens,
            self.compressor.counter.count,
            self._settings.search.session_gap_minutes * 60,
            shrink,
        )

    def _shrink(self, texts: Sequence[str]) -> list[str]:
        return [c.text for c in self.compressor.compress_many(list(texts))]

    def _check_query(self, query: str, scope: Scope, filters: SearchFilters | None) -> RecordFilter:
        _check_scope(scope)
        if is_blank(query):
            raise InvalidInput("query", "empty: say what to look for")
        if len(query) > self._limits.max_message_chars:
            raise InvalidInput("query", f"longer than {self._limits.max_message_chars} characters: shorten it")
        return self._where(scope, filters)

    def _rank(self, query: str, where: RecordFilter, limit: int, ranking: Ranking) -> list[Record]:
        """The best `limit` records, with payloads and scores: each arm ranks `candidates` records
        without payload, the fusion orders them, and only the winners are read."""
        depth = limit if ranking.mode != "hybrid" else max(ranking.candidates, limit)
        dense: list[FoundPoint] = []
        sparse: list[FoundPoint] = []  # ids and scores only
        if ranking.mode != "sparse":
            dense = self.store.nearest(self.embedder.embed_query(query), where, depth, with_payload=False)
        terms = self.lexical.query_terms(query) if ranking.mode != "dense" else []
        if terms:
            total, frequencies = self.store.term_stats(where.user_id, terms)
            weighted = self.lexical.weigh(terms, total, frequencies)
            sparse = self.store.nearest(weighted, where, depth, with_payload=False)
        if ranking.mode == "hybrid":
            fusion = ranking.named if self._names_speaker(terms, where) else ranking.plain
            ranked = fuse(dense, sparse, fusion)[:limit]
        else:
            ranked = [(p.id, p.score) for p in (dense or sparse)[:limit]]
        if not ranked:
            return []
        ids = tuple(point_id for point_id, _ in ranked)
        read = {p.id: p for p in self.store.scroll(replace(where, ids=ids), len(ids))}
        return [replace(view(read[i]), score=score) for i, score in ranked if i in read]

    def names_speaker(self, query: str, scope: Scope) -> bool:
        """Whether the query names someone who speaks in the scope's memories; hybrid search then
        fuses with the `named_*` settings (see fusion.py)."""
        where = RecordFilter(scope.user_id, scope.agent_id, project=scope.project)
        return self._names_speaker(self.lexical.query_terms(query), where)

    def _names_speaker(self, terms: Sequence[int], where: RecordFilter) -> bool:
        if not terms:
            return False
        within = RecordFilter(where.user_id, where.agent_id, project=where.project)
        speakers = self.store.values(SPEAKER_FIELD, within, _MAX_SPEAKERS)
        named = {term for name in speakers for term in self.lexical.query_terms(name)}
        return not named.isdisjoint(terms)

    def _window(
        self, hit: Record, context: int, read: dict[tuple[Scope, float, float], list[Turn]], where: RecordFilter
    ) -> list[Record]:
        """The hit and up to `context` turns before and after it in its session; just the hit when it
        is not a turn. `read` keeps the turns already read for this call: hits cluster in sessions.
        The turns around a hit are live ones holding the metadata the search asked for (`where`), as
        the hits are: a window never shows what the filter left out."""
        if not isinstance(hit, Turn):
            return [hit]
        gap_s = self._settings.search.session_gap_minutes * 60
        span = context * gap_s
        key = (hit.scope, hit.event_ts - span, hit.event_ts + span)
        if key not in read:
            read[key] = turns_near(self.store, *key, live_at=where.live_at, metadata_pairs=where.metadata_pairs)
        near = read[key]
        index = next((i for i, turn in enumerate(near) if turn.id == hit.id), None)
        if index is None:  # deleted between the ranking and now
            return [hit]
        return list(session_run(near, index, context, context, gap_s))

    def get(self, ids: Sequence[str], scope: Scope) -> GetResult:
        """Records by id; ids outside the scope are reported missing, never revealed."""
        found = self._fetch(ids, scope)
        return GetResult(
            records=[_record(found[i]) for i in dict.fromkeys(ids) if i in found],
            missing=[i for i in dict.fromkeys(ids) if i not in found],
        )

    def list(
        self,
        scope: Scope,
        kinds: Sequence[Kind] | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_superseded: bool = False,
        metadata: Mapping[str, MetadataValue] | None = None,
        speakers: Sequence[str] | None = None,
    ) -> ListResult:
        """One page of records, newest event first; superseded facts only when asked; with `metadata`,
        only records whose metadata holds every one of those pairs; with `speakers`, only records said by
        one of those names (matched exactly, as search's `filters.speakers`)."""
        _check_scope(scope)
        self._check_limit(limit)
        pairs = metadata_pairs(check_metadata(metadata))
        if speakers is not None and len(speakers) > MAX_SPEAKERS:
            raise InvalidInput("speakers", f"{len(speakers)} names; at most {MAX_SPEAKERS}")
        before_ts, skip = _decode_cursor(cursor) if cursor else (None, [])
        where = RecordFilter(
            user_id=scope.user_id,
            agent_id=scope.agent_id,
            session_id=scope.session_id,
            kinds=tuple(kinds or KINDS),
            speakers=tuple(speakers or ()),
            statuses=() if include_superseded else ("active",),
            project=scope.project,
            metadata_pairs=pairs,
            live_at=self._live_at(),
        )
        page = [view(p) for p in self.store.scroll(where, limit + 1, before_ts, skip)]
        more = len(page) > limit
        page = page[:limit]
        next_cursor = None
        if more and page:
            last_ts = page[-1].event_ts
            # Records sharing the boundary time are skipped by id, so ties never repeat or vanish.
            tied = [r.id for r in page if r.event_ts == last_ts]
            if before_ts == last_ts:
                tied = skip + tied
            next_cursor = _encode_cursor(last_ts, tied)
        return ListResult(records=[_record(r) for r in page], next_cursor=next_cursor)

    def count(self, scope: Scope) -> int:
        """How many records the scope reads (a project's and the global tier's), expired ones left out."""
        _check_scope(scope)
        where = self._live(scope)
        return self.store.count(where)

    def activity(self, scope: Scope, bucket: BucketSize = "week", buckets: int = 12) -> ActivityResult:
        """The scope's records (those `count` counts) by kind per UTC day or ISO week, for the `buckets`
        consecutive buckets ending with the one holding the newest record (by event time), oldest first;
        none when the scope holds no records."""
        _check_scope(scope)
        if bucket not in get_args(BucketSize):
            raise InvalidInput("bucket", f"{bucket!r}: use day or week")
        if not 1 <= buckets <= MAX_ACTIVITY_BUCKETS:
            raise InvalidInput("buckets", f"{buckets} is out of range: use 1 to {MAX_ACTIVITY_BUCKETS}")
        where = self._live(scope)
        newest = self.store.scroll(where, 1)
        if not newest:
            return ActivityResult(bucket=bucket, buckets=[], total=0)
        edges = _bucket_edges(view(newest[0]).event_ts, bucket, buckets)
        result: list[ActivityBucket] = []
        for start, end in itertools.pairwise(edges):
            # A range's bounds are both inclusive: a bucket ends at the last float before the next one
            # starts, so a record on an edge counts once, in the bucket that it starts.
            within = replace(where, since_ts=start, until_ts=math.nextafter(end, -math.inf))
            counts: dict[str, int] = {kind: self.store.count(replace(within, kinds=(kind,))) for kind in KINDS}
            result.append(ActivityBucket(start=from_epoch(start), label=_bucket_label(start, bucket), counts=counts))
        return ActivityResult(bucket=bucket, buckets=result, total=sum(sum(b.counts.values()) for b in result))

    def summaries(self, scope: Scope, window: Window | None = None, limit: int = 20) -> builtins.list[SummaryInfo]:
        """The scope's summaries (of one window kind, when given), newest period first."""
        _check_scope(scope)
        where = RecordFilter(
            scope.user_id,
            scope.agent_id,
            scope.session_id,
            kinds=("summary",),
            statuses=("active",),
            project=scope.project,
            live_at=self._live_at(),
        )
        found = [r for r in map(view, self.store.scroll(where, SUMMARIES_READ)) if isinstance(r, Summary)]
        chosen = [s for s in found if window is None or s.window == window]
        chosen.sort(key=lambda s: (s.window_end_ts, s.updated_ts), reverse=True)
        return [summary_info(s) for s in chosen[:limit]]

    def llm_calls(self, scope: Scope, ids: Sequence[str]) -> builtins.list[LLMCallInfo]:
        """The usage ledger's entries of these LLM calls (the `llm_call_id` of facts and summaries) made
        for the scope's user, in the order asked; ids of no such call, or of another user's, are left out."""
        _check_scope(scope)
        if len(ids) > self._limits.max_ids_per_call:
            raise InvalidInput(
                "ids", f"{len(ids)} ids; at most {self._limits.max_ids_per_call} (LIGHTMEM_MAX_IDS_PER_CALL)"
            )
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        # An entry's id derives from the call id and the exact scope the call was made for.
        found: dict[str, LedgerEntry] = {}
        by_scope: dict[Scope, dict[str, str]] = {}
        for point in self.store.scan(RecordFilter(scope.user_id, kinds=(LEDGER_KIND,))):
            exact = scope_of(point.payload)
            if exact not in by_scope:
                by_scope[exact] = {record_id(exact, LEDGER_KIND, call_id): call_id for call_id in wanted}
            call_id = by_scope[exact].get(point.id)
            if call_id is not None:
                found[call_id] = LedgerEntry(point.id, point.payload)
        return [call_info(i, found[i], self._settings.price) for i in wanted if i in found]

    def forget_preview(self, scope: Scope) -> dict[str, int]:
        """What `forget` of the scope would delete: records by kind (kinds with none left out)."""
        _check_scope(scope)
        where = RecordFilter.owned_by(scope)
        counts = {kind: self.store.count(replace(where, kinds=(kind,))) for kind in KINDS}
        return {kind: n for kind, n in counts.items() if n}

    def suggest(self, scope: Scope, field: Suggestion, prefix: str = "", limit: int = 100) -> builtins.list[str]:
        """Values of `field` seen in the scope's newest records that start with `prefix` (case
        ignored), most recent first: what a client offers when completing an argument."""
        _check_scope(scope)
        kinds: tuple[str, ...] = ("summary",) if field == "topic" else KINDS
        where = self._live(scope, kinds)
        wanted = prefix.casefold()
        seen: dict[str, None] = {}
        for point in self.store.scroll(where, SUGGESTIONS_READ):
            value = point.payload.get(SPEAKER_FIELD if field == "speaker" else field)
            if isinstance(value, str) and value and value.casefold().startswith(wanted):
                seen.setdefault(value)
                if len(seen) >= limit:
                    break
        return list(seen)

    def known(self, scope: Scope, field: Known, limit: int = 50) -> builtins.list[str]:
        """Distinct values of `field` among the scope's live records, most frequent first, counted in the
        keyword index (no record is read): the choices of a filter."""
        _check_scope(scope)
        if not 1 <= limit <= MAX_KNOWN:
            raise InvalidInput("limit", f"{limit} is out of range: use 1 to {MAX_KNOWN}")
        where = self._live(scope)
        return [v for v in self.store.values(SPEAKER_FIELD if field == "speaker" else field, where, limit) if v]

    # -- deleting ------------------------------------------------------------------------

    def delete(self, ids: Sequence[str], scope: Scope) -> DeleteResult:
        """Delete records by id among those the scope reads (a project's and the global tier's)."""
        found = self._fetch(ids, scope)
        if found:
            where = RecordFilter(scope.user_id, scope.agent_id, scope.session_id, project=scope.project)
            self.store.delete(replace(where, ids=tuple(found)))
        unique = list(dict.fromkeys(ids))
        return DeleteResult(deleted=[i for i in unique if i in found], missing=[i for i in unique if i not in found])

    def forget(self, scope: Scope, confirm: bool) -> int:
        """Delete everything in the scope; returns how many records went. A project's forget deletes
        that project's records alone, never the global tier that it reads too."""
        _check_scope(scope)
        if confirm is not True:
            raise InvalidInput(
                "confirm",
                f"forget deletes every memory of user {scope.user_id!r}"
                + (f", agent {scope.agent_id!r}" if scope.agent_id else "")
                + (f", session {scope.session_id!r}" if scope.session_id else "")
                + (f" in project {scope.project!r}" if scope.project else "")
                + (" in the global tier (no project)" if scope.project == GLOBAL else "")
                + " and cannot be undone: call again with confirm=true",
            )
        where = RecordFilter.owned_by(scope)
        count = self.store.count(replace(where, kinds=KINDS))
        self.store.delete(where)  # the scope's LLM usage ledger goes with it
        return count

    # -- helpers -------------------------------------------------------------------------

    def _fetch(self, ids: Sequence[str], scope: Scope) -> dict[str, Record]:
        _check_scope(scope)
        if not ids:
            raise InvalidInput("ids", "empty list: give at least one memory id")
        if len(ids) > self._limits.max_ids_per_call:
            raise InvalidInput(
                "ids", f"{len(ids)} ids; at most {self._limits.max_ids_per_call} (LIGHTMEM_MAX_IDS_PER_CALL)"
            )
        for index, value in enumerate(ids):
            try:
                uuid.UUID(value)
            except ValueError:
                raise InvalidInput(
                    f"ids[{index}]", f"{value!r} is not a memory id (ids look like 'a1b2…-…', as search returns)"
                ) from None
        unique = tuple(dict.fromkeys(ids))
        where = RecordFilter(
            scope.user_id,
            scope.agent_id,
            scope.session_id,
            kinds=KINDS,
            ids=unique,
            project=scope.project,
            live_at=self._live_at(),
        )
        return {p.id: view(p) for p in self.store.scroll(where, len(unique))}

    def _live_at(self) -> float:
        """Now by the clock, in epoch seconds: reads leave out what has expired by then."""
        return to_epoch(self._clock())

    def _live(self, scope: Scope, kinds: Sequence[str] = KINDS) -> RecordFilter:
        """The scope's records as reads see them (a project's and the global tier's; expired ones left out)."""
        return RecordFilter(
            scope.user_id,
            scope.agent_id,
            scope.session_id,
            kinds=tuple(kinds),
            project=scope.project,
            live_at=self._live_at(),
        )

    def _where(self, scope: Scope, filters: SearchFilters | None) -> RecordFilter:
        filters = filters or SearchFilters()
        bounds = _time_range(filters.since, filters.until, "filters.")
        pairs = metadata_pairs(check_metadata(filters.metadata, "filters.metadata"))
        return RecordFilter(
            user_id=scope.user_id,
            agent_id=scope.agent_id,
            session_id=scope.session_id,
            kinds=tuple(filters.kinds or ()),
            roles=tuple(filters.roles or ()),
            speakers=tuple(filters.speakers or ()),
            statuses=("active", "superseded") if filters.include_superseded else ("active",),
            since_ts=bounds[0],
            until_ts=bounds[1],
            project=scope.project,
            metadata_pairs=pairs,
            live_at=self._live_at(),
        )

    def _check_limit(self, limit: int) -> None:
        if not 1 <= limit <= self._limits.max_results:
            raise InvalidInput(
                "limit", f"{limit} is out of range: use 1 to {self._limits.max_results} (LIGHTMEM_MAX_RESULTS)"
            )

    # -- accounting and transfer ---------------------------------------------------------

    def reindex(self, batch: int = 64) -> None:
        """Re-index a store written by an older lightmem-mcp (resumable); `reindexed` says how many records."""
        gap_s = self._settings.search.session_gap_minutes * 60
        self.reindexed = reindex_store(self.store, self.writer, gap_s, batch)

    def stats(self, scope: Scope) -> StatsResult:
        """Records by kind and status, compression savings, LLM calls, tokens and estimated cost of the scope.

        Counting reads every record of the scope (a second at 10k records), so a scope's figures are
        kept while this process has not changed the user's records and none of them has expired, for at
        most `STATS_KEPT_S` (which bounds what other processes' writes can leave unseen)."""
        _check_scope(scope)
        written = self.store.written(scope.user_id)
        clock, at = time.monotonic(), self._clock()
        with self._stats_lock:
            kept = self._stats_kept.get(scope)
        if kept is not None and kept.written == written and clock < kept.until and to_epoch(at) < kept.expiry:
            result = kept.result
        else:
            result, expiry = collect_stats_until(self.store, scope, self._settings.price, self.compressor.counter, at)
            with self._stats_lock:
                if len(self._stats_kept) >= _STATS_SCOPES_KEPT:
                    self._stats_kept.clear()
                until = clock + STATS_KEPT_S
                self._stats_kept[scope] = _KeptStats(written, until, math.inf if expiry is None else expiry, result)
        budget = self.spend.status(scope.user_id) if self.spend.enabled else None
        return result.model_copy(update={"budget": budget})

    def export_records(self, out: TextIO, scope: Scope | None = None, vectors: bool = False) -> ExportResult:
        """Write the scope's points (every point when `scope` is None) as JSON Lines to `out`."""
        if scope is not None:
            _check_scope(scope)
        return export_points(self.store, self._layout(), out, scope, vectors)

    def export_page(self, scope: Scope, after: str | None = None, limit: int = 500) -> ExportPage:
        """What `export_records(out, scope)` writes, a page of at most `limit` points at a time: the
        header on the first page, then the point lines in id order; pass `next` as `after` for the next."""
        _check_scope(scope)
        if not 1 <= limit <= MAX_EXPORT_PAGE:
            raise InvalidInput("limit", f"{limit} is out of range: use 1 to {MAX_EXPORT_PAGE}")
        if after is not None:
            try:
                after = str(uuid.UUID(after))
            except ValueError:
                raise InvalidInput(
                    "after", f"{after!r} is not a point id: pass the last page's next unchanged, or omit it"
                ) from None
        return export_page(self.store, self._layout(), scope, after, limit)

    def import_records(
        self, source: TextIO, progress: Progress | None = None, *, stop: Stop | None = None
    ) -> ImportResult:
        """Restore an export: validated whole first, then upserted with the same ids, re-embedded when needed.
        Once `stop` says so, the import ends at the next write batch; importing the file again finishes it."""
        return import_points(
            self.store, self.writer, self._layout(), source, self._limits, self.redactor, progress=progress, stop=stop
        )

    def _layout(self) -> StoreLayout:
        return store_layout(self.embedder, self.lexical)


def _open(settings: Settings, embedder: Embedder | None = None) -> tuple[Embedder, LexicalEncoder, VectorStore]:
    """The embedder, the lexical encoder and the configured store laid out for them."""
    embedder = embedder or SentenceTransformerEmbedder(settings.embedding)
    lexical = LexicalEncoder()
    return embedder, lexical, open_store(settings.store, store_layout(embedder, lexical))


def _check_scope(scope: Scope) -> None:
    for name in ("user_id", "agent_id", "session_id", "project"):
        value = getattr(scope, name)
        if value is None or (name == "project" and value == GLOBAL):
            continue
        if is_blank(value):
            raise InvalidInput(name, "empty: omit it or give a non-blank id")
        if len(value) > MAX_ID_CHARS or any(ord(c) < 32 for c in value):
            raise InvalidInput(name, f"must be at most {MAX_ID_CHARS} printable characters")


MAX_CONTEXT = 10


def _check_context(context: int) -> None:
    if not 0 <= context <= MAX_CONTEXT:
        raise InvalidInput("context", f"{context} is out of range: use 0 (no window) to {MAX_CONTEXT} turns each side")


def _short_neighbours(run: list[Record], hit: Record) -> list[Record]:
    """The part of a window around the hit whose other turns are short (see `indexing.is_long`)."""
    index = next(i for i, r in enumerate(run) if r.id == hit.id)
    start, end = index, index + 1
    while start > 0 and _is_short(run[start - 1]):
        start -= 1
    while end < len(run) and _is_short(run[end]):
        end += 1
    return run[start:end]


def _is_short(record: Record) -> bool:
    return isinstance(record, Turn) and not is_long(record)


def _merged(spans: Sequence[tuple[int, list[Record]]]) -> list[tuple[list[Turn], list[int]]]:
    """Windows that share a turn become one (in conversation order), listed by their best hit."""
    merged: list[tuple[dict[str, Turn], list[int]]] = []
    for hit, run in spans:
        turns = {r.id: r for r in run if isinstance(r, Turn)}
        if not turns:
            continue  # facts and summaries have no window
        overlapping = [m for m in merged if m[0].keys() & turns.keys()]
        for m in overlapping:
            merged.remove(m)
            turns.update(m[0])
        hits = sorted({hit, *(i for m in overlapping for i in m[1])})
        merged.append((turns, hits))
    merged.sort(key=lambda m: m[1][0])
    return [(sorted(turns.values(), key=lambda t: t.order), hits) for turns, hits in merged]


def _window_turn(turn: Turn, hit: bool) -> WindowTurn:
    return WindowTurn.model_validate(
        {
            "id": turn.id,
            "source_ids": turn.source_ids,
            "role": turn.role,
            "speaker": turn.speaker,
            "text": turn.text,
            "event_time": turn.event_time,
            "hit": hit,
        }
    )


def _time_range(since: str | None, until: str | None, prefix: str = "") -> tuple[float | None, float | None]:
    """Epoch bounds from optional ISO times, with an error naming the field."""
    bounds: list[float | None] = []
    for name, value in (("since", since), ("until", until)):
        if value is None:
            bounds.append(None)
            continue
        try:
            bounds.append(to_epoch(parse_timestamp(value)))
        except ValueError:
            raise InvalidInput(f"{prefix}{name}", f"{value!r} is not a time; use {ACCEPTED}") from None
    if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
        raise InvalidInput(f"{prefix}since", f"is after {prefix}until: swap them")
    return bounds[0], bounds[1]


# The earliest start a bucket can have: an event is on 0001-01-02 at the earliest, a Tuesday.
_FIRST_BUCKET = to_epoch(datetime(1, 1, 1, tzinfo=UTC))


def _bucket_edges(newest_ts: float, bucket: BucketSize, buckets: int) -> list[float]:
    """In epoch seconds, oldest first: where each of `buckets` consecutive buckets starts, the last one
    holding `newest_ts`, then where that one ends; buckets before year 1 left out."""
    newest = from_epoch(newest_ts)
    last = datetime(newest.year, newest.month, newest.day, tzinfo=UTC)
    if bucket == "week":
        last -= timedelta(days=last.weekday())  # Monday
    step = (1 if bucket == "day" else 7) * 86_400
    edges = [to_epoch(last) + offset * step for offset in range(1 - buckets, 2)]
    return [edge for edge in edges if edge >= _FIRST_BUCKET]


def _bucket_label(start: float, bucket: BucketSize) -> str:
    """The day (2026-11-30) or the ISO week (2026-W49) a bucket starting at `start` covers."""
    day = from_epoch(start).date()
    if bucket == "day":
        return day.isoformat()
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _record(record: Record) -> MemoryRecord:
    scope = record.scope
    return MemoryRecord.model_validate(
        {
            "id": record.id,
            "kind": record.kind,
            "status": record.status,
            "superseded_by": record.superseded_by,
            "text": record.text,
            "original_text": record.original_text if isinstance(record, Turn) else None,
            "role": record.role,
            "speaker": record.speaker,
            "source_ids": record.source_ids,
            "user_id": scope.user_id,
            "agent_id": scope.agent_id,
            "session_id": scope.session_id,
            "project": scope.project,
            "tier": record.tier,
            "topic_id": record.topic_id,
            "event_time": record.event_time,
            "created_at": from_epoch(record.created_ts),
            "updated_at": from_epoch(record.updated_ts),
            "metadata": record.metadata,
            "expires_at": record.expires_at,
            "llm_call_id": record.llm_call_id,
        }
    )


def _hit(record: Record) -> SearchHit:
    return SearchHit.model_validate(
        {
            "id": record.id,
            "kind": record.kind,
            "text": record.text,
            "score": record.score,
            "event_time": record.event_time,
            "role": record.role,
            "speaker": record.speaker,
            "session_id": record.scope.session_id,
            "project": record.scope.project,
            "tier": record.tier,
            "source_ids": record.source_ids,
            "metadata": record.metadata,
            "expires_at": record.expires_at,
        }
    )


def _encode_cursor(before_ts: float, skip: list[str]) -> str:
    raw = json.dumps({"t": before_ts, "s": skip}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, list[str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        before_ts = float(data["t"])
        skip = [str(uuid.UUID(i)) for i in data["s"]]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidInput(
            "cursor", "not a cursor returned by list_memories: pass next_cursor unchanged, or omit it"
        ) from None
    return before_ts, skip
