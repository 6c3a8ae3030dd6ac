"""Export and import: a scope, or the whole store, as JSON Lines, restored idempotently elsewhere.

The first line is a header (format version, the embedder and lexical encoder the vectors came from);
every other line is one point: its id, whether it has vectors in the store, its payload verbatim
(history, provenance, ledger fields and all) and, on request, its dense vector.

Import reads the file once into a private copy, checking every line (encoding, schema, and the limits
`add_memory` applies) and choosing every point's id; only then does it upsert, in batches. So a bad
line writes nothing, and importing twice changes nothing; an import cancelled between two batches is
finished by importing the same file again. A point keeps its id when that id belongs to
the scope its payload names; a point whose scope was edited in the file is copied into that scope under
the id the project derives there (the original is never moved or touched). Sparse lexical vectors are
always recomputed; dense vectors are recomputed when they were not exported, came from another embedder,
or belong to a copy.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import stat
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal, TextIO, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError

from lightmem_mcp.api import ExportPage, ExportResult, ImportResult, Progress, Stop
from lightmem_mcp.config import LimitSettings
from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.indexing import RecordWriter
from lightmem_mcp.records import (
    KINDS,
    WORD_FIELDS,
    Fact,
    FoundPoint,
    Kind,
    MetadataValue,
    PurgeCount,
    Record,
    RecordFilter,
    Role,
    Scope,
    ScopeId,
    Status,
    StoredPoint,
    Summary,
    SummaryMark,
    Turn,
    check_metadata,
    has_words,
    kind_of,
    missing_field,
    record_id,
    redact_words,
    scope_of,
    view,
    with_caller_fields,
    with_references,
)
from lightmem_mcp.redact import SecretRedactor
from lightmem_mcp.store import VectorStore
from lightmem_mcp.store.schema import SCHEMA_VERSION, StoreLayout
from lightmem_mcp.timestamps import ACCEPTED, now, parse_timestamp, to_epoch

log = logging.getLogger(__name__)

FORMAT: Literal["lightmem-mcp-export"] = "lightmem-mcp-export"
FORMAT_VERSION = 1
_BATCH = 256
_MAX_DEPTH = 16  # of a payload's nesting: real payloads go 4 deep (history → entry → by_ids → id)
_MAX_KEY_CHARS = 256
_MAX_SPEAKER_CHARS = 256  # Message.name


class ExportScope(BaseModel):
    """The scope an export was limited to."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    agent_id: str | None = None
    session_id: str | None = None
    # A project: its records alone; "" (records.GLOBAL): the global tier alone; None: every tier.
    project: str | None = None


class ExportHeader(BaseModel):
    """The first line of an export."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["lightmem-mcp-export"]
    version: int = Field(ge=1)
    schema_version: int = Field(ge=0)
    embedder: str = Field(min_length=1)
    dimension: int = Field(ge=1)
    lexical: str
    vectors: bool = Field(description="Whether dense vectors were exported.")
    scope: ExportScope | None = Field(description="None: the whole store.")
    exported_at: str


class ExportedPoint(BaseModel):
    """One point of an export."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    embedded: bool = Field(description="Whether the point has vectors (memories) or none (usage ledger, progress).")
    payload: dict[str, JsonValue]
    dense: list[float] | None = None


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank: give a non-blank id")
    return value


def _record_ref(value: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError("not a record id (a UUID)") from None
    return value


def _iso_time(value: str) -> str:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO 8601 time") from None
    return value


# The same rules `add_memory` applies to scope and message ids.
_Id = Annotated[ScopeId, AfterValidator(_not_blank)]
_RecordRef = Annotated[str, AfterValidator(_record_ref)]
_Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_Time = Annotated[str, AfterValidator(_iso_time)]


class _Payload(BaseModel):
    """What every stored point carries; other fields travel verbatim."""

    model_config = ConfigDict(extra="allow")

    user_id: _Id
    agent_id: _Id | None = None
    session_id: _Id | None = None
    # Absent (an export of an earlier release, or the global tier): the global tier.
    project: _Id | None = None
    kind: Literal["turn", "fact", "summary", "llm_call", "progress"]
    event_ts: _Number


class _HistoryEntry(BaseModel):
    """One entry of a record's history (a consolidation change, or a re-summarization)."""

    model_config = ConfigDict(extra="allow")

    action: str | None = None
    target_id: _RecordRef | None = None
    new_id: _RecordRef | None = None
    by_ids: list[_RecordRef] | None = None


class _MemoryPayload(_Payload):
    """A turn, fact or summary: the fields reading, searching and consolidating it rely on."""

    kind: Kind
    status: Status
    text: str
    original_text: str | None = None
    role: Role | None = None
    speaker: str | None = Field(default=None, max_length=_MAX_SPEAKER_CHARS)
    source_ids: list[_Id] = Field(default_factory=list)
    topic_id: str | None = None
    event_time: _Time
    created_ts: _Number
    updated_ts: _Number
    superseded_by: _RecordRef | None = None
    supersedes: list[_RecordRef] = Field(default_factory=list)
    batch_turn_ids: list[_RecordRef] = Field(default_factory=list)
    covered_ids: list[_RecordRef] = Field(default_factory=list)
    history: list[_HistoryEntry] = Field(default_factory=list)
    window: str | None = None
    window_key: str | None = None
    topic: str | None = None
    context: list[str] = Field(default_factory=list, description="A turn's earlier turns, lexically indexed with it.")
    # The caller's metadata and expiry (absent in an export of an earlier release: none, never): checked by
    # `_caller_fields` with add_memory's rules. `expires_at` is what counts; `expires_ts` is derived again.
    metadata: JsonValue = None
    expires_at: str | None = None


def export_points(
    store: VectorStore, layout: StoreLayout, out: TextIO, scope: Scope | None, vectors: bool
) -> ExportResult:
    """Write the header and every point of `scope` (all users when None), in id order."""
    out.write(export_header(layout, scope, vectors) + "\n")
    where = None if scope is None else RecordFilter.owned_by(scope)
    kinds: Counter[str] = Counter()
    # Vectors are read even when not exported: they tell a memory from a vector-less point.
    for point in store.scan(where, with_vectors=True):
        out.write(export_line(point, vectors) + "\n")
        kinds[kind_of(point.payload)] += 1
    out.flush()
    return ExportResult(points=sum(kinds.values()), by_kind=dict(sorted(kinds.items())), vectors=vectors)


def export_page(store: VectorStore, layout: StoreLayout, scope: Scope, after: str | None, limit: int) -> ExportPage:
    """Up to `limit` point lines of the scope's export without vectors, in id order after the point id
    `after`, the header first when `after` is None: the lines `export_points` writes, a page at a time."""
    header = export_header(layout, scope, vectors=False) if after is None else None
    lines: list[str] = []
    last: str | None = None
    # One point more than the page tells whether another page follows.
    for point in store.scan(RecordFilter.owned_by(scope), with_vectors=True, page_size=limit + 1, after=after):
        if len(lines) == limit:
            return ExportPage(header=header, lines=lines, next=last)
        lines.append(export_line(point, vectors=False))
        last = point.id
    return ExportPage(header=header, lines=lines, next=None)


def export_header(layout: StoreLayout, scope: Scope | None, vectors: bool) -> str:
    """The first line of an export of `scope` (all users when None), without its newline."""
    header = ExportHeader(
        format=FORMAT,
        version=FORMAT_VERSION,
        schema_version=layout.schema_version,
        embedder=layout.embedder,
        dimension=layout.dimension,
        lexical=layout.lexical,
        vectors=vectors,
        scope=None if scope is None else ExportScope(**vars(scope)),
        exported_at=now().isoformat(),
    )
    # Without a project, the header is as earlier releases wrote it, so that they can import it.
    unset = {"scope": {"project"}} if scope is not None and scope.project is None else None
    return header.model_dump_json(exclude=unset)


def export_line(point: FoundPoint, vectors: bool) -> str:
    """The line of one point (read with its vectors, which tell a memory from a vector-less point),
    without its newline; its dense vector only with `vectors`."""
    line: dict[str, object] = {"id": point.id, "embedded": point.dense is not None, "payload": point.payload}
    if vectors and point.dense is not None:
        line["dense"] = point.dense
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def check_output(path: str) -> Path:
    """The export target `path`, refused (`InvalidInput`) when empty or when it exists and is not a regular file."""
    if not path.strip():
        raise InvalidInput("--output", "empty: give a file path, or - for standard output")
    target = Path(path)
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        if not target.parent.is_dir():
            raise InvalidInput("--output", f"{target.parent} is not a directory: create it first") from None
        return target
    if not stat.S_ISREG(mode):
        raise InvalidInput(
            "--output",
            f"{path} is {_file_type(mode)}, not a regular file: give a new path or a regular file to replace "
            "(export never writes through links or into special files)",
        )
    return target


@contextmanager
def atomic_output(target: Path) -> Iterator[TextIO]:
    """A private (0600) file beside `target`, renamed over it when the block succeeds, removed when it fails:
    a reader never sees half an export, and a failed export leaves the old file as it was."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    partial = Path(name)
    renamed = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        check_output(str(target))  # again: it may have become a link or a FIFO meanwhile
        os.replace(partial, target)
        renamed = True
        _sync_directory(target.parent)
    finally:
        if not renamed:
            partial.unlink(missing_ok=True)


def import_points(
    store: VectorStore,
    writer: RecordWriter,
    layout: StoreLayout,
    source: TextIO,
    limits: LimitSettings,
    redactor: SecretRedactor | None = None,
    *,
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> ImportResult:
    """Check the whole export and place every point, then upsert in batches; a bad file raises `InvalidInput`
    naming the line and field, and writes nothing. Once `stop` says so, it ends before the next batch
    (`progress` hears of each); the result says how many points were written."""
    longest = _longest_line(limits)
    # A private copy: read the source once (it may be a pipe), and write exactly what was checked.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogatepass") as copy:
        lines = _copied(_read(source, longest), copy)
        header = _header(lines, limits)
        origins = [_origin(number, point, payload) for number, point, payload in _points(lines, header, limits)]
        placed = _place(origins, store)
        copy.seek(0)
        lines = _read(copy, longest)
        _header(lines, limits)
        # Vectors are reused only from an export of the same embedder and the same index layout
        # (schema 2 embeds a turn with its speaker's name).
        reuse = (
            header.vectors
            and header.embedder == layout.embedder
            and header.dimension == layout.dimension
            and header.schema_version == layout.schema_version
        )
        if header.vectors and not reuse:
            log.info(
                "the export was embedded with %s (%d-d), this store uses %s (%d-d): re-embedding",
                header.embedder,
                header.dimension,
                layout.embedder,
                layout.dimension,
            )
        kinds: Counter[str] = Counter()
        embedded = kept = copied = 0
        cancelled = False
        try:
            for batch in _batches(_points(lines, header, limits), _BATCH):
                if stop is not None and stop():
                    cancelled = True
                    log.info(
                        "import cancelled after writing %d of %d points; importing the same file again writes the rest",
                        sum(kinds.values()),
                        len(origins),
                    )
                    break
                fresh, reused = _write(store, writer, batch, placed, reuse, kinds, redactor)
                embedded += fresh
                kept += reused
                copied += sum(number in placed.ids for number, _, _ in batch)
                if progress is not None:
                    written = sum(kinds.values())
                    progress(written, len(origins), f"imported {written} of {len(origins)} points")
        except BaseException:
            log.error(
                "import stopped after writing %d of %d points; importing the same file again is safe",
                sum(kinds.values()),
                len(origins),
            )
            raise
    return ImportResult(
        points=sum(kinds.values()),
        by_kind=dict(sorted(kinds.items())),
        embedded=embedded,
        vectors_kept=kept,
        copied=copied,
        cancelled=cancelled,
        points_left=len(origins) - sum(kinds.values()),
    )


# -- placing points: which id each one gets ---------------------------------------------


@dataclass(frozen=True)
class _Origin:
    """What the check keeps of a point to choose its id: where it goes and how the project names it there."""

    line: int
    id: str
    scope: Scope
    kind: str
    # The id the project gives this record in `scope`; None when the payload does not tell (see _place).
    derived: str | None
    # A consolidated version: (the fact it updated, the facts it merged), its id derived from theirs.
    merges: tuple[str, tuple[str, ...]] | None
    created_ts: float


@dataclass
class _Placed:
    """The ids the file's points are written under (`ids`, by line: the copies only), and how references
    between records (which may cross agents and sessions, never users) follow them to their copies."""

    ids: dict[int, str] = field(default_factory=dict)
    # (user, exported id) → the id of its copy in that user; `kept`: exported ids written as they are.
    renamed: dict[tuple[str, str], str] = field(default_factory=dict)
    kept: set[tuple[str, str]] = field(default_factory=set)

    def copy(self, origin: _Origin, new_id: str) -> None:
        user = origin.scope.user_id
        if new_id == origin.id:
            self.kept.add((user, origin.id))
        else:
            self.ids[origin.line] = new_id
            self.renamed.setdefault((user, origin.id), new_id)

    def ref(self, user: str, value: str) -> str:
        """What a reference of `user`'s record to `value` points at once imported."""
        if (user, value) in self.kept:
            return value  # the record itself is in the file, under its own id, for this user
        return self.renamed.get((user, value), value)

    def payload(self, user: str, payload: Mapping[str, object]) -> Mapping[str, object]:
        """`payload` with its references to other records pointed at their copies."""
        if not self.renamed:
            return payload
        return with_references(payload, lambda value: self.ref(user, value))


def _origin(number: int, point: ExportedPoint, payload: _Payload) -> _Origin:
    """How the project derives this record's id (records.record_id with each kind's key)."""
    scope = Scope(payload.user_id, payload.agent_id, payload.session_id, payload.project)
    point_id = str(point.id)
    key: str | None = None
    merges: tuple[str, tuple[str, ...]] | None = None
    created_ts = 0.0
    if isinstance(payload, _MemoryPayload):
        created_ts = payload.created_ts
        if payload.kind == "turn":
            key = Turn.key(payload.source_ids)
        elif payload.kind == "summary":
            key = Summary.key(str(payload.window), str(payload.window_key), payload.topic)
        else:
            for entry in payload.history:
                if entry.action == "update" and entry.new_id == point_id and entry.target_id and entry.by_ids:
                    merges = (entry.target_id, tuple(entry.by_ids))
            if merges is None:
                key = Fact.key(payload.source_ids, payload.text)
    elif SummaryMark.is_mark(point.payload):
        key = SummaryMark.KEY  # other progress points are placed like ledger entries
    elif PurgeCount.is_count(point.payload):
        key = PurgeCount.KEY
    derived = None if key is None else record_id(scope, payload.kind, key)
    return _Origin(number, point_id, scope, payload.kind, derived, merges, created_ts)


def _place(origins: Sequence[_Origin], store: VectorStore) -> _Placed:
    """Choose every point's id: its own when it belongs to its scope, else a copy's. Raises `InvalidInput`
    when two lines would write the same record."""
    placed = _Placed()
    versions: list[tuple[_Origin, str, tuple[str, ...]]] = []
    unverifiable: list[_Origin] = []
    for origin in origins:
        if origin.derived is not None:
            placed.copy(origin, origin.derived)
        elif origin.merges is not None:
            versions.append((origin, *origin.merges))
        else:
            unverifiable.append(origin)
    # Ledger entries are keyed on a call id their payload does not hold: an id belongs to the scope that
    # has it in the store, else to the first line that uses it. Any other scope gets a copy.
    owners = _owners(store, {origin.id for origin in unverifiable})
    for origin in unverifiable:
        if owners.setdefault(origin.id, origin.scope) != origin.scope:
            placed.copy(origin, record_id(origin.scope, origin.kind, "\x1f".join(["copy", origin.id])))
    # A version's id comes from the ids it merged, so it is placed after them (they are older).
    for origin, target, merged in sorted(versions, key=lambda v: (v[0].created_ts, v[0].line)):
        user = origin.scope.user_id
        key = Fact.version_key(placed.ref(user, target), [placed.ref(user, i) for i in merged])
        placed.copy(origin, record_id(origin.scope, "fact", key))
    written: dict[str, _Origin] = {}
    for origin in origins:
        new_id = placed.ids.get(origin.line, origin.id)
        first = written.setdefault(new_id, origin)
        if first is origin:
            continue
        if first.id == origin.id and first.scope == origin.scope:
            raise InvalidInput(f"line {origin.line}: id", f"{origin.id} repeats line {first.line}")
        raise InvalidInput(
            f"line {origin.line}: id",
            f"{origin.id} would be written as record {new_id} of user {origin.scope.user_id!r}, "
            f"which line {first.line} writes too: keep one of the two lines",
        )
    return placed


def _owners(store: VectorStore, ids: set[str]) -> dict[str, Scope]:
    """The scope each of `ids` belongs to in the store, for those it holds (one pass over the store)."""
    if not ids:
        return {}
    return {point.id: scope_of(point.payload) for point in store.scan(None) if point.id in ids}


# -- writing ------------------------------------------------------------------------------


def _write(
    store: VectorStore,
    writer: RecordWriter,
    batch: Sequence[_Checked],
    placed: _Placed,
    reuse_vectors: bool,
    kinds: Counter[str],
    redactor: SecretRedactor | None = None,
) -> tuple[int, int]:
    """Upsert one batch in one store operation; returns (points embedded here, vectors kept). Secrets
    in a memory's words are redacted as `add_memory` would (an export may predate redaction)."""
    plain: list[StoredPoint] = []
    memories: list[Record] = []
    for number, point, checked in batch:
        point_id = placed.ids.get(number, str(point.id))
        payload = placed.payload(checked.user_id, point.payload)
        kinds[checked.kind] += 1
        if not point.embedded:
            plain.append(StoredPoint(point_id, None, None, dict(payload)))
            continue
        redacted = False
        if redactor is not None:
            payload, redacted = redact_words(payload, _redacting(redactor))
        # An exported vector is kept only for a point written under its own id and words: a copy may index
        # differently, and redacted words must be embedded again.
        dense = point.dense if reuse_vectors and point_id == str(point.id) and not redacted else None
        # The indexed forms of metadata and expiry are made here again, never taken from the file.
        fields: dict[str, object] = with_caller_fields(payload, *_caller_fields(f"line {number}", checked))
        memories.append(view(FoundPoint(point_id, fields, dense=dense)))
    store.upsert([*plain, *writer.points(memories, keep_dense=True)])
    kept = sum(1 for record in memories if record.dense is not None)
    return len(memories) - kept, kept


def _redacting(redactor: SecretRedactor) -> Callable[[str], tuple[str, Mapping[str, int]]]:
    """`redactor` as `redact_words` takes it: a text's redacted words, and the secrets taken out by kind."""

    def redact(text: str) -> tuple[str, Mapping[str, int]]:
        result = redactor.redact(text)
        return result.text, result.kinds

    return redact


# -- checking -----------------------------------------------------------------------------


def _header(lines: Iterator[tuple[int, str]], limits: LimitSettings) -> ExportHeader:
    number, raw = next(lines, (1, ""))
    if not raw.strip():
        raise InvalidInput("line 1", f"empty: an export starts with a {FORMAT} header line")
    data = _json(number, raw, limits)
    if data.get("format") != FORMAT:
        raise InvalidInput(f"line {number}: format", f"not a lightmem-mcp export: the first line must say {FORMAT!r}")
    for field_name, newest in (("version", FORMAT_VERSION), ("schema_version", SCHEMA_VERSION)):
        found = data.get(field_name)
        if isinstance(found, int) and found > newest:
            raise InvalidInput(
                f"line {number}: {field_name}",
                f"{found}: written by a newer lightmem-mcp (this one reads {newest}): upgrade lightmem-mcp",
            )
    return _validated(ExportHeader, number, data)


def _points(
    lines: Iterator[tuple[int, str]], header: ExportHeader, limits: LimitSettings
) -> Iterator[tuple[int, ExportedPoint, _Payload]]:
    """Every point line, checked: (number, point, its payload's checked fields)."""
    for number, raw in lines:
        if not raw.strip():
            continue
        point = _validated(ExportedPoint, number, _json(number, raw, limits))
        where = f"line {number}"
        data = point.payload
        missing = missing_field(data)
        if missing is not None:
            raise InvalidInput(f"{where}: payload.{missing}", "missing or empty: every point needs one")
        memory = kind_of(data) in KINDS
        if point.embedded and not has_words(data):
            raise InvalidInput(f"{where}: payload.text", "missing or empty: a point with vectors is embedded from it")
        payload = _validated(_MemoryPayload if memory else _Payload, number, data, "payload.")
        if point.dense is not None:
            if not point.embedded:
                raise InvalidInput(f"{where}: dense", "given for a point marked embedded=false")
            if len(point.dense) != header.dimension:
                raise InvalidInput(
                    f"{where}: dense", f"{len(point.dense)} values, but the header says {header.dimension}-d vectors"
                )
        if point.embedded != memory:
            raise InvalidInput(
                f"{where}: embedded",
                f"{str(point.embedded).lower()} for a {payload.kind} point: turns, facts and summaries have "
                "vectors, other points none",
            )
        if isinstance(payload, _MemoryPayload):
            _check_memory(where, payload)
        yield number, point, payload


def _check_memory(where: str, payload: _MemoryPayload) -> None:
    """What `add_memory` and the pipeline guarantee of every stored memory (the schema above guarantees
    that it can be indexed: a text, and a turn's context as strings)."""
    if payload.kind == "turn" and not payload.source_ids:
        raise InvalidInput(f"{where}: payload.source_ids", "empty: a turn keeps its message id there")
    if payload.kind == "summary" and (payload.window is None or payload.window_key is None):
        raise InvalidInput(f"{where}: payload.window", "missing: a summary names its window and window_key")
    _caller_fields(where, payload)


def _caller_fields(where: str, payload: _Payload) -> tuple[dict[str, MetadataValue], float | None]:
    """A memory's metadata and expiry (epoch seconds), held to add_memory's rules; an expiry already past
    is kept (the memory stays hidden and the sleep-time job deletes it)."""
    if not isinstance(payload, _MemoryPayload):
        return {}, None
    metadata = check_metadata(payload.metadata, f"{where}: payload.metadata")
    if payload.expires_at is None:
        return metadata, None
    try:
        return metadata, to_epoch(parse_timestamp(payload.expires_at))
    except ValueError:
        raise InvalidInput(
            f"{where}: payload.expires_at", f"{payload.expires_at!r} is not a time; use {ACCEPTED}"
        ) from None


def _check_values(where: str, line: dict[str, object], limits: LimitSettings) -> None:
    """Every string valid Unicode and within the message limit, every field name short, nesting shallow."""
    stack: list[tuple[str, object, int]] = [("", line, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise InvalidInput(f"{where}: {path}", f"nested more than {_MAX_DEPTH} levels deep")
        if isinstance(value, str):
            _check_text(where, path, value, limits)
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):  # reversed: the first problem in the line is named
                _check_text(where, f"{path or 'line'} (a field name)", key, limits)
                if len(key) > _MAX_KEY_CHARS:
                    raise InvalidInput(f"{where}: {path or 'line'}", f"a field name of {len(key)} characters")
                stack.append((f"{path}.{key}" if path else key, item, depth + 1))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item, depth + 1) for index, item in reversed(list(enumerate(value))))


def _check_text(where: str, path: str, text: str, limits: LimitSettings) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise InvalidInput(
            f"{where}: {path}", f"not valid Unicode: a lone surrogate (U+{code:04X}) at character {exc.start + 1}"
        ) from None
    # A message's words are held to add_memory's limit; any other string to it or a floor that keeps
    # ids, times and ledger notes importable under a small limit.
    message = path in _MESSAGE_FIELDS
    most = limits.max_message_chars if message else max(limits.max_message_chars, _MIN_STRING_CAP)
    if len(text) > most:
        raise InvalidInput(
            f"{where}: {path}",
            f"{len(text)} characters; at most {most} (LIGHTMEM_MAX_MESSAGE_CHARS"
            f"{', the add_memory limit' if message else ''}): raise the limit to import it",
        )


_MESSAGE_FIELDS = frozenset(f"payload.{name}" for name in WORD_FIELDS)
_MIN_STRING_CAP = 4096


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], number: int, data: Mapping[str, object], prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or "line"
        raise InvalidInput(f"line {number}: {prefix}{name}", error["msg"]) from None


def _json(number: int, raw: str, limits: LimitSettings) -> dict[str, object]:
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Undecodable bytes reach here as surrogate escapes (U+DC80-U+DCFF), see `open_export`.
        code = ord(raw[exc.start])
        what = f"byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"a lone surrogate U+{code:04X}"
        raise InvalidInput(f"line {number}", f"not UTF-8 text: {what} at column {exc.start + 1}") from None
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"line {number}", f"not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise InvalidInput(f"line {number}", "not JSON this tool reads: nested too deeply") from None
    except ValueError as exc:
        raise InvalidInput(f"line {number}", f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"line {number}", f"a JSON {type(data).__name__}, not an object")
    _check_values(f"line {number}", data, limits)
    return data


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


# -- reading ------------------------------------------------------------------------------


@contextmanager
def open_export(path: str) -> Iterator[TextIO]:
    """An export file (or standard input for '-') as text; bytes that are not UTF-8 are kept as surrogate
    escapes so that the check can name their line instead of failing on them."""
    if path == "-":
        with open(sys.stdin.fileno(), encoding="utf-8-sig", errors="surrogateescape", closefd=False) as stdin:
            yield stdin
        return
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as source:
        yield source


def _longest_line(limits: LimitSettings) -> int:
    # Room for the two texts of a turn fully escaped, its history and a dense vector of any usual size.
    return 64 * limits.max_message_chars + 262_144


def _read(stream: TextIO, longest: int) -> Iterator[tuple[int, str]]:
    """(number, line), refusing a line longer than `longest` characters before reading all of it."""
    number = 0
    while raw := stream.readline(longest + 1):
        number += 1
        if len(raw) > longest and not raw.endswith("\n"):
            raise InvalidInput(
                f"line {number}",
                f"longer than {longest} characters (64 times LIGHTMEM_MAX_MESSAGE_CHARS, plus 262144): "
                "not an export line",
            )
        yield number, raw


def _copied(lines: Iterator[tuple[int, str]], copy: TextIO) -> Iterator[tuple[int, str]]:
    for number, raw in lines:
        copy.write(raw if raw.endswith("\n") else raw + "\n")
        yield number, raw


_Checked = tuple[int, ExportedPoint, "_Payload"]


def _batches(points: Iterator[_Checked], size: int) -> Iterator[list[_Checked]]:
    while batch := list(itertools.islice(points, size)):
        yield batch


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a special file"


def _sync_directory(directory: Path) -> None:
    """Make a rename durable; some file systems cannot open a directory, and then it is left to them."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
