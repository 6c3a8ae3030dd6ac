"""The embedded store: a Qdrant Edge shard (the Qdrant engine in-process) in the data directory."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from lightmem_mcp.errors import BackendUnavailable, SchemaMismatch
from lightmem_mcp.records import FoundPoint, RecordFilter, SparseVector, StoredPoint
from lightmem_mcp.store import Ranking, dense_vector, effective_mode, scopes_of
from lightmem_mcp.store.schema import (
    DENSE,
    FLOAT_FIELDS,
    KEYWORD_FIELDS,
    SPARSE,
    TENANT_FIELD,
    StoreLayout,
    check_layout,
)

_LAYOUT_FILE = "lightmem-layout.json"
_SHARD_DIR = "shard"


class EdgeStore:
    """Memories in a local directory; one process may open it at a time."""

    def __init__(self, path: Path, layout: StoreLayout) -> None:
        self._path = path
        # Edge handles concurrent reads; writes are serialised so one upsert is one WAL entry.
        self._write_lock = threading.Lock()
        path.mkdir(parents=True, exist_ok=True)
        layout_file = path / _LAYOUT_FILE
        if layout_file.exists():
            check_layout(json.loads(layout_file.read_text(encoding="utf-8")), layout, f"the store at {path}")
        elif (path / _SHARD_DIR).exists():
            raise SchemaMismatch(
                f"{path / _SHARD_DIR} exists but {layout_file} does not: this directory was not "
                "written by lightmem-mcp; point LIGHTMEM_QDRANT_PATH at an empty or lightmem-mcp directory"
            )
        else:
            _write_atomically(layout_file, json.dumps(layout.to_dict(), indent=2))
        self._shard = self._open(path / _SHARD_DIR, layout.dimension)
        self._closed = False

    def _open(self, shard_dir: Path, dimension: int) -> qe.EdgeShard:
        config = qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )
        try:
            if shard_dir.exists():
                return qe.EdgeShard.load(str(shard_dir), config)
            shard = qe.EdgeShard.create(str(shard_dir), config)
        except Exception as exc:  # qdrant_edge raises plain Exception
            if "WouldBlock" in str(exc) or "lock" in str(exc).lower():
                raise BackendUnavailable(
                    f"the embedded store at {self._path} is open in another lightmem-mcp process "
                    "(one process per data directory): stop that process, give this one its own "
                    "LIGHTMEM_DATA_DIR, or share a Qdrant server through LIGHTMEM_QDRANT_URL"
                ) from exc
            raise BackendUnavailable(f"cannot open the embedded store at {self._path}: {exc}") from exc
        shard.update(qe.UpdateOperation.create_field_index(TENANT_FIELD, qe.KeywordIndexParams(is_tenant=True)))
        for name in KEYWORD_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
        for name in FLOAT_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Float))
        shard.flush()
        return shard

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        """Write all points in one operation (one WAL entry)."""
        if not points:
            return
        edge_points = [qe.Point(p.id, _vectors(p), dict(p.payload)) for p in points]
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.upsert_points(edge_points))

    def query(
        self, dense: list[float], sparse: SparseVector, where: RecordFilter, limit: int, ranking: Ranking
    ) -> list[FoundPoint]:
        """Dense, lexical or fused ranking within the filter."""
        flt = _filter(where)
        dense_query = qe.Query.Nearest(dense, using=DENSE)
        sparse_query = qe.Query.Nearest(qe.SparseVector(sparse.indices, sparse.values), using=SPARSE)
        mode = effective_mode(ranking, sparse)
        if mode is None:
            return []
        if mode == "dense":
            request = qe.QueryRequest(limit=limit, query=dense_query, filter=flt, with_payload=True)
        elif mode == "sparse":
            request = qe.QueryRequest(limit=limit, query=sparse_query, filter=flt, with_payload=True)
        else:
            depth = max(ranking.candidates, limit)
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[
                    qe.Prefetch(limit=depth, query=dense_query, filter=flt),
                    qe.Prefetch(limit=depth, query=sparse_query, filter=flt),
                ],
                # The stub types Fusion.Rrf as a nested class, not a Fusion; the engine accepts it.
                query=qe.Fusion.Rrf(k=ranking.rrf_k, weights=[ranking.dense_weight, ranking.sparse_weight]),  # type: ignore[arg-type]
                filter=flt,
                with_payload=True,
            )
        return [FoundPoint(str(p.id), p.payload or {}, p.score) for p in self._shard.query(request)]

    def scroll(
        self,
        where: RecordFilter,
        limit: int,
        before_ts: float | None = None,
        skip_ids: Sequence[str] = (),
        with_vectors: bool = False,
    ) -> list[FoundPoint]:
        """Newest event first."""
        flt = _filter(where, skip_ids)
        order = qe.OrderBy("event_ts", direction=qe.Direction.Desc, start_from=before_ts)
        request = qe.ScrollRequest(
            limit=limit, filter=flt, with_payload=True, with_vector=[DENSE] if with_vectors else False, order_by=order
        )
        records, _ = self._shard.scroll(request)
        return [FoundPoint(str(r.id), r.payload or {}, dense=dense_vector(r.vector)) for r in records]

    def set_payload(self, where: RecordFilter, values: dict[str, object]) -> None:
        """Set fields on every match, in one operation."""
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.set_payload_by_filter(_filter(where), dict(values)))

    def pending_scopes(
        self, limit: int, kind: str = "turn", stage: str = "pending"
    ) -> list[tuple[str, str | None, str | None]]:
        """Scopes with records of `kind` at `stage`; the one query that crosses users, used to find
        background work (turns to extract, facts to consolidate)."""
        flt = qe.Filter(
            must=[
                qe.FieldCondition("kind", match=qe.MatchValue(kind)),
                qe.FieldCondition("stage", match=qe.MatchValue(stage)),
            ]
        )
        records, _ = self._shard.scroll(
            qe.ScrollRequest(limit=limit, filter=flt, with_payload=[TENANT_FIELD, "agent_id", "session_id"])
        )
        return scopes_of(r.payload or {} for r in records)

    def count(self, where: RecordFilter) -> int:
        """Exact count."""
        return self._shard.count(qe.CountRequest(exact=True, filter=_filter(where)))

    def delete(self, where: RecordFilter) -> None:
        """Delete every record the filter matches."""
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(_filter(where)))

    def scan(
        self, where: RecordFilter | None = None, with_vectors: bool = False, page_size: int = 256
    ) -> Iterator[FoundPoint]:
        """Id order, paged by the shard's own offsets, so a large store never loads at once."""
        flt = _filter(where) if where is not None else None
        offset: Any = None
        while True:
            request = qe.ScrollRequest(
                offset=offset,
                limit=page_size,
                filter=flt,
                with_payload=True,
                with_vector=[DENSE] if with_vectors else False,
            )
            records, offset = self._shard.scroll(request)
            for r in records:
                yield FoundPoint(str(r.id), r.payload or {}, dense=dense_vector(r.vector))
            if offset is None or not records:
                return

    def optimize(self) -> None:
        """Merge segments and build the HNSW index (blocking)."""
        with self._write_lock:
            self._shard.optimize()

    def close(self) -> None:
        """Flush segments and release the directory lock; closing twice is harmless."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._shard.flush()
            self._shard.close()


def _vectors(point: StoredPoint) -> dict[str, Any]:
    vectors: dict[str, Any] = {}
    if point.dense is not None:
        vectors[DENSE] = point.dense
    if point.sparse is not None:
        vectors[SPARSE] = qe.SparseVector(point.sparse.indices, point.sparse.values)
    return vectors


def _filter(where: RecordFilter, skip_ids: Sequence[str] = ()) -> qe.Filter:
    must: list[Any] = [qe.FieldCondition(key, match=qe.MatchValue(value)) for key, value in where.equal()]
    must += [qe.IsEmptyCondition(key) for key in where.unset()]
    must += [qe.FieldCondition(key, match=qe.MatchAny(values)) for key, values in where.any_of()]
    if where.since_ts is not None or where.until_ts is not None:
        must.append(qe.FieldCondition("event_ts", range=qe.RangeFloat(gte=where.since_ts, lte=where.until_ts)))
    if where.ids:
        must.append(qe.HasIdCondition(set(where.ids)))
    must_not: list[Any] = [qe.HasIdCondition(set(skip_ids))] if skip_ids else []
    return qe.Filter(must=must, must_not=must_not or None)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
