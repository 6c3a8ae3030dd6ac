"""A Qdrant server or cluster through `qdrant-client` (REST or gRPC): the hosted store."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from lightmem_mcp.errors import BackendUnavailable
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

log = logging.getLogger(__name__)


class QdrantServerStore:
    """One collection on a Qdrant server, shared by every replica; tenants are payload-partitioned."""

    def __init__(self, client: QdrantClient, collection: str, layout: StoreLayout) -> None:
        self._client = client
        self._collection = collection
        # Other replicas write the same collection: their writes show in the counts within a minute.
        self._term_counts = TermCounts(ttl_s=60.0)
        self._writes = Writes()
        where = f"collection {collection!r}"
        try:
            exists = client.collection_exists(collection)
            if not exists:
                self._create(layout)
            info = client.get_collection(collection)
        except (ApiException, grpc.RpcError, OSError, RuntimeError) as exc:
            # ApiException: REST errors and refused connections; RpcError: the same over gRPC.
            raise BackendUnavailable(f"cannot reach the Qdrant server for {where}: {exc}") from exc
        vectors = info.config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if dense is None:
            raise BackendUnavailable(
                f"{where} has no {DENSE!r} vector, so it was not created by lightmem-mcp: "
                "set LIGHTMEM_COLLECTION to a new name"
            )
        found = dict(info.config.metadata or {})
        found.setdefault("dimension", dense.size)
        found.setdefault("embedder", layout.embedder)
        self._layout = layout
        self._metadata = found
        self.stale = check_layout(found, layout, where)
        # An index added within the current schema (the project's, the metadata pairs', the expiry's)
        # is created as a collection of an earlier release opens: no re-index, since its records hold
        # none of those fields and the filters read a missing one as the global tier, no metadata and no
        # expiry. A stale collection gets them when re-indexed.
        missing = [name for name in (*KEYWORD_FIELDS, *FLOAT_FIELDS) if name not in (info.payload_schema or {})]
        if exists and missing and not self.stale:
            try:
                self._create_indexes(missing)
            except (ApiException, grpc.RpcError, OSError, RuntimeError) as exc:
                raise BackendUnavailable(f"cannot add the payload indexes of {where}: {exc}") from exc

    def _create(self, layout: StoreLayout) -> None:
        try:
            self._client.create_collection(
                self._collection,
                vectors_config={DENSE: qm.VectorParams(size=layout.dimension, distance=qm.Distance.COSINE)},
                # No IDF modifier: collection-wide statistics would mix tenants (see lexical.py).
                sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.NONE)},
                metadata=layout.to_dict(),
            )
        except (UnexpectedResponse, ValueError) as exc:
            # Another replica created it between our check and our create.
            if not self._client.collection_exists(self._collection):
                raise
            log.info("collection %s was created concurrently: %s", self._collection, exc)
        self._create_indexes()

    def _create_indexes(self, only: Sequence[str] | None = None) -> None:
        """Every payload index, or only the given keyword and float ones."""
        with warnings.catch_warnings():
            # Local mode (tests) warns that payload indexes are no-ops there.
            warnings.simplefilter("ignore", UserWarning)
            if only is not None:
                for name in only:
                    kind = qm.PayloadSchemaType.FLOAT if name in FLOAT_FIELDS else qm.PayloadSchemaType.KEYWORD
                    self._client.create_payload_index(self._collection, name, kind)
                return
            self._client.create_payload_index(
                self._collection,
                TENANT_FIELD,
                qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True),
            )
            for name in KEYWORD_FIELDS:
                self._client.create_payload_index(self._collection, name, qm.PayloadSchemaType.KEYWORD)
            for name in FLOAT_FIELDS:
                self._client.create_payload_index(self._collection, name, qm.PayloadSchemaType.FLOAT)
            for name in INTEGER_FIELDS:
                self._client.create_payload_index(self._collection, name, qm.PayloadSchemaType.INTEGER)

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        """One upsert request, acknowledged after the server's WAL write."""
        if not points:
            return
        self._client.upsert(
            self._collection,
            points=[qm.PointStruct(id=p.id, vector=_vectors(p), payload=dict(p.payload)) for p in points],
            wait=True,
        )
        self._term_counts.forget({str(p.payload.get(TENANT_FIELD)) for p in points})
        self._writes.wrote({str(p.payload.get(TENANT_FIELD)) for p in points})

    def nearest(
        self, vector: list[float] | SparseVector, where: RecordFilter, limit: int, with_payload: bool = True
    ) -> list[FoundPoint]:
        """Dense (cosine) or lexical (dot product) ranking within the filter."""
        common: dict[str, Any] = {"limit": limit, "query_filter": _filter(where), "with_payload": with_payload}
        if isinstance(vector, SparseVector):
            if not vector.indices:
                return []
            query = qm.SparseVector(indices=vector.indices, values=vector.values)
            response = self._client.query_points(self._collection, query=query, using=SPARSE, **common)
        else:
            response = self._client.query_points(self._collection, query=vector, using=DENSE, **common)
        return [FoundPoint(str(p.id), p.payload or {}, p.score) for p in response.points]

    def term_stats(self, user_id: str, terms: Sequence[int]) -> tuple[int, list[int]]:
        """Exact counts over the user's records (one count request per term, on the tenant's index)."""
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
        records, _ = self._client.scroll(
            self._collection,
            scroll_filter=_filter(where, skip_ids),
            limit=limit,
            with_payload=True,
            with_vectors=[DENSE] if with_vectors else False,
            order_by=qm.OrderBy(key="event_ts", direction=qm.Direction.DESC, start_from=before_ts),
        )
        return [FoundPoint(str(r.id), r.payload or {}, dense=dense_vector(r.vector)) for r in records]

    def set_payload(self, where: RecordFilter, values: dict[str, object]) -> None:
        """Set fields on every match."""
        self._client.set_payload(
            self._collection, payload=dict(values), points=qm.FilterSelector(filter=_filter(where)), wait=True
        )
        self._writes.wrote([where.user_id])

    def written(self, user_id: str) -> tuple[int, int]:
        """This process's changes to the user's records, counted (other replicas' writes are not)."""
        return self._writes.of(user_id)

    def values(self, field: str, where: RecordFilter, limit: int) -> list[str]:
        """The server's facet counts over the keyword index."""
        response = self._client.facet(self._collection, key=field, facet_filter=_filter(where), limit=limit, exact=True)
        return [str(hit.value) for hit in response.hits]

    def pending_scopes(self, limit: int, kind: str = "turn", stage: str = "pending") -> list[Scope]:
        """Scopes with records of `kind` at `stage`; the one query that crosses users, used to find
        background work (turns to extract, facts to consolidate)."""
        flt = qm.Filter(
            must=[
                qm.FieldCondition(key="kind", match=qm.MatchValue(value=kind)),
                qm.FieldCondition(key="stage", match=qm.MatchValue(value=stage)),
            ]
        )
        records, _ = self._client.scroll(
            self._collection,
            scroll_filter=flt,
            limit=limit,
            with_payload=[TENANT_FIELD, "agent_id", "session_id", PROJECT_FIELD],
        )
        return scopes_of(r.payload or {} for r in records)

    def expired_scopes(self, at: float, limit: int) -> list[Scope]:
        """Scopes with records expired at `at`; crosses users like `pending_scopes`, for the purge."""
        flt = qm.Filter(must=[qm.FieldCondition(key=EXPIRES_FIELD, range=qm.Range(lte=at))])
        records, _ = self._client.scroll(
            self._collection,
            scroll_filter=flt,
            limit=limit,
            with_payload=[TENANT_FIELD, "agent_id", "session_id", PROJECT_FIELD],
        )
        return scopes_of(r.payload or {} for r in records)

    def count(self, where: RecordFilter) -> int:
        """Exact count."""
        return self._client.count(self._collection, count_filter=_filter(where), exact=True).count

    def delete(self, where: RecordFilter) -> None:
        """Delete every record the filter matches."""
        self._client.delete(self._collection, points_selector=qm.FilterSelector(filter=_filter(where)), wait=True)
        self._term_counts.forget([where.user_id])
        self._writes.wrote([where.user_id])

    def scan(
        self,
        where: RecordFilter | None = None,
        with_vectors: bool = False,
        page_size: int = 256,
        after: str | None = None,
    ) -> Iterator[FoundPoint]:
        """Id order, paged by the server's next-page offsets."""
        offset: Any = after  # an offset is inclusive: the point `after` itself is left out below
        while True:
            records, offset = self._client.scroll(
                self._collection,
                scroll_filter=_filter(where) if where is not None else None,
                limit=page_size,
                offset=offset,
                with_payload=True,
                with_vectors=[DENSE] if with_vectors else False,
            )
            for r in records:
                if after is None or str(r.id) != after:
                    yield FoundPoint(str(r.id), r.payload or {}, dense=dense_vector(r.vector))
            if offset is None or not records:
                return

    def reindex(self, rewrite: Rewrite, progress: Callable[[int], None], batch: int = 64) -> None:
        """Rewrite every point in place, page by page; the collection's metadata records how far it
        got (a killed run resumes there) and, at the end, the new schema version."""
        if not self.stale:
            return
        self._client.update_collection(
            self._collection, sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.NONE)}
        )
        self._create_indexes()
        offset: Any = self._metadata.get("reindex_next")
        done = int(self._metadata.get("reindex_points") or 0)
        if offset is not None:
            log.info("resuming the re-index of collection %s after %d points", self._collection, done)
        while True:
            records, offset = self._client.scroll(
                self._collection, limit=batch, offset=offset, with_payload=True, with_vectors=[DENSE]
            )
            found = [FoundPoint(str(r.id), r.payload or {}, dense=dense_vector(r.vector)) for r in records]
            self.upsert(rewrite(found))
            done += len(records)
            if offset is None or not records:
                break
            self._client.update_collection(self._collection, metadata={"reindex_next": offset, "reindex_points": done})
            progress(done)
        self._client.update_collection(
            self._collection, metadata={**self._layout.to_dict(), "reindex_next": None, "reindex_points": None}
        )
        progress(done)
        self.stale = False

    def close(self) -> None:
        """Close the connection."""
        self._client.close()


def _vectors(point: StoredPoint) -> dict[str, Any]:
    vectors: dict[str, Any] = {}
    if point.dense is not None:
        vectors[DENSE] = point.dense
    if point.sparse is not None:
        vectors[SPARSE] = qm.SparseVector(indices=point.sparse.indices, values=point.sparse.values)
    return vectors


def _filter(where: RecordFilter, skip_ids: Sequence[str] = ()) -> qm.Filter:
    must: list[Any] = [qm.FieldCondition(key=key, match=qm.MatchValue(value=value)) for key, value in where.equal()]
    must += [qm.IsEmptyCondition(is_empty=qm.PayloadField(key=key)) for key in where.unset()]
    must += [qm.FieldCondition(key=key, match=qm.MatchAny(any=values)) for key, values in where.any_of()]
    must += [qm.FieldCondition(key=key, match=qm.MatchValue(value=value)) for key, value in where.all_of()]
    tiers = where.tiers()
    if tiers is not None:
        projects, with_global = tiers
        options: list[Any] = (
            [qm.FieldCondition(key=PROJECT_FIELD, match=qm.MatchAny(any=list(projects)))] if projects else []
        )
        if with_global:
            options.append(qm.IsEmptyCondition(is_empty=qm.PayloadField(key=PROJECT_FIELD)))
        must.append(options[0] if len(options) == 1 else qm.Filter(should=options))
    if where.since_ts is not None or where.until_ts is not None:
        must.append(qm.FieldCondition(key="event_ts", range=qm.Range(gte=where.since_ts, lte=where.until_ts)))
    if where.live_at is not None:  # records without an expiry never expire
        alive = qm.FieldCondition(key=EXPIRES_FIELD, range=qm.Range(gt=where.live_at))
        must.append(qm.Filter(should=[qm.IsEmptyCondition(is_empty=qm.PayloadField(key=EXPIRES_FIELD)), alive]))
    if where.expired_at is not None:
        must.append(qm.FieldCondition(key=EXPIRES_FIELD, range=qm.Range(lte=where.expired_at)))
    if where.term is not None:
        must.append(qm.FieldCondition(key="terms", match=qm.MatchValue(value=where.term)))
    if where.ids:
        must.append(qm.HasIdCondition(has_id=list(where.ids)))
    must_not: list[Any] = [qm.HasIdCondition(has_id=list(skip_ids))] if skip_ids else []
    return qm.Filter(must=must, must_not=must_not or None)
