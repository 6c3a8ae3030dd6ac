"""The tool-facing models: what MCP callers send and what comes back.

Every tool's input and result model lives here, so the published tool schemas have one home. The
pipeline modules fill these models in; the stored data model (scopes, filters, points) stays in
`records`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from lightmem_mcp.records import (
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    MAX_SPEAKERS,
    Kind,
    MetadataValue,
    Role,
    ScopeId,
    Speaker,
    Status,
    Tier,
)
from lightmem_mcp.timestamps import MAX_TIME_CHARS

# Most changes one consolidation run lists in its result.
MAX_REPORTED_CHANGES = 500

# Progress reported to the tool caller: done, total, message.
Progress = Callable[[float, float, str], None]

# True once the caller has cancelled: stop at the next batch boundary.
Stop = Callable[[], bool]


class StopFlag:
    """A `Stop` that its caller sets, and that tells whoever waits on the call at once (a front door
    relaying the cancel to the owner of a shared store) instead of when they next ask."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> bool:
        """Whether the caller has cancelled."""
        return self._set

    def set(self) -> None:
        """Cancel: every listener hears it once."""
        with self._lock:
            if self._set:
                return
            self._set = True
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener()

    def on_set(self, listener: Callable[[], None]) -> None:
        """Call `listener` when the flag is set (at once, if it already is)."""
        with self._lock:
            if not self._set:
                self._listeners.append(listener)
                return
        listener()


_CANCELLED = "True when the call was cancelled: it stopped at a batch boundary; the counts say what was done."

# What one summary covers: everything in range, or one session, day or week.
Window = Literal["all", "session", "day", "week"]
# The stored fields whose values are offered when a client completes an argument.
Suggestion = Literal["session_id", "agent_id", "project", "topic", "speaker"]
# Fields whose distinct values `Memory.known` reads from the keyword index.
Known = Literal["session_id", "agent_id", "speaker"]
# How long one bar of a scope's activity is: a UTC day, or an ISO week (Monday to Sunday, UTC).
BucketSize = Literal["day", "week"]

_PROJECT = "The project it belongs to; null = the user's global tier."
_TIER = (
    "Which tier it comes from: project (the project's own memories) or global (the user's, seen from every project)."
)
_METADATA_RULES = (
    f"At most {MAX_METADATA_KEYS} keys of 1-64 letters, digits, _ or - (starting with a letter or _, no dots); "
    f"values are strings (at most {MAX_METADATA_VALUE_CHARS} characters), numbers or booleans, no null or "
    f"nesting; at most {MAX_METADATA_BYTES} bytes as JSON."
)
_METADATA = (
    "Your metadata on it, as given to add_memory; a fact or summary has the union of its sources' "
    "(the newest source wins a key they disagree on)."
)
_EXPIRES_AT = (
    "When it expires (UTC); from then on it is hidden and later deleted. A fact or summary expires when all "
    "its sources have. null: never."
)


# -- Inputs ------------------------------------------------------------------------------

# A metadata value as a caller sends it: its schema states the string limit the service checks.
MetadataInput = Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)] | int | float | bool


class Message(BaseModel):
    """One conversation message to remember."""

    # Strict: JSON types as the schema says ("1" is not a role, 1 is not a text).
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Role = Field(description="Who spoke: user, assistant, system or tool.")
    content: str = Field(
        description="The message text, as said. Stored as sent, secrets (keys, tokens, passwords) redacted. "
        "Not blank; at most LIGHTMEM_MAX_MESSAGE_CHARS characters (32,000 by default)."
    )
    id: ScopeId | None = Field(
        default=None,
        description=f"Your id for this message, at most {MAX_ID_CHARS} characters; search results cite it in "
        "source_ids. Generated if absent.",
    )
    timestamp: str | None = Field(
        default=None,
        max_length=MAX_TIME_CHARS,
        description="When it was said: ISO 8601 or '2023/05/20 (Sat) 00:44', at most "
        f"{MAX_TIME_CHARS} characters. Defaults to now (UTC).",
    )
    name: str | None = Field(
        default=None,
        max_length=MAX_ID_CHARS,
        description=f"Speaker name, when several people talk; at most {MAX_ID_CHARS} characters.",
    )


class SearchFilters(BaseModel):
    """Optional narrowing of a search; every field is ANDed."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kinds: list[Kind] | None = Field(default=None, description="Only these kinds: turn, fact, summary.")
    roles: list[Role] | None = Field(default=None, description="Only memories from these roles.")
    speakers: list[Speaker] | None = Field(
        default=None,
        max_length=MAX_SPEAKERS,
        description=f"Only memories from these speaker names: at most {MAX_SPEAKERS} names of at most "
        f"{MAX_ID_CHARS} characters.",
    )
    since: str | None = Field(
        default=None,
        max_length=MAX_TIME_CHARS,
        description=f"Only events at or after this time (ISO 8601, at most {MAX_TIME_CHARS} characters).",
    )
    until: str | None = Field(
        default=None,
        max_length=MAX_TIME_CHARS,
        description=f"Only events at or before this time (ISO 8601, at most {MAX_TIME_CHARS} characters).",
    )
    include_superseded: bool = Field(
        default=False, description="Also facts that newer facts updated or contradicted (see memory_history)."
    )
    metadata: dict[str, MetadataInput] | None = Field(
        default=None,
        max_length=MAX_METADATA_KEYS,
        description="Only memories whose metadata holds every one of these key: value pairs (equality; a whole "
        f"number matches 2 and 2.0, a string never matches a number or boolean). {_METADATA_RULES}",
    )


# -- Records as they come back -----------------------------------------------------------


class MemoryRecord(BaseModel):
    """A stored memory with its provenance."""

    id: str = Field(description="Record id, for get_memory / delete_memory.")
    kind: Kind = Field(description="turn (a stored message), fact (extracted) or summary.")
    status: Status = Field(description="active, or superseded by a newer fact (see superseded_by).")
    superseded_by: str | None = Field(default=None, description="The record that replaced this one.")
    text: str = Field(description="The memory text.")
    original_text: str | None = Field(default=None, description="For turns: the message as sent, secrets redacted.")
    role: Role | None = None
    speaker: str | None = None
    source_ids: list[str] = Field(description="Ids of the messages this memory comes from.")
    user_id: str
    agent_id: str | None = None
    session_id: str | None = None
    project: str | None = Field(default=None, description=_PROJECT)
    tier: Tier = Field(description=_TIER)
    topic_id: str | None = None
    event_time: datetime = Field(description="When it happened (UTC).")
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, description=_METADATA)
    expires_at: datetime | None = Field(default=None, description=_EXPIRES_AT)
    llm_call_id: str | None = Field(
        default=None, description="The LLM call that wrote it (facts and summaries; see stats)."
    )


class SearchHit(BaseModel):
    """One search result."""

    id: str
    kind: Kind
    text: str
    score: float = Field(description="Fused relevance; higher is better, comparable within one result list.")
    event_time: datetime
    role: Role | None = None
    speaker: str | None = None
    session_id: str | None = None
    project: str | None = Field(default=None, description=_PROJECT)
    tier: Tier = Field(description=_TIER)
    source_ids: list[str]
    window: int | None = Field(
        default=None, description="With context > 0: index in `windows` of the exchange around this hit."
    )
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, description=_METADATA)
    expires_at: datetime | None = Field(default=None, description=_EXPIRES_AT)


class WindowTurn(BaseModel):
    """One turn of a context window."""

    id: str = Field(description="Record id, for get_memory.")
    source_ids: list[str] = Field(description="The message id of this turn.")
    role: Role | None = None
    speaker: str | None = None
    text: str
    event_time: datetime
    hit: bool = Field(description="Whether this turn is itself one of the hits.")


class ContextWindow(BaseModel):
    """Consecutive turns of one session around one or more hits (overlapping windows merged)."""

    session_id: str | None = None
    turns: list[WindowTurn] = Field(description="In conversation order.")
    hits: list[int] = Field(description="Indexes in `hits` of the hits this window surrounds.")


# -- add_memory, search_memory -----------------------------------------------------------


class AddResult(BaseModel):
    """What add_memory stored."""

    ids: list[str] = Field(description="Record ids, one per message, in order.")
    source_ids: list[str] = Field(description="Message ids (yours, or generated), one per message, in order.")


class SearchResult(BaseModel):
    """Search results, best first."""

    hits: list[SearchHit]
    windows: list[ContextWindow] = Field(
        default_factory=list, description="With context > 0: the turns around the turn hits, best hit first."
    )


# -- recall ------------------------------------------------------------------------------


class RecallBlock(BaseModel):
    """The turns taken from one session (each line citing its message id), or one fact or summary,
    as it appears in `context`."""

    kind: Kind = Field(description="turn for the turns taken from one session, else fact or summary.")
    session_id: str | None = None
    project: str | None = Field(default=None, description=_PROJECT)
    tier: Tier = Field(description=_TIER)
    start_time: datetime
    end_time: datetime
    ids: list[str] = Field(description="Record ids of what the block holds, for get_memory.")
    source_ids: list[str] = Field(description="The message ids it cites.")
    text: str


class RecallResult(BaseModel):
    """Packed context for a prompt, within the token budget."""

    context: str = Field(description="The blocks in time order, ready to put in a prompt.")
    tokens: int = Field(description="cl100k_base tokens of `context`; never more than max_tokens.")
    max_tokens: int
    blocks: list[RecallBlock]
    hits_used: int = Field(description="Ranked hits whose record is in the context.")
    hits_left_out: int = Field(description="Ranked hits that did not fit in the budget.")
    compressed: bool = Field(description="Whether turn texts were compressed with LLMLingua-2 to fit more.")


# -- get_memory, list_memories, delete_memory, forget ------------------------------------


class GetResult(BaseModel):
    """Records found by id; ids not in your scope are reported missing."""

    records: list[MemoryRecord]
    missing: list[str]


class ListResult(BaseModel):
    """One page of records, newest event first."""

    records: list[MemoryRecord]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page.")


class DeleteResult(BaseModel):
    """What delete_memory removed."""

    deleted: list[str]
    missing: list[str]


class ForgetResult(BaseModel):
    """What forget removed."""

    deleted_count: int


# -- flush_memory ------------------------------------------------------------------------


class SpendEstimate(BaseModel):
    """What a run would cost: LLM calls, tokens, and the price table's estimate of their cost."""

    llm_calls: int
    prompt_tokens: int = Field(description="Counted with the configured tokenizer on the prompts the run would send.")
    completion_tokens: int = Field(description="Expected answer tokens, from this user's earlier calls when known.")
    cost: dict[str, float] = Field(description="By currency; empty when the model is not in the price table.")
    priced_as: str | None = Field(default=None, description="The `<provider>/<model>` whose price was applied.")


class FlushResult(BaseModel):
    """What one flush did (or, in a dry run, would do)."""

    dry_run: bool = False
    extracted_turns: int = Field(description="Turns turned into facts by this flush (a dry run: that it would take).")
    backlog_turns: int = Field(
        default=0, description="Of them, turns stored while no LLM was configured (`backlog`), taken oldest first."
    )
    facts: int = Field(description="Facts written.")
    llm_calls: int = Field(description="Extraction calls made (one per batch of topic segments).")
    pending_turns: int = Field(description="Turns still waiting for extraction.")
    pending_tokens: int = Field(description="Their tokens.")
    error: str | None = Field(default=None, description="Why extraction stopped early; the turns stay pending.")
    cancelled: bool = Field(default=False, description=_CANCELLED)
    estimate: SpendEstimate | None = Field(
        default=None, description="A dry run: the calls, tokens and cost it would take."
    )


# -- consolidate, memory_history ---------------------------------------------------------


class ConsolidationChange(BaseModel):
    """A change a run made, or would make in a dry run."""

    action: Literal["update", "delete"]
    target_id: str = Field(description="The older fact, superseded by this change.")
    target_text: str
    new_id: str = Field(description="update: the new version's id; delete: the newer fact that wins.")
    new_text: str
    by_ids: list[str]
    reason: str


class HistoryEntry(ConsolidationChange):
    """One change in a fact's history: the change, when it was made and by which LLM call."""

    time: str = Field(description="When the change was made (UTC, ISO 8601).")
    llm_call_id: str = Field(description="The LLM call that decided it (see stats).")


class HistoryResult(BaseModel):
    """Every version of a memory and the changes between them."""

    id: str = Field(description="The record asked about.")
    versions: list[MemoryRecord] = Field(description="Every version, oldest first; superseded ones say by what.")
    changes: list[HistoryEntry] = Field(description="What changed, when, why and on which LLM call; oldest first.")


class ConsolidateResult(BaseModel):
    """What a consolidation run did (or, in a dry run, would do)."""

    dry_run: bool
    users: int = Field(description="Users whose facts were checked.")
    busy_users: int = Field(default=0, description="Users skipped: another run (or replica) is consolidating them.")
    checked_facts: int = Field(description="Newer facts checked against older ones.")
    targets: int = Field(description="Older facts sent to the LLM for a decision.")
    llm_calls: int
    updated: int = Field(description="Older facts replaced by a merged version.")
    superseded: int = Field(description="Older facts contradicted by a newer one.")
    ignored: int
    changes: list[ConsolidationChange] = Field(description=f"The changes, at most {MAX_REPORTED_CHANGES}.")
    error: str | None = Field(default=None, description="Why the run stopped early; finished users stay done.")
    cancelled: bool = Field(default=False, description=_CANCELLED)
    undecided_targets: int = Field(
        default=0, description="Of `targets`, those a cancelled run left undecided; a later run decides them."
    )
    users_left: int = Field(default=0, description="Of `users`, those a cancelled run never reached.")
    estimate: SpendEstimate | None = Field(
        default=None,
        description="A dry run: what it spent deciding, which a real run spends again (the same calls).",
    )


# -- summarize ---------------------------------------------------------------------------


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
    """What summarize wrote (or, in a dry run, would write)."""

    dry_run: bool = False
    summaries: list[SummaryInfo]
    llm_calls: int
    error: str | None = Field(default=None, description="Why some windows were not summarized.")
    cancelled: bool = Field(default=False, description=_CANCELLED)
    windows_left: int = Field(
        default=0, description="Windows a cancelled run left unsummarized; summarizing again writes them."
    )
    windows: int | None = Field(default=None, description="A dry run: the windows it would summarize.")
    estimate: SpendEstimate | None = Field(
        default=None, description="A dry run: the calls, tokens and cost it would take."
    )


# -- compress ----------------------------------------------------------------------------


class CompressResult(BaseModel):
    """Compressed text and what it saved."""

    compressed_text: str
    original_tokens: int
    compressed_tokens: int
    ratio: float = Field(description="compressed_tokens / original_tokens.")
    model: str
    device: str
    milliseconds: float


# -- stats -------------------------------------------------------------------------------


class RecordCounts(BaseModel):
    """Records of one kind, by status."""

    kind: Kind
    total: int
    active: int
    superseded: int
    deleted: int


class CompressionCounts(BaseModel):
    """Turns stored one way, with their tokens."""

    compression: str = Field(
        description="applied, or why not: short, no_gain, disabled, unavailable, not_extracted; deferred: waiting for "
        "its buffer's flush to compress it (loading: stored by an earlier version while the model loaded)."
    )
    turns: int
    tokens_original: int
    tokens_compressed: int


class TurnStats(BaseModel):
    """Stored messages: where they are in the pipeline, and what compression saved."""

    pending: int = Field(description="Waiting for extraction.")
    extracted: int = Field(description="Turned into facts.")
    skipped: int = Field(description="Kept as memories only (a role that feeds no extraction, or no LLM).")
    tokens_original: int = Field(description="Tokens of the messages as sent.")
    tokens_compressed: int = Field(description="Tokens of what is indexed and sent to extraction.")
    tokens_saved: int
    by_compression: list[CompressionCounts]


class RedactionStats(BaseModel):
    """Secrets taken out of stored messages before anything was kept (LIGHTMEM_REDACTION_ENABLED)."""

    turns: int = Field(description="Stored messages that held at least one secret.")
    secrets: int = Field(description="Secrets replaced by [REDACTED:<kind>].")
    by_kind: dict[str, int] = Field(description="Secrets by kind, e.g. sk_api_key, aws_access_key_id, password.")


class LLMUsage(BaseModel):
    """LLM calls of one purpose (or all), with the tokens the API reported."""

    purpose: str = Field(description="extraction, update (consolidation), summary, or all.")
    calls: int
    ok: int
    failed: int
    attempts: int = Field(description="HTTP requests, retries included.")
    prompt_tokens: int = Field(description="Input tokens, cache hits included.")
    cached_tokens: int = Field(description="Input tokens the provider served from its cache.")
    completion_tokens: int
    cost: dict[str, float] = Field(description="Estimated cost by currency (ISO 4217); unpriced models left out.")


class Counterfactual(BaseModel):
    """The same traffic done another way: an estimate (see the README's cost accounting)."""

    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: dict[str, float] = Field(description="Estimated cost by currency (ISO 4217).")


class AppliedPrice(BaseModel):
    """A price the estimate used, per 1M tokens."""

    model: str = Field(description="<provider>/<model> as the calls were made.")
    currency: str
    input_cache_miss: float
    input_cache_hit: float
    output: float


class CostReport(BaseModel):
    """Estimated cost of the scope's LLM calls, and of the same traffic without LightMem's savings."""

    actual: dict[str, float] = Field(description="Estimated cost by currency (ISO 4217).")
    without_compression: Counterfactual = Field(description="The same calls with the extracted turns uncompressed.")
    one_call_per_add: Counterfactual = Field(
        description="No batching or compression: one extraction call per add, system prompt repeated (mem0's way)."
    )
    prices: list[AppliedPrice]
    unpriced_models: list[str] = Field(
        description="<provider>/<model> with calls but no price: set LIGHTMEM_PRICE_TABLE to include them."
    )


class BudgetStatus(BaseModel):
    """Today's LLM spend against the daily token budgets (LIGHTMEM_BUDGET_*), and whether work waits."""

    day: str = Field(description="The UTC day the figures cover.")
    user_tokens: int = Field(description="Tokens this user's LLM calls used today.")
    user_limit: int = Field(description="LIGHTMEM_BUDGET_USER_TOKENS_PER_DAY; 0: no limit.")
    total_tokens: int | None = Field(
        description="Tokens every user's calls used today; null when no server-wide budget is set (not counted)."
    )
    total_limit: int = Field(description="LIGHTMEM_BUDGET_TOKENS_PER_DAY; 0: no limit.")
    waiting: bool = Field(description="Whether extraction and sleep-time work wait for the budget.")
    reason: str | None = Field(default=None, description="Why they wait; turns stay pending and searchable.")
    resumes_at: str | None = Field(default=None, description="When the budget renews (UTC midnight).")


class StatsResult(BaseModel):
    """What a scope holds and what its LLM calls cost."""

    user_id: str
    agent_id: str | None
    session_id: str | None
    records: list[RecordCounts]
    turns: TurnStats
    redactions: RedactionStats
    llm: list[LLMUsage] = Field(description="By purpose.")
    llm_total: LLMUsage
    cost: CostReport
    budget: BudgetStatus | None = Field(
        default=None, description="Today's spend against the daily budgets; null when no budget is set."
    )
    expired_purged: int = Field(
        default=0, description="Expired memories the sleep-time job has deleted (add_memory's ttl / expires_at)."
    )
    expired_pending: int = Field(
        default=0, description="Expired memories, hidden already, that the sleep-time job has yet to delete."
    )


# -- browsing ----------------------------------------------------------------------------


class LLMCallInfo(BaseModel):
    """One LLM call of the usage ledger: what it was for, how it ended and what it cost."""

    id: str = Field(description="The call id, as a fact's or summary's llm_call_id names it.")
    purpose: str = Field(description="extraction, update (consolidation) or summary.")
    model: str = Field(description="The model the requests named.")
    time: datetime = Field(description="When the call started (UTC).")
    ok: bool = Field(description="Whether it got a usable answer.")
    attempts: int = Field(description="HTTP requests, retries included.")
    prompt_tokens: int = Field(description="Input tokens, cache hits included.")
    cached_tokens: int = Field(description="Input tokens the provider served from its cache.")
    completion_tokens: int
    cost: dict[str, float] = Field(description="Estimated cost by currency (ISO 4217); {} when the model is unpriced.")


class ActivityBucket(BaseModel):
    """The records of one day or week, by kind."""

    start: datetime = Field(description="Where the bucket starts (UTC midnight; a Monday for a week).")
    label: str = Field(description="The day (2026-11-30) or the ISO week (2026-W49).")
    counts: dict[str, int] = Field(description="Records by kind (turn, fact, summary), zeros included.")


class ActivityResult(BaseModel):
    """How many records a scope gained per day or week, up to its newest record."""

    bucket: BucketSize
    buckets: list[ActivityBucket] = Field(
        description="Consecutive buckets, oldest first, the last one holding the newest record; empty when the "
        "scope holds no records."
    )
    total: int = Field(description="The records the buckets count, all kinds together.")


# -- export / import (command line) ------------------------------------------------------


class ExportResult(BaseModel):
    """What an export wrote."""

    points: int
    by_kind: dict[str, int]
    vectors: bool


class ExportPage(BaseModel):
    """One page of a scope's export: its lines, each without the newline that ends it in a file."""

    header: str | None = Field(description="The export's header line: on the first page (no `after`) only.")
    lines: list[str] = Field(description="Point lines, in id order.")
    next: str | None = Field(description="The id to pass as `after` for the next page; null on the last page.")


class ImportResult(BaseModel):
    """What an import wrote."""

    points: int
    by_kind: dict[str, int]
    embedded: int = Field(description="Points whose dense vector was computed here.")
    vectors_kept: int = Field(description="Points whose exported dense vector was written as it was.")
    copied: int = Field(
        default=0,
        description="Points whose scope was edited in the file: written as copies under that scope's ids.",
    )
    cancelled: bool = Field(default=False, description=_CANCELLED)
    points_left: int = Field(
        default=0,
        description="Points of the file a cancelled import did not write; importing the same file again writes "
        "them (and the others again, unchanged).",
    )
