"""The memory data model: what callers send, what is stored, what comes back."""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lightmem_mcp.timestamps import MAX_TIME_CHARS

Role = Literal["user", "assistant", "system", "tool"]
Kind = Literal["turn", "fact", "summary"]
Status = Literal["active", "superseded", "deleted"]

ROLES: tuple[Role, ...] = ("user", "assistant", "system", "tool")
KINDS: tuple[Kind, ...] = ("turn", "fact", "summary")

# Longest user, agent, session, message or record id, and speaker name.
MAX_ID_CHARS = 256
# Most speaker names one search filter may list.
MAX_SPEAKERS = 100

ScopeId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f]+$")]
Speaker = Annotated[str, Field(max_length=MAX_ID_CHARS)]


def is_blank(text: str) -> bool:
    """Whether text shows nothing: only whitespace, control and format characters (zero-width space, BOM...)."""
    # str.strip() keeps U+200B, U+2060, U+FEFF and the other format characters (category Cf).
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text)


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


@dataclass(frozen=True)
class Scope:
    """Whose memory: a user, optionally narrowed to one agent and one session."""

    user_id: str = "default"
    agent_id: str | None = None
    session_id: str | None = None


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

    def equal(self) -> list[tuple[str, str]]:
        """Fields that must hold exactly this value: the user, and agent / session when given."""
        pairs = [("user_id", self.user_id), ("agent_id", self.agent_id), ("session_id", self.session_id)]
        return [(key, value) for key, value in pairs if value is not None]

    def unset(self) -> list[str]:
        """Fields that must be empty: agent / session left out of an exact scope."""
        if not self.exact_scope:
            return []
        return [key for key, value in (("agent_id", self.agent_id), ("session_id", self.session_id)) if value is None]

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
    topic_id: str | None = None
    event_time: datetime = Field(description="When it happened (UTC).")
    created_at: datetime
    updated_at: datetime


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
    source_ids: list[str]
    window: int | None = Field(
        default=None, description="With context > 0: index in `windows` of the exchange around this hit."
    )


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


class CompressResult(BaseModel):
    """Compressed text and what it saved."""

    compressed_text: str
    original_tokens: int
    compressed_tokens: int
    ratio: float = Field(description="compressed_tokens / original_tokens.")
    model: str
    device: str
    milliseconds: float


class ForgetResult(BaseModel):
    """What forget removed."""

    deleted_count: int


# Record ids are derived from scope and content keys, so re-sending or re-extracting never duplicates.
_ID_NAMESPACE = uuid.UUID("6f1c2a44-5f0e-4d4e-9a57-3c1f7d0e8b21")


def record_id(scope: Scope, kind: str, key: str) -> str:
    """The deterministic id of a record of `kind` identified by `key` within `scope`."""
    parts = (scope.user_id, scope.agent_id or "", scope.session_id or "", kind, key)
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(parts)))


def record_payload(
    scope: Scope,
    kind: str,
    text: str,
    *,
    role: str | None,
    speaker: str | None,
    source_ids: list[str],
    event_time: datetime,
    stored_at: datetime,
) -> dict[str, Any]:
    """The stored fields every record kind shares."""
    return {
        "user_id": scope.user_id,
        "agent_id": scope.agent_id,
        "session_id": scope.session_id,
        "kind": kind,
        "status": "active",
        "text": text,
        "role": role,
        "speaker": speaker,
        "source_ids": source_ids,
        "topic_id": None,
        "event_time": event_time.isoformat(),
        "event_ts": event_time.timestamp(),
        "created_ts": stored_at.timestamp(),
        "updated_ts": stored_at.timestamp(),
    }
