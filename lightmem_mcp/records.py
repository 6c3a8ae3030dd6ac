"""The record layer: what is stored, and the only code that names the fields of a stored payload.

Scopes, roles and kinds; the store-neutral filter; points as written and as read; record ids; the
record of an LLM call; and a typed view per record kind (`Turn`, `Fact`, `Summary`, `LedgerEntry`,
`SummaryMark`) with its builder, its field updates and one sort key. Stages read and write records
through these; docs/architecture.md shows where the layer sits. What MCP callers send and what comes
back is in `lightmem_mcp.api`.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Annotated, ClassVar, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field

from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.timestamps import ACCEPTED, MAX_TIME_CHARS, from_epoch, parse_timestamp, to_epoch

Role = Literal["user", "assistant", "system", "tool"]
Kind = Literal["turn", "fact", "summary"]
# Where a record comes from: a project, or the user's global tier (no project).
Tier = Literal["project", "global"]
# "deleted" is never stored (delete and forget remove records outright); it stays in the published
# schema of get_memory / list_memories results, which clients may validate against.
Status = Literal["active", "superseded", "deleted"]

KINDS: tuple[Kind, ...] = ("turn", "fact", "summary")

# Longest user, agent, session, message or record id, and speaker name.
MAX_ID_CHARS = 256
# Most speaker names one search filter may list.
MAX_SPEAKERS = 100

ScopeId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f]+$")]
Speaker = Annotated[str, Field(max_length=MAX_ID_CHARS)]

# The caller's metadata on a memory: string keys to scalar values, the same on every message of one
# add_memory call, handed down to the facts and summaries made from it (see `inherited`), and matched
# by equality in search, recall and list filters.
MetadataValue = str | int | float | bool
MAX_METADATA_KEYS = 16
# Letters, digits, _ and -, starting with a letter or _; no dots, which would read as payload paths.
METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
MAX_METADATA_VALUE_CHARS = 256
# The whole mapping as compact JSON (UTF-8).
MAX_METADATA_BYTES = 4096
# A memory's lifetime given as `ttl`: whole seconds, from one second to 100 years of 365.25 days.
MIN_TTL_S = 1
MAX_TTL_S = 3_155_760_000


def is_blank(text: str) -> bool:
    """Whether text shows nothing: only whitespace, control and format characters (zero-width space, BOM...)."""
    # str.strip() keeps U+200B, U+2060, U+FEFF and the other format characters (category Cf).
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text)


# The project of the user's global tier: memories that belong to no project (every record stored
# before projects existed is in it).
GLOBAL = ""


@dataclass(frozen=True)
class Scope:
    """Whose memory: a user, optionally narrowed to one agent and one session, and to a project."""

    user_id: str = "default"
    agent_id: str | None = None
    session_id: str | None = None
    # None: no project narrowing (reads see every tier, writes go to the global tier); GLOBAL: the
    # global tier alone, for reads and writes; a project id: writes go to that project, reads see
    # that project and the global tier.
    project: str | None = None

    @property
    def stored(self) -> Scope:
        """The scope as its records carry it: GLOBAL and None both write to the global tier (None)."""
        return self if self.project != GLOBAL else replace(self, project=None)


@dataclass(frozen=True)
class RecordFilter:
    """Store-neutral filter. `user_id` is required: no query can run without a user scope."""

    user_id: str
    agent_id: str | None = None
    session_id: str | None = None
    kinds: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    speakers: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    since_ts: float | None = None
    until_ts: float | None = None
    ids: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    batch_turn_ids: tuple[str, ...] = ()
    superseded_by: tuple[str, ...] = ()
    # Only records whose lexical vector holds this term id (BM25 document frequencies).
    term: int | None = None
    # True: agent_id / session_id of None mean "unset" rather than "any" (the buffer of one scope).
    exact_scope: bool = False
    # The tier rule (see `Scope.project`): None: any tier (the global tier alone in an exact scope);
    # GLOBAL: the global tier; a project id: that project and the global tier.
    project: str | None = None
    # True: a project id means that project alone, without the global tier (as in an exact scope).
    exact_project: bool = False
    # Only records whose caller metadata holds every one of these pairs (`metadata_pairs` of a mapping).
    metadata_pairs: tuple[str, ...] = ()
    # Only records alive at this time (epoch seconds): no expiry, or one after it. None: expired
    # records too (the purge, export, accounting, the pipeline's own bookkeeping writes).
    live_at: float | None = None
    # Only records expired at this time (epoch seconds): an expiry at or before it (the purge).
    expired_at: float | None = None

    @classmethod
    def owned_by(cls, scope: Scope) -> RecordFilter:
        """What belongs to the scope, as forget deletes it and export writes it: with a project, that
        project's records alone (not the global tier it reads); with GLOBAL, the global tier's; with
        None, every tier's."""
        return cls(scope.user_id, scope.agent_id, scope.session_id, project=scope.project, exact_project=True)

    def equal(self) -> list[tuple[str, str]]:
        """Fields that must hold exactly this value: the user, and agent / session when given."""
        pairs = [("user_id", self.user_id), ("agent_id", self.agent_id), ("session_id", self.session_id)]
        return [(key, value) for key, value in pairs if value is not None]

    def unset(self) -> list[str]:
        """Fields that must be empty: agent / session left out of an exact scope."""
        if not self.exact_scope:
            return []
        return [key for key, value in (("agent_id", self.agent_id), ("session_id", self.session_id)) if value is None]

    def tiers(self) -> tuple[tuple[str, ...], bool] | None:
        """The project condition: the projects a record may belong to, and whether the global tier (no
        project) matches too; None when every tier matches."""
        if self.project is None:
            return ((), True) if self.exact_scope else None
        if self.project == GLOBAL:
            return (), True
        return (self.project,), not (self.exact_scope or self.exact_project)

    def any_of(self) -> list[tuple[str, list[str]]]:
        """Fields that must hold one of several values."""
        fields = (
            ("kind", self.kinds),
            ("role", self.roles),
            ("speaker", self.speakers),
            ("status", self.statuses),
            ("stage", self.stages),
            ("batch_turn_ids", self.batch_turn_ids),
            ("superseded_by", self.superseded_by),
        )
        return [(key, list(values)) for key, values in fields if values]

    def all_of(self) -> list[tuple[str, str]]:
        """(field, value) pairs where a keyword list field must hold every value: the metadata pairs."""
        return [(METADATA_PAIRS_FIELD, pair) for pair in self.metadata_pairs]


@dataclass(frozen=True)
class SparseVector:
    """Lexical vector: token ids and weights."""

    indices: list[int]
    values: list[float]

    def plus(self, other: SparseVector, weight: float) -> SparseVector:
        """This vector plus `weight` times the other."""
        summed = dict(zip(self.indices, self.values, strict=True))
        for index, value in zip(other.indices, other.values, strict=True):
            summed[index] = summed.get(index, 0.0) + weight * value
        return SparseVector(list(summed), list(summed.values()))


@dataclass
class StoredPoint:
    """A record as handed to a vector store; ledger entries (LLM calls) carry no vectors."""

    id: str
    dense: list[float] | None
    sparse: SparseVector | None
    payload: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class FoundPoint:
    """A record as a vector store returns it."""

    id: str
    payload: dict[str, object]
    score: float = 0.0
    dense: list[float] | None = None


# Record ids are derived from scope and content keys, so re-sending or re-extracting never duplicates.
_ID_NAMESPACE = uuid.UUID("6f1c2a44-5f0e-4d4e-9a57-3c1f7d0e8b21")


def record_id(scope: Scope, kind: str, key: str) -> str:
    """The deterministic id of a record of `kind` identified by `key` within `scope`."""
    parts = [scope.user_id, scope.agent_id or "", scope.session_id or "", kind, key]
    if scope.project:  # the global tier hashes as before projects existed: every stored id stays
        parts.append(scope.project)
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(parts)))


# -- LLM calls ----------------------------------------------------------------------------------


class Usage(BaseModel):
    """Tokens one or more attempts cost, as the API reported them."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


class LLMCall(BaseModel):
    """One logical LLM call, all its attempts together: what it cost and how it ended."""

    model_config = ConfigDict(frozen=True)

    call_id: str
    purpose: str
    provider: str
    model: str
    usage: Usage
    attempts: int
    seconds: float
    started_at: datetime
    ok: bool
    error: str | None = None
    # The scope the call was made for, and the turns it took (extraction): what the ledger records.
    scope: Scope | None = None
    turns: int = 0


# -- stored records ----------------------------------------------------------------------------
#
# Every record is one store point whose payload holds its fields. The classes below are the only
# code that names payload fields: each kind has its typed view (reading), its builder (`new`) and
# the field updates the stages apply (`set_payload`). Stored payloads are read tolerantly, so a
# store written by an older lightmem-mcp reads the same.

LEDGER_KIND = "llm_call"
# The payload field of a record's project; absent in the global tier.
PROJECT_FIELD = "project"
# The payload field of speaker names, read as a facet to tell whether a query names one.
SPEAKER_FIELD = "speaker"
# The caller's metadata as given; the same pairs as an indexed keyword list that filters match (see
# `metadata_pair`); and the expiry, as ISO 8601 like `event_time` and in epoch seconds for range filters.
METADATA_FIELD = "metadata"
METADATA_PAIRS_FIELD = "metadata_pairs"
EXPIRES_AT_FIELD = "expires_at"
EXPIRES_FIELD = "expires_ts"
_CALLER_FIELDS = (METADATA_FIELD, METADATA_PAIRS_FIELD, EXPIRES_AT_FIELD, EXPIRES_FIELD)
PROGRESS_KIND = "progress"

# Stage of a turn: waiting for extraction, turned into facts, or kept as a memory only.
TurnStage = Literal["pending", "extracted", "skipped"]


_KIND_NAMES: dict[str, Kind] = {kind: kind for kind in get_args(Kind)}
_ROLE_NAMES: dict[str, Role] = {role: role for role in get_args(Role)}
_STATUS_NAMES: dict[str, Status] = {status: status for status in get_args(Status)}


def _text(payload: Mapping[str, object], key: str) -> str | None:
    value = payload.get(key)
    return None if value is None else str(value)


def _number(payload: Mapping[str, object], key: str) -> float:
    value = payload.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _count(payload: Mapping[str, object], key: str) -> int:
    value = payload.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _strings(payload: Mapping[str, object], key: str) -> list[str]:
    value = payload.get(key)
    return [str(item) for item in value] if isinstance(value, list) else []


def _entries(payload: Mapping[str, object], key: str) -> list[dict[str, object]]:
    value = payload.get(key)
    return [dict(item) for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _scope_fields(scope: Scope) -> dict[str, object]:
    fields: dict[str, object] = {"user_id": scope.user_id, "agent_id": scope.agent_id, "session_id": scope.session_id}
    if scope.project:  # written only for a project, so records of the global tier stay as they were
        fields[PROJECT_FIELD] = scope.project
    return fields


def scope_of(payload: Mapping[str, object]) -> Scope:
    """The exact scope a stored point belongs to (project None: the global tier)."""
    return Scope(
        str(payload.get("user_id")),
        _text(payload, "agent_id"),
        _text(payload, "session_id"),
        _text(payload, PROJECT_FIELD) or None,
    )


def kind_of(payload: Mapping[str, object]) -> str:
    """A stored point's kind: turn, fact, summary, or an accounting kind (llm_call, progress)."""
    return str(payload.get("kind"))


# The fields every stored point carries, whatever its kind.
_POINT_FIELDS = ("user_id", "kind")
# The fields that hold a memory's words: as sent (a turn), as stored and embedded (every kind), and as
# extraction reads them (a turn compressed by its buffer).
WORD_FIELDS: tuple[str, ...] = ("original_text", "text", "compressed_text")


def missing_field(payload: Mapping[str, object]) -> str | None:
    """The first field every stored point needs (`user_id`, then `kind`) that `payload` lacks or leaves
    blank; None when it has both."""
    for name in _POINT_FIELDS:
        value = payload.get(name)
        if not isinstance(value, str) or not value.strip():
            return name
    return None


def has_words(payload: Mapping[str, object]) -> bool:
    """Whether `payload` holds the words a memory is embedded from: a `text` that is not blank."""
    value = payload.get("text")
    return isinstance(value, str) and bool(value.strip())


# When a record happened, then when it was stored, then its place in its add_memory call, then its
# id: the one order of records (conversation order for turns).
Order = tuple[float, float, int, str]


# -- the caller's metadata and expiry ---------------------------------------------------------


def check_metadata(metadata: object, field: str = "metadata") -> dict[str, MetadataValue]:
    """The caller's metadata (None: none), checked against the limits above; raises `InvalidInput`
    naming the field (`metadata.<key>` for a key's problem) and the fix."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput(field, 'must be an object of key: value pairs, e.g. {"project": "apollo"}')
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(field, f"{len(metadata)} keys; at most {MAX_METADATA_KEYS}: keep the ones you filter on")
    checked: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not METADATA_KEY.fullmatch(key):
            shown = str(key) if len(str(key)) <= 64 else str(key)[:64] + "…"
            raise InvalidInput(
                f"{field}.{shown}",
                "not a metadata key: use 1 to 64 letters, digits, _ or -, starting with a letter or _ (no dots)",
            )
        checked[key] = _metadata_value(value, f"{field}.{key}")
    size = len(json.dumps(checked, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(
            field, f"{size} bytes as JSON; at most {MAX_METADATA_BYTES}: shorten the values or drop keys"
        )
    return checked


def _metadata_value(value: object, field: str) -> MetadataValue:
    if value is None:
        raise InvalidInput(field, "null: give a string, number or boolean, or leave the key out")
    if isinstance(value, str):
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidInput(field, f"{len(value)} characters; at most {MAX_METADATA_VALUE_CHARS}: shorten it")
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:  # stores keep 64-bit integers; a larger one would come back a float
            raise InvalidInput(field, f"{value} is out of range: integers are 64-bit; give it as a string")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(field, f"{value!r} is not a finite number: give a number, a string or a boolean")
        return value
    raise InvalidInput(
        field, f"a {type(value).__name__}: values are strings, numbers or booleans (no lists, objects or nesting)"
    )


def metadata_pairs(metadata: Mapping[str, MetadataValue]) -> tuple[str, ...]:
    """The indexed form of checked metadata (see `metadata_pair`), in key order."""
    return tuple(metadata_pair(key, value) for key, value in sorted(metadata.items()))


def metadata_pair(key: str, value: MetadataValue) -> str:
    """How one pair is stored for filtering: `key=value`, the value as JSON, a whole number as an integer
    (2 and 2.0 match; "2" and true do not)."""
    # A keyword list rather than nested `metadata.<key>` conditions: one index serves every key (a
    # nested key cannot be indexed before it is known, and a Qdrant server in strict mode refuses
    # filters on unindexed fields), and equality keeps its JSON type on every store: Qdrant's
    # MatchValue takes no float, and the embedded Qdrant Edge matches no boolean under a nested key.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def expiry(expires_at: str | None, ttl: int | None, at: datetime) -> datetime | None:
    """When memories stored at `at` with `expires_at` (a time) or `ttl` (seconds from `at`) expire; None
    when neither is given. Raises `InvalidInput` naming the field and the fix."""
    if expires_at is not None and ttl is not None:
        raise InvalidInput("ttl", "given together with expires_at: give one of the two")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL_S <= ttl <= MAX_TTL_S:
            raise InvalidInput(
                "ttl", f"{ttl!r} is out of range: give whole seconds from {MIN_TTL_S} to {MAX_TTL_S} (100 years)"
            )
        return at + timedelta(seconds=ttl)
    if expires_at is None:
        return None
    if len(expires_at) > MAX_TIME_CHARS:
        raise InvalidInput("expires_at", f"longer than {MAX_TIME_CHARS} characters: not a time; use {ACCEPTED}")
    try:
        moment = parse_timestamp(expires_at)
    except ValueError:
        raise InvalidInput("expires_at", f"{expires_at!r} is not a time; use {ACCEPTED}") from None
    if moment <= at:
        raise InvalidInput(
            "expires_at",
            f"{moment.isoformat()} is not in the future (now {at.isoformat()}): give a later time, or leave "
            "it out for memories that never expire",
        )
    return moment


def caller_fields(metadata: Mapping[str, MetadataValue], expires_ts: float | None) -> dict[str, object]:
    """The payload fields of checked metadata and an expiry; none for neither, so that such a record is
    stored as earlier versions stored every record."""
    fields: dict[str, object] = {}
    if metadata:
        fields[METADATA_FIELD] = dict(metadata)
        fields[METADATA_PAIRS_FIELD] = list(metadata_pairs(metadata))
    if expires_ts is not None:
        fields[EXPIRES_AT_FIELD] = from_epoch(expires_ts).isoformat()
        fields[EXPIRES_FIELD] = expires_ts
    return fields


def with_caller_fields(
    payload: Mapping[str, object], metadata: Mapping[str, MetadataValue], expires_ts: float | None
) -> dict[str, object]:
    """`payload` with its metadata and expiry replaced (see `caller_fields`)."""
    kept = {key: value for key, value in payload.items() if key not in _CALLER_FIELDS}
    return {**kept, **caller_fields(metadata, expires_ts)}


@dataclass(frozen=True)
class Lineage:
    """What a record hands down to the records made from it (see `inherited`)."""

    order: Order
    metadata: tuple[tuple[str, MetadataValue], ...] = ()
    expires_ts: float | None = None


def inherited(sources: Sequence[Lineage]) -> dict[str, object]:
    """The derivation rule, defined here only: a record made from others (a fact from the turns it was
    extracted from, a consolidated version from the older fact and the newer ones merged into it, a
    summary from the records it covers) carries the union of their metadata, the newest source (by
    event time) winning a key on which they differ; and it expires when all its sources have, at the
    latest of their expiries: never, when any source never expires. Returns its payload fields (see
    `caller_fields`)."""
    metadata: dict[str, MetadataValue] = {}
    for source in sorted(sources, key=lambda s: s.order):
        metadata.update(source.metadata)
    expiries = [source.expires_ts for source in sources]
    latest = max((e for e in expiries if e is not None), default=None)
    return caller_fields(metadata, None if None in expiries else latest)


@dataclass(frozen=True)
class Record:
    """A stored turn, fact or summary, as read: typed fields over its payload, with the score and
    dense vector of the read when asked for."""

    id: str
    payload: Mapping[str, object]
    score: float = 0.0
    dense: list[float] | None = None

    @classmethod
    def read(cls, point: FoundPoint) -> Self:
        """The view of a point the store returned."""
        return cls(point.id, point.payload, point.score, point.dense)

    @property
    def kind(self) -> Kind:
        """turn, fact or summary."""
        return _KIND_NAMES[kind_of(self.payload)]

    @property
    def scope(self) -> Scope:
        """The exact scope it was stored in."""
        return scope_of(self.payload)

    @property
    def tier(self) -> Tier:
        """project, or global (no project: every record stored before projects existed)."""
        return "project" if self.scope.project else "global"

    @property
    def text(self) -> str:
        """What the memory says (a turn: as stored, compressed or not)."""
        return str(self.payload.get("text") or "")

    @property
    def status(self) -> Status:
        """active, or superseded by a newer fact."""
        return _STATUS_NAMES.get(str(self.payload.get("status")), "active")

    @property
    def superseded_by(self) -> str | None:
        """The record that replaced this one."""
        return _text(self.payload, "superseded_by")

    @property
    def role(self) -> Role | None:
        """Who spoke: user, assistant, system or tool (a fact: when all its sources agree)."""
        return _ROLE_NAMES.get(str(self.payload.get("role")))

    @property
    def speaker(self) -> str | None:
        """The speaker's name, when one was given."""
        return _text(self.payload, "speaker")

    @property
    def label(self) -> str:
        """Who said it: the speaker's name when given, else the role."""
        return self.speaker or self.role or ""

    @property
    def source_ids(self) -> list[str]:
        """The message ids it comes from."""
        return _strings(self.payload, "source_ids")

    @property
    def topic_id(self) -> str | None:
        """The topic segment it was extracted in."""
        return _text(self.payload, "topic_id")

    @property
    def event_time(self) -> str:
        """When it happened, as stored (ISO 8601)."""
        return str(self.payload.get("event_time") or "")

    @property
    def event_ts(self) -> float:
        """When it happened, in epoch seconds."""
        return _number(self.payload, "event_ts")

    @property
    def created_ts(self) -> float:
        """When it was stored, in epoch seconds."""
        return _number(self.payload, "created_ts")

    @property
    def updated_ts(self) -> float:
        """When it last changed, in epoch seconds."""
        return _number(self.payload, "updated_ts")

    @property
    def position(self) -> int:
        """Its place among the messages of one add_memory call."""
        return _count(self.payload, "position")

    @property
    def order(self) -> Order:
        """The sort key of every record kind (see `Order`)."""
        return (self.event_ts, self.created_ts, self.position, self.id)

    @property
    def history(self) -> list[dict[str, object]]:
        """What changed it: consolidation changes, re-summarizations; oldest first."""
        return _entries(self.payload, "history")

    @property
    def metadata(self) -> dict[str, MetadataValue]:
        """The caller's metadata (a fact's or summary's: inherited from its sources); {} when none."""
        value = self.payload.get(METADATA_FIELD)
        if not isinstance(value, dict):
            return {}
        return {str(key): item for key, item in value.items() if isinstance(item, str | int | float)}

    @property
    def expires_ts(self) -> float | None:
        """When it expires, in epoch seconds; None: never."""
        value = self.payload.get(EXPIRES_FIELD)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def expires_at(self) -> datetime | None:
        """When it expires (UTC); None: never."""
        expires = self.expires_ts
        return None if expires is None else from_epoch(expires)

    def expired(self, at: float) -> bool:
        """Whether it has expired at `at` (epoch seconds)."""
        expires = self.expires_ts
        return expires is not None and expires <= at

    @property
    def llm_call_id(self) -> str | None:
        """The LLM call that wrote it: a fact's extraction, a merged version's consolidation, an LLM
        summary's call; None for a turn and an extractive summary."""
        return _text(self.payload, "llm_call_id") or None

    @property
    def lineage(self) -> Lineage:
        """What it hands down to the records made from it."""
        return Lineage(self.order, tuple(self.metadata.items()), self.expires_ts)

    @property
    def changes(self) -> list[dict[str, object]]:
        """The consolidation changes (update, delete) in its history, as stored."""
        return [entry for entry in self.history if entry.get("action") in ("update", "delete")]


def _common(
    scope: Scope,
    kind: Kind,
    text: str,
    *,
    role: str | None,
    speaker: str | None,
    source_ids: Sequence[str],
    event_time: datetime,
    stored_at: datetime,
) -> dict[str, object]:
    """The stored fields every memory kind shares."""
    return {
        **_scope_fields(scope),
        "kind": kind,
        "status": "active",
        "text": text,
        "role": role,
        "speaker": speaker,
        "source_ids": list(source_ids),
        "topic_id": None,
        "event_time": event_time.isoformat(),
        "event_ts": event_time.timestamp(),
        "created_ts": stored_at.timestamp(),
        "updated_ts": stored_at.timestamp(),
    }


@dataclass(frozen=True)
class Turn(Record):
    """One stored message."""

    @classmethod
    def new(
        cls,
        scope: Scope,
        message_id: str,
        text: str,
        *,
        original_text: str,
        role: str,
        speaker: str | None,
        event_time: datetime,
        stored_at: datetime,
        position: int,
        stage: TurnStage,
        tokens_original: int,
        tokens_compressed: int,
        compression: str,
        redactions: Mapping[str, int],
        metadata: Mapping[str, MetadataValue] | None = None,
        expires_at: datetime | None = None,
    ) -> Turn:
        """A message as stored by add_memory (its id derives from the scope and message id), with the
        caller's checked metadata and expiry."""
        payload = _common(
            scope,
            "turn",
            text,
            role=role,
            speaker=speaker,
            source_ids=[message_id],
            event_time=event_time,
            stored_at=stored_at,
        )
        payload.update(
            original_text=original_text,
            tokens_original=tokens_original,
            tokens_compressed=tokens_compressed,
            compression=compression,
            stage=stage,
            position=position,
            redactions=dict(redactions),
        )
        payload.update(caller_fields(metadata or {}, None if expires_at is None else to_epoch(expires_at)))
        return cls(record_id(scope, "turn", message_id), payload)

    @staticmethod
    def key(source_ids: Sequence[str]) -> str:
        """What a turn's id derives from: its message id."""
        return source_ids[0]

    @property
    def message_id(self) -> str:
        """The caller's id of the message."""
        return (self.source_ids or [""])[0]

    @property
    def original_text(self) -> str | None:
        """The message as sent (secrets redacted)."""
        return _text(self.payload, "original_text")

    @property
    def said(self) -> str:
        """The words as the person wrote them (before any compression)."""
        return self.original_text or self.text

    @property
    def for_extraction(self) -> str:
        """What extraction and segmentation read: the compressed words once the buffer has compressed
        the turn, else its text (a turn stored before compression moved off the write path holds
        its compressed words as its text)."""
        return _text(self.payload, "compressed_text") or self.text

    @property
    def stage(self) -> str:
        """pending, extracted or skipped (see `TurnStage`)."""
        return str(self.payload.get("stage") or "skipped")

    @property
    def tokens_original(self) -> int:
        """Tokens of the message as sent."""
        return _count(self.payload, "tokens_original")

    @property
    def tokens_compressed(self) -> int:
        """Tokens of what extraction is sent."""
        return _count(self.payload, "tokens_compressed")

    @property
    def compression(self) -> str:
        """applied, or why not (short, no_gain, disabled, unavailable, not_extracted), or `deferred`: to
        be compressed when its buffer is flushed (`loading` on turns stored by older versions)."""
        return str(self.payload.get("compression") or "unknown")

    @property
    def redactions(self) -> dict[str, int]:
        """Secrets taken out of the message, by kind."""
        value = self.payload.get("redactions")
        return {str(kind): _count(value, kind) for kind in value} if isinstance(value, dict) else {}

    @property
    def context(self) -> list[str]:
        """The turns said just before it, as lexically indexed with it."""
        return _strings(self.payload, "context")

    @property
    def add_key(self) -> tuple[Scope, float]:
        """The add_memory call it was stored by: its turns share their scope and stored time."""
        return self.scope, self.created_ts

    def with_context(self, lines: Sequence[str]) -> Turn:
        """The same turn with the given earlier turns as its `context`."""
        return replace(self, payload={**self.payload, "context": list(lines)})

    @staticmethod
    def topic(topic_id: str) -> dict[str, object]:
        """The fields set on the turns of one topic segment."""
        return {"topic_id": topic_id}

    @staticmethod
    def compressed(text: str | None, tokens: int, how: str) -> dict[str, object]:
        """The fields set on a deferred turn once the buffer has compressed it: the words extraction
        reads (None: the text as it is), their token count, and how (applied, or why not)."""
        fields: dict[str, object] = {"tokens_compressed": tokens, "compression": how}
        if text is not None:
            fields["compressed_text"] = text
        return fields

    @staticmethod
    def requeued(compression: str) -> dict[str, object]:
        """The fields set on a skipped turn taken into extraction (the backlog): pending again, and how
        its words reach extraction (`deferred` for one that was never going to be compressed)."""
        return {"stage": "pending", "compression": compression}

    @staticmethod
    def extracted(at: float) -> dict[str, object]:
        """The fields set on turns once their facts are written."""
        return {"stage": "extracted", "extracted_ts": at}


@dataclass(frozen=True)
class Fact(Record):
    """A fact extracted from turns, or a version merged by consolidation."""

    @classmethod
    def new(
        cls,
        scope: Scope,
        text: str,
        *,
        source_ids: Sequence[str],
        role: str | None,
        speaker: str | None,
        event_time: datetime,
        stored_at: datetime,
        topic_id: str | None,
        batch_turn_ids: Sequence[str],
        llm_call_id: str,
        sources: Sequence[Lineage] = (),
    ) -> Fact:
        """A fact as extraction writes it (its id derives from its sources and words), with the metadata
        and expiry its source turns hand down (`sources`, see `inherited`)."""
        payload = _common(
            scope,
            "fact",
            text,
            role=role,
            speaker=speaker,
            source_ids=source_ids,
            event_time=event_time,
            stored_at=stored_at,
        )
        payload.update(
            topic_id=topic_id, batch_turn_ids=list(batch_turn_ids), llm_call_id=llm_call_id, stage="extracted"
        )
        payload.update(inherited(sources))
        return cls(record_id(scope, "fact", cls.key(source_ids, text)), payload)

    @staticmethod
    def key(source_ids: Sequence[str], text: str) -> str:
        """What an extracted fact's id derives from: its sources and its words."""
        return "\x1f".join([*sorted(source_ids), " ".join(text.lower().split())])

    @staticmethod
    def version_key(target_id: str, by_ids: Sequence[str]) -> str:
        """What a merged version's id derives from: the fact it replaces and the facts merged in."""
        return "\x1f".join(["update", target_id, *sorted(by_ids)])

    def version(
        self, version_id: str, text: str, merged: Sequence[Fact], entry: Mapping[str, object], stored_at: datetime
    ) -> Fact:
        """The merged version of this fact: its fields, the new text, every source, at the newest time,
        with the metadata and expiry of this fact and the merged ones (see `inherited`)."""
        newest = max(merged, key=lambda f: f.order)
        source_ids = self.source_ids
        for fact in merged:
            source_ids += [s for s in fact.source_ids if s not in source_ids]
        kept = {key: value for key, value in self.payload.items() if key != "superseded_by"}
        payload = with_caller_fields(kept, {}, None) | inherited([self.lineage, *(f.lineage for f in merged)])
        payload.update(
            text=text,
            status="active",
            stage="consolidated",
            source_ids=source_ids,
            event_time=newest.event_time,
            event_ts=newest.event_ts,
            created_ts=stored_at.timestamp(),
            updated_ts=stored_at.timestamp(),
            batch_turn_ids=[],
            llm_call_id=entry["llm_call_id"],
            supersedes=[self.id],
            history=[*self.history, dict(entry)],
        )
        return Fact(version_id, payload)

    @property
    def supersedes(self) -> list[str]:
        """The facts this version replaced."""
        return _strings(self.payload, "supersedes")

    @staticmethod
    def consolidated(at: float) -> dict[str, object]:
        """The fields set on facts once consolidation has checked them."""
        return {"stage": "consolidated", "consolidated_ts": at}

    def superseded(self, by: str, entry: Mapping[str, object], at: float) -> dict[str, object]:
        """The fields set on this fact when `by` replaces it."""
        return {"status": "superseded", "superseded_by": by, "updated_ts": at, "history": [*self.history, dict(entry)]}


@dataclass(frozen=True)
class Summary(Record):
    """A summary of a window of a scope's memories."""

    @classmethod
    def new(
        cls,
        scope: Scope,
        text: str,
        *,
        window: str,
        window_key: str,
        topic: str | None,
        method: str,
        covered: Sequence[Record],
        llm_call_id: str | None,
        stored_at: datetime,
        previous: Summary | None,
    ) -> Summary:
        """A summary of `covered` (oldest first), with the metadata and expiry they hand down (see
        `inherited`); summarizing a window again replaces it in place, its previous text kept in its
        history."""
        source_ids = list(dict.fromkeys(s for record in covered for s in record.source_ids))
        payload = _common(
            scope,
            "summary",
            text,
            role=None,
            speaker=None,
            source_ids=source_ids,
            event_time=from_epoch(covered[-1].event_ts),
            stored_at=stored_at,
        )
        history: list[dict[str, object]] = []
        if previous is not None:
            history = [
                *previous.history,
                {"action": "resummarize", "time": stored_at.isoformat(), "old_text": previous.text},
            ]
            payload["created_ts"] = previous.created_ts
        payload.update(
            method=method,
            window=window,
            window_key=window_key,
            topic=topic,
            window_start_ts=covered[0].event_ts,
            window_end_ts=covered[-1].event_ts,
            covered_ids=[record.id for record in covered],
            llm_call_id=llm_call_id,
            history=history,
            stage="summarized",
        )
        payload.update(inherited([record.lineage for record in covered]))
        return cls(cls.id_of(scope, window, window_key, topic), payload)

    @property
    def window(self) -> str:
        """What it covers: all, session, day or week."""
        return str(self.payload.get("window") or "all")

    @property
    def window_key(self) -> str:
        """Which one: the session id, the day, the ISO week, or 'all'."""
        return str(self.payload.get("window_key") or "all")

    @property
    def topic(self) -> str | None:
        """The topic it was asked about, if any."""
        return _text(self.payload, "topic")

    @property
    def method(self) -> str:
        """llm, or extractive (no LLM configured)."""
        return str(self.payload.get("method") or "extractive")

    @property
    def window_start_ts(self) -> float:
        """Event time of the earliest memory covered."""
        return _number(self.payload, "window_start_ts")

    @property
    def window_end_ts(self) -> float:
        """Event time of the latest memory covered."""
        return _number(self.payload, "window_end_ts")

    @staticmethod
    def key(window: str, window_key: str, topic: str | None) -> str:
        """What a summary's id derives from: its window and topic."""
        return "\x1f".join([window, window_key, topic or ""])

    @classmethod
    def id_of(cls, scope: Scope, window: str, window_key: str, topic: str | None) -> str:
        """The id of the summary of a window of the scope."""
        return record_id(scope, "summary", cls.key(window, window_key, topic))

    @property
    def covered_ids(self) -> list[str]:
        """The records summarized."""
        return _strings(self.payload, "covered_ids")


# Payload fields that hold other records' ids (source_ids hold message ids, llm_call_id a call id),
# and the fields of a history entry that do.
_REFERENCES = frozenset({"superseded_by", "supersedes", "batch_turn_ids", "covered_ids"})
_HISTORY_REFERENCES = frozenset({"target_id", "new_id", "by_ids"})


def with_references(payload: Mapping[str, object], ref: Callable[[str], str]) -> dict[str, object]:
    """`payload` with every id of another record it holds (superseded_by, supersedes, batch_turn_ids,
    covered_ids, and a history entry's target_id, new_id and by_ids) replaced by `ref` of it."""
    rewritten = {key: _referred(value, ref) if key in _REFERENCES else value for key, value in payload.items()}
    history = payload.get("history")
    if isinstance(history, list):
        rewritten["history"] = [
            {k: _referred(v, ref) if k in _HISTORY_REFERENCES else v for k, v in entry.items()}
            if isinstance(entry, dict)
            else entry
            for entry in history
        ]
    return rewritten


def _referred(value: object, ref: Callable[[str], str]) -> object:
    if isinstance(value, str):
        return ref(value)
    if isinstance(value, list):
        return [ref(v) if isinstance(v, str) else v for v in value]
    return value


def redact_words(
    payload: Mapping[str, object], redact: Callable[[str], tuple[str, Mapping[str, int]]]
) -> tuple[dict[str, object], bool]:
    """`payload` with a memory's words (`WORD_FIELDS`) and a turn's `context` lines passed through `redact`
    (which gives the text with its secrets replaced, and how many of each kind it took out), and the
    secrets its words held added to its `redactions`; True when they held any. Context lines are other
    turns' words: redacted, never counted."""
    redacted = dict(payload)
    found: Counter[str] = Counter()
    for key in WORD_FIELDS:
        value = redacted.get(key)
        if isinstance(value, str):
            text, kinds = redact(value)
            redacted[key] = text
            if not found:  # counted once per message: `text` repeats `original_text` unless compressed
                found.update(kinds)
    context = redacted.get("context")
    if isinstance(context, list):
        redacted["context"] = [redact(line)[0] if isinstance(line, str) else line for line in context]
    if not found:
        return redacted, False
    earlier = redacted.get("redactions")
    counts = (
        Counter({str(k): int(v) for k, v in earlier.items() if isinstance(v, int)})
        if isinstance(earlier, dict)
        else Counter()
    )
    counts.update(found)
    redacted["redactions"] = dict(counts)
    return redacted, True


def with_terms(payload: Mapping[str, object], sparse: SparseVector) -> dict[str, object]:
    """A payload with the term ids of its lexical vector (`terms`: counted per user for BM25)."""
    return {**payload, "terms": sorted(set(sparse.indices))}


def view(point: FoundPoint) -> Record:
    """The typed view of a stored memory of any kind."""
    kind = kind_of(point.payload)
    cls = Turn if kind == "turn" else Fact if kind == "fact" else Summary if kind == "summary" else Record
    return cls.read(point)


@dataclass(frozen=True)
class LedgerEntry:
    """One LLM call as the usage ledger keeps it (vector-less)."""

    id: str
    payload: Mapping[str, object]

    @classmethod
    def new(cls, call: LLMCall, recorded_at: datetime) -> LedgerEntry:
        """The ledger entry of a call, in the scope it was made for."""
        scope = call.scope or Scope()
        payload: dict[str, object] = {
            **_scope_fields(scope),
            "kind": LEDGER_KIND,
            "status": "active",
            "purpose": call.purpose,
            "provider": call.provider,
            "model": call.model,
            "ok": call.ok,
            "error": call.error,
            "attempts": call.attempts,
            "seconds": call.seconds,
            "prompt_tokens": call.usage.prompt_tokens,
            "completion_tokens": call.usage.completion_tokens,
            "cached_tokens": call.usage.cached_tokens,
            "turns": call.turns,
            "event_ts": call.started_at.timestamp(),
            "created_ts": recorded_at.timestamp(),
        }
        return cls(record_id(scope, LEDGER_KIND, call.call_id), payload)

    @property
    def point(self) -> StoredPoint:
        """The point to store."""
        return StoredPoint(self.id, None, None, dict(self.payload))

    @property
    def purpose(self) -> str:
        """extraction, update (consolidation) or summary."""
        return str(self.payload.get("purpose") or "unknown")

    @property
    def provider(self) -> str:
        """The configured provider preset."""
        return str(self.payload.get("provider") or "")

    @property
    def model(self) -> str:
        """The model requests named."""
        return str(self.payload.get("model") or "")

    @property
    def ok(self) -> bool:
        """Whether the call got a usable answer."""
        return bool(self.payload.get("ok"))

    @property
    def attempts(self) -> int:
        """HTTP requests, retries included."""
        return _count(self.payload, "attempts")

    @property
    def prompt_tokens(self) -> int:
        """Input tokens, cache hits included."""
        return _count(self.payload, "prompt_tokens")

    @property
    def cached_tokens(self) -> int:
        """Input tokens the provider served from its cache."""
        return _count(self.payload, "cached_tokens")

    @property
    def completion_tokens(self) -> int:
        """Output tokens."""
        return _count(self.payload, "completion_tokens")

    @property
    def event_ts(self) -> float:
        """When the call started, in epoch seconds."""
        return _number(self.payload, "event_ts")


@dataclass(frozen=True)
class SummaryMark:
    """How far the sleep-time schedule has summarized a user: the newest fact it took (vector-less)."""

    id: str
    summarized_created_ts: float

    # What the mark's id derives from (one mark per user).
    KEY: ClassVar[str] = "summary"

    @staticmethod
    def id_of(user_id: str) -> str:
        """The mark's id for a user."""
        return record_id(Scope(user_id), PROGRESS_KIND, SummaryMark.KEY)

    @staticmethod
    def is_mark(payload: Mapping[str, object]) -> bool:
        """Whether a stored point is the summarizer's mark (other points may share its kind, progress)."""
        return kind_of(payload) == PROGRESS_KIND and "summarized_created_ts" in payload

    @classmethod
    def read(cls, point: FoundPoint) -> SummaryMark:
        """The mark as stored."""
        return cls(point.id, _number(point.payload, "summarized_created_ts"))

    def point(self, user_id: str, at: datetime) -> StoredPoint:
        """The point to store for the user."""
        payload: dict[str, object] = {
            **_scope_fields(Scope(user_id)),
            "kind": PROGRESS_KIND,
            "status": "active",
            "summarized_created_ts": self.summarized_created_ts,
            "event_ts": at.timestamp(),
            "created_ts": at.timestamp(),
        }
        return StoredPoint(self.id, None, None, payload)


@dataclass(frozen=True)
class PurgeCount:
    """How many expired records the sleep-time job has deleted from one exact scope (vector-less)."""

    id: str
    purged: int

    # What the count's id derives from (one count per exact scope), and its payload field.
    KEY: ClassVar[str] = "expired"
    FIELD: ClassVar[str] = "expired_purged"

    @staticmethod
    def id_of(scope: Scope) -> str:
        """The count's id for an exact scope."""
        return record_id(scope, PROGRESS_KIND, PurgeCount.KEY)

    @staticmethod
    def is_count(payload: Mapping[str, object]) -> bool:
        """Whether a stored point is a purge count (other points may share its kind, progress)."""
        return kind_of(payload) == PROGRESS_KIND and PurgeCount.FIELD in payload

    @classmethod
    def read(cls, point: FoundPoint) -> PurgeCount:
        """The count as stored."""
        return cls(point.id, _count(point.payload, PurgeCount.FIELD))

    def point(self, scope: Scope, at: datetime) -> StoredPoint:
        """The point to store for the exact scope."""
        payload: dict[str, object] = {
            **_scope_fields(scope),
            "kind": PROGRESS_KIND,
            "status": "active",
            PurgeCount.FIELD: self.purged,
            "event_ts": at.timestamp(),
            "created_ts": at.timestamp(),
        }
        return StoredPoint(self.id, None, None, payload)
