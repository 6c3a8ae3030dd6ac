"""The embedded store: a Qdrant Edge shard (the Qdrant engine in-process) in the data directory."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from lightmem_mcp.errors import BackendUnavailable, SchemaMismatch, StoreInUse
from lightmem_mcp.privacy import private_directory
from lightmem_mcp.records import (
    EXPIRES_FIELD,
    PROJECT_FIELD,
    FoundPoint,
    RecordFilter,
    Scope,
    SparseVector,
    StoredPoint,
)
from lightmem_mcp.store import Rewrite, TermCounts, Writes, dense_vector, scopes_of
from lightmem_mcp.store.schema import (
    DENSE,
    FLOAT_FIELDS,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    SPARSE,
    TENANT_FIELD,
    StoreLayout,
    check_layout,
)

_LAYOUT_FILE = "lightmem-layout.json"
_SHARD_DIR = "shard"
# A re-index writes a new shard beside the old one, `shard-v<schema>`, and names it in the layout
# file when complete; this file says how far it got, so a killed run resumes.
_REINDEX_PROGRESS = "reindex-progress.json"

log = logging.getLogger(__name__)


class EdgeStore:
    """Memories in a local directory; one process may open it at a time."""

    def __init__(self, path: Path, layout: StoreLayout) -> None:
        self._path = path
        # Edge handles concurrent reads; writes are serialised so one upsert is one WAL entry.
        self._write_lock = threading.Lock()
        # One process owns the directory, so its own writes are the only ones: no expiry needed.
        self._term_counts = TermCounts(ttl_s=None)
        self._writes = Writes()
        private_directory(path)  # memories in clear: 0700 / 0600, whatever the umask
        layout_file = path / _LAYOUT_FILE
        self._layout = layout
        self._layout_file = layout_file
        self.stale = False
        shard_name = _SHARD_DIR
        if layout_file.exists():
            found = json.loads(layout_file.read_text(encoding="utf-8"))
            self.stale = check_layout(found, layout, f"the store at {path}")
            shard_name = str(found.get("shard", _SHARD_DIR))
        elif (path / _SHARD_DIR).exists():
            raise SchemaMismatch(
                f"{path / _SHARD_DIR} exists but {layout_file} does not: this directory was not "
                "written by lightmem-mcp; point LIGHTMEM_QDRANT_PATH at an empty or lightmem-mcp directory"
            )
        else:
            _write_atomically(layout_file, json.dumps(layout.to_dict(), indent=2))
        self._shard_name = shard_name
        # Schema 1 weighted terms by collection-wide IDF; a stale store is read that way until re-indexed.
        self._shard = self._open(path / shard_name, layout.dimension, collection_idf=self.stale)
        if not self.stale:
            self._drop_leftovers()
        self._closed = False

    def _open(self, shard_dir: Path, dimension: int, collection_idf: bool = False) -> qe.EdgeShard:
        sparse = qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf) if collection_idf else qe.EdgeSparseVectorParams()
        config = qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: sparse},
        )
        try:
            if shard_dir.exists():
                return qe.EdgeShard.load(str(shard_dir), config)
            shard = qe.EdgeShard.create(str(shard_dir), config)
        except Exception as exc:  # qdrant_edge raises plain Exception
            if "WouldBlock" in str(exc) or "lock" in str(exc).lower():
                raise StoreInUse(
                    f"the embedded store at {self._path} is open in another process that does not share it "
                    "(an older lightmem-mcp, or one with LIGHTMEM_SHARED_ENABLED=false): stop that process, give "
                    "this one its own LIGHTMEM_DATA_DIR, or share a Qdrant server through LIGHTMEM_QDRANT_URL"
                ) from exc
            raise BackendUnavailable(f"cannot open the embedded store at {self._path}: {exc}") from exc
        shard.update(qe.UpdateOperation.create_field_index(TENANT_FIELD, qe.KeywordIndexParams(is_tenant=True)))
        for name in KEYWORD_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
        for name in FLOAT_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Float))
        for name in INTEGER_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Integer))
        shard.flush()
        return shard

    def _drop_leftovers(self) -> None:
        """Shards of an older layout that a finished re-index had no time to delete."""
        for entry in self._path.iterdir():
            old = entry.name == _SHARD_DIR or entry.name.startswith(f"{_SHARD_DIR}-v")
            if entry.is_dir() and old and entry.name != self._shard_name:
                log.info("removing %s, replaced by %s after a re-index", entry, self._shard_name)
                shutil.rmtree(entry)
        (self._path / _REINDEX_PROGRESS).unlink(missing_ok=True)

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        """Write all points in one operation (one WAL entry)."""
        if not points:
            return
        edge_points = [qe.Point(p.id, _vectors(p), dict(p.payload)) for p in points]
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.upsert_points(edge_points))
        self._term_counts.forget({str(p.payload.get(TENANT_FIELD)) for p in points})
        self._writes.wrote({str(p.payload.get(TENANT_FIELD)) for p in points})

    def nearest(
        self, vector: list[float] | SparseVector, where: RecordFilter, limit: int, with_payload: bool = True
    ) -> list[FoundPoint]:
        """Dense (cosine) or lexical (dot product) ranking within the filter."""
        if isinstance(vector, SparseVector):
            if not vector.indices:
                return []
            query = qe.Query.Nearest(qe.SparseVector(vector.indices, vector.values), using=SPARSE)
        else:
            query = qe.Query.Nearest(vector, using=DENSE)
        request = qe.QueryRequest(limit=limit, query=query, filter=_filter(where), with_payload=with_payload)
        return [FoundPoint(str(p.id), p.payload or {}, p.score) for p in self._shard.query(request)]

    def term_stats(self, user_id: str, terms: Sequence[int]) -> tuple[int, list[int]]:
        """Exact counts over the user's records, from the keyword and integer indexes."""
        return self._term_counts.get(self.count, user_id, terms)

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
        self._writes.wrote([where.user_id])

    def written(self, user_id: str) -> tuple[int, int]:
        """This process's changes to the user's records, counted."""
        return self._writes.of(user_id)

    def values(self, field: str, where: RecordFilter, limit: int) -> list[str]:
        """From the keyword index, exact counts."""
        response = self._shard.facet(qe.FacetRequest(field, limit=limit, exact=True, filter=_filter(where)))
        return [str(hit.value) for hit in response.hits]

    def pending_scopes(self, limit: int, kind: str = "turn", stage: str = "pending") -> list[Scope]:
        """Scopes with records of `kind` at `stage`; the one query that crosses users, used to find
        background work (turns to extract, facts to consolidate)."""
        flt = qe.Filter(
            must=[
                qe.FieldCondition("kind", match=qe.MatchValue(kind)),
                qe.FieldCondition("stage", match=qe.MatchValue(stage)),
            ]
        )
        records, _ = self._shard.scroll(
            qe.ScrollRequest(
                limit=limit, filter=flt, with_payload=[TENANT_FIELD, "agent_id", "session_id", PROJECT_FIELD]
            )
        )
        return scopes_of(r.payload or {} for r in records)

    def expired_scopes(self, at: float, limit: int) -> list[Scope]:
        """Scopes with records expired at `at`; crosses users like `pending_scopes`, for the purge."""
        flt = qe.Filter(must=[qe.FieldCondition(EXPIRES_FIELD, range=qe.RangeFloat(lte=at))])
        records, _ = self._shard.scroll(
            qe.ScrollRequest(
                limit=limit, filter=flt, with_payload=[TENANT_FIELD, "agent_id", "session_id", PROJECT_FIELD]
            )
        )
        return scopes_of(r.payload or {} for r in records)

    def count(self, where: RecordFilter) -> int:
        """Exact count."""
        return self._shard.count(qe.CountRequest(exact=True, filter=_filter(where)))

    def delete(self, where: RecordFilter) -> None:
        """Delete every record the filter matches."""
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(_filter(where)))
        self._term_counts.forget([where.user_id])
        self._writes.wrote([where.user_id])

    def scan(
        self,
        where: RecordFilter | None = None,
        with_vectors: bool = False,
        page_size: int = 256,
        after: str | None = None,
    ) -> Iterator[FoundPoint]:
        """Id order, paged by the shard's own offsets, so a large store never loads at once."""
        flt = _filter(where) if where is not None else None
        offset: Any = after  # an offset is inclusive: the point `after` itself is left out below
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
                if after is None or str(r.id) != after:
                    yield FoundPoint(str(r.id), r.payload or {}, dense=dense_vector(r.vector))
            if offset is None or not records:
                return

    def reindex(self, rewrite: Rewrite, progress: Callable[[int], None], batch: int = 64) -> None:
        """Copy every point, rewritten, into a new shard; the layout file names it once all are in."""
        if not self.stale:
            return
        name = f"{_SHARD_DIR}-v{self._layout.schema_version}"
        target_dir = self._path / name
        progress_file = self._path / _REINDEX_PROGRESS
        state: dict[str, Any] = {"next": None, "points": 0}
        if target_dir.exists() and progress_file.exists():
            state = json.loads(progress_file.read_text(encoding="utf-8"))
            log.info("resuming the re-index of %s after %d points", self._path, state["points"])
        elif target_dir.exists():
            shutil.rmtree(target_dir)  # begun, but not one page recorded: start over
        target = self._open(target_dir, self._layout.dimension)
        offset: Any = state["next"]
        done = int(state["points"])
        while True:
            records, offset = self._shard.scroll(
                qe.ScrollRequest(offset=offset, limit=batch, with_payload=True, with_vector=[DENSE])
            )
            found = [FoundPoint(str(r.id), r.payload or {}, dense=dense_vector(r.vector)) for r in records]
            rewritten = rewrite(found)
            if rewritten:
                target.update(
                    qe.UpdateOperation.upsert_points([qe.Point(p.id, _vectors(p), dict(p.payload)) for p in rewritten])
                )
            target.flush()  # the page is on disk before the progress file says so
            done += len(records)
            next_id = offset if offset is None or isinstance(offset, int) else str(offset)
            _write_atomically(progress_file, json.dumps({"next": next_id, "points": done}))
            progress(done)
            if offset is None or not records:
                break
        target.close()
        with self._write_lock:
            # The commit point: from here on the store is the new shard.
            _write_atomically(self._layout_file, json.dumps({**self._layout.to_dict(), "shard": name}, indent=2))
            self._shard.flush()
            self._shard.close()
            self._shard_name = name
            self._shard = self._open(target_dir, self._layout.dimension)
            self.stale = False
            self._drop_leftovers()
        self._term_counts.forget([None])
        self._writes.wrote([None])

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
    must += [qe.FieldCondition(key, match=qe.MatchValue(value)) for key, value in where.all_of()]
    tiers = where.tiers()
    if tiers is not None:
        projects, with_global = tiers
        options: list[Any] = [qe.FieldCondition(PROJECT_FIELD, match=qe.MatchAny(list(projects)))] if projects else []
        if with_global:
            options.append(qe.IsEmptyCondition(PROJECT_FIELD))
        must.append(options[0] if len(options) == 1 else qe.Filter(should=options))
    if where.since_ts is not None or where.until_ts is not None:
        must.append(qe.FieldCondition("event_ts", range=qe.RangeFloat(gte=where.since_ts, lte=where.until_ts)))
    if where.live_at is not None:  # records without an expiry never expire
        alive = qe.FieldCondition(EXPIRES_FIELD, range=qe.RangeFloat(gt=where.live_at))
        must.append(qe.Filter(should=[qe.IsEmptyCondition(EXPIRES_FIELD), alive]))
    if where.expired_at is not None:
        must.append(qe.FieldCondition(EXPIRES_FIELD, range=qe.RangeFloat(lte=where.expired_at)))
    if where.term is not None:
        must.append(qe.FieldCondition("terms", match=qe.MatchValue(where.term)))
    if where.ids:
        must.append(qe.HasIdCondition(set(where.ids)))
    must_not: list[Any] = [qe.HasIdCondition(set(skip_ids))] if skip_ids else []
    return qe.Filter(must=must, must_not=must_not or None)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
