"""Export and import: a scope, or the whole store, as JSON Lines, restored idempotently elsewhere.

The first line is a header (format version, the embedder and lexical encoder the vectors came from);
every other line is one point: its id, whether it has vectors in the store, its payload verbatim
(history, provenance, ledger fields and all) and, on request, its dense vector. Import reads the
whole file once to validate it, then upserts in batches under the same ids, so importing twice
changes nothing and a bad line writes nothing. Sparse lexical vectors are always recomputed from the
text; dense vectors are recomputed when they were not exported or came from another embedder.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, TextIO, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from lightmem_mcp.embedder import Embedder
from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.records import RecordFilter, Scope, StoredPoint
from lightmem_mcp.store import VectorStore
from lightmem_mcp.store.schema import SCHEMA_VERSION, StoreLayout
from lightmem_mcp.timestamps import now

log = logging.getLogger(__name__)

FORMAT: Literal["lightmem-mcp-export"] = "lightmem-mcp-export"
FORMAT_VERSION = 1
_BATCH = 256


class ExportScope(BaseModel):
    """The scope an export was limited to."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    agent_id: str | None = None
    session_id: str | None = None


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


class ExportResult(BaseModel):
    """What an export wrote."""

    points: int
    by_kind: dict[str, int]
    vectors: bool


class ImportResult(BaseModel):
    """What an import wrote."""

    points: int
    by_kind: dict[str, int]
    embedded: int = Field(description="Points whose dense vector was computed here.")
    vectors_kept: int = Field(description="Points whose exported dense vector was written as it was.")


def export_points(
    store: VectorStore, layout: StoreLayout, out: TextIO, scope: Scope | None, vectors: bool
) -> ExportResult:
    """Write the header and every point of `scope` (all users when None), in id order."""
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
    out.write(header.model_dump_json() + "\n")
    where = None if scope is None else RecordFilter(scope.user_id, scope.agent_id, scope.session_id)
    kinds: Counter[str] = Counter()
    # Vectors are read even when not exported: they tell a memory from a vector-less point.
    for point in store.scan(where, with_vectors=True):
        line: dict[str, object] = {"id": point.id, "embedded": point.dense is not None, "payload": point.payload}
        if vectors and point.dense is not None:
            line["dense"] = point.dense
        out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        kinds[str(point.payload.get("kind"))] += 1
    out.flush()
    return ExportResult(points=sum(kinds.values()), by_kind=dict(sorted(kinds.items())), vectors=vectors)


def import_points(store: VectorStore, embedder: Embedder, lexical: LexicalEncoder, source: TextIO) -> ImportResult:
    """Validate the whole export, then upsert it in batches; raises `InvalidInput` naming the line and field."""
    with _rewindable(source) as stream:
        start = stream.tell()
        lines = enumerate(stream, start=1)
        header = _header(lines)
        for _ in _points(lines, header):  # every line checked before anything is written
            pass
        stream.seek(start)
        lines = enumerate(stream, start=1)
        _header(lines)
        reuse = header.vectors and header.embedder == embedder.id and header.dimension == embedder.dimension
        if header.vectors and not reuse:
            log.info(
                "the export was embedded with %s (%d-d), this store uses %s (%d-d): re-embedding",
                header.embedder,
                header.dimension,
                embedder.id,
                embedder.dimension,
            )
        kinds: Counter[str] = Counter()
        embedded = kept = 0
        for batch in _batches(_points(lines, header), _BATCH):
            fresh, reused = _write(store, embedder, lexical, batch, reuse, kinds)
            embedded += fresh
            kept += reused
    return ImportResult(
        points=sum(kinds.values()), by_kind=dict(sorted(kinds.items())), embedded=embedded, vectors_kept=kept
    )


def _write(
    store: VectorStore,
    embedder: Embedder,
    lexical: LexicalEncoder,
    batch: Sequence[ExportedPoint],
    reuse_vectors: bool,
    kinds: Counter[str],
) -> tuple[int, int]:
    """Upsert one batch in one store operation; returns (points embedded here, vectors kept)."""
    to_embed = [p for p in batch if p.embedded and (p.dense is None or not reuse_vectors)]
    vectors = embedder.embed_documents([_text(p) for p in to_embed])
    fresh = dict(zip((p.id for p in to_embed), vectors, strict=True))
    stored = []
    for p in batch:
        if p.embedded:
            dense = fresh.get(p.id, p.dense)
            stored.append(StoredPoint(str(p.id), dense, lexical.encode_document(_text(p)), dict(p.payload)))
        else:
            stored.append(StoredPoint(str(p.id), None, None, dict(p.payload)))
        kinds[str(p.payload.get("kind"))] += 1
    store.upsert(stored)
    return len(fresh), sum(1 for p in batch if p.embedded) - len(fresh)


def _header(lines: Iterator[tuple[int, str]]) -> ExportHeader:
    number, raw = next(lines, (1, ""))
    if not raw.strip():
        raise InvalidInput("line 1", f"empty: an export starts with a {FORMAT} header line")
    data = _json(number, raw)
    if data.get("format") != FORMAT:
        raise InvalidInput(f"line {number}: format", f"not a lightmem-mcp export: the first line must say {FORMAT!r}")
    for field, newest in (("version", FORMAT_VERSION), ("schema_version", SCHEMA_VERSION)):
        found = data.get(field)
        if isinstance(found, int) and found > newest:
            raise InvalidInput(
                f"line {number}: {field}",
                f"{found}: written by a newer lightmem-mcp (this one reads {newest}): upgrade lightmem-mcp",
            )
    return _validated(ExportHeader, number, data)


def _points(lines: Iterator[tuple[int, str]], header: ExportHeader) -> Iterator[ExportedPoint]:
    seen: dict[uuid.UUID, int] = {}
    for number, raw in lines:
        if not raw.strip():
            continue
        point = _validated(ExportedPoint, number, _json(number, raw))
        where = f"line {number}"
        if point.id in seen:
            raise InvalidInput(f"{where}: id", f"{point.id} repeats line {seen[point.id]}")
        seen[point.id] = number
        payload = point.payload
        for field in ("user_id", "kind"):
            value = payload.get(field)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{where}: payload.{field}", "missing or empty: every point needs one")
        if point.embedded and (not isinstance(payload.get("text"), str) or not str(payload.get("text")).strip()):
            raise InvalidInput(f"{where}: payload.text", "missing or empty: a point with vectors is embedded from it")
        if point.dense is not None:
            if not point.embedded:
                raise InvalidInput(f"{where}: dense", "given for a point marked embedded=false")
            if len(point.dense) != header.dimension:
                raise InvalidInput(
                    f"{where}: dense", f"{len(point.dense)} values, but the header says {header.dimension}-d vectors"
                )
        yield point


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], number: int, data: dict[str, object]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "line"
        raise InvalidInput(f"line {number}: {field}", error["msg"]) from None


def _json(number: int, raw: str) -> dict[str, object]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"line {number}", f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"line {number}", f"a JSON {type(data).__name__}, not an object")
    return data


def _text(point: ExportedPoint) -> str:
    return str(point.payload["text"])


@contextmanager
def _rewindable(source: TextIO) -> Iterator[TextIO]:
    """`source` itself when it can seek; else (a pipe, stdin) a temporary copy, to be read twice."""
    try:
        seekable = source.seekable()
    except (OSError, ValueError):
        seekable = False
    if seekable:
        yield source
        return
    with tempfile.TemporaryFile("w+", encoding="utf-8") as copy:
        shutil.copyfileobj(source, copy)
        copy.seek(0)
        yield copy


def _batches(points: Iterator[ExportedPoint], size: int) -> Iterator[list[ExportedPoint]]:
    while batch := list(itertools.islice(points, size)):
        yield batch
