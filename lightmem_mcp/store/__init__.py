"""Vector stores behind one small protocol: the embedded Qdrant Edge shard, or a Qdrant server."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lightmem_mcp.config import SearchMode, StoreSettings
from lightmem_mcp.records import FoundPoint, RecordFilter, SparseVector, StoredPoint
from lightmem_mcp.store.schema import DENSE, TENANT_FIELD, StoreLayout


@dataclass(frozen=True)
class Ranking:
    """How a query ranks: which vectors, and how their rankings are fused."""

    mode: SearchMode = "hybrid"
    rrf_k: int = 60
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    candidates: int = 100


def effective_mode(ranking: Ranking, sparse: SparseVector) -> SearchMode | None:
    """The mode a query can run in: a query without lexical terms (only stop words) is dense-only."""
    if sparse.indices or ranking.mode == "dense":
        return ranking.mode
    return "dense" if ranking.mode == "hybrid" else None


def dense_vector(vector: object) -> list[float] | None:
    """The dense vector out of a store's named-vector mapping, if it was returned."""
    if isinstance(vector, dict) and DENSE in vector:
        return [float(x) for x in vector[DENSE]]
    return None


def scopes_of(payloads: Iterable[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    """The distinct (user, agent, session) scopes of some records' payloads, in a stable order."""
    found = {(str(p[TENANT_FIELD]), p.get("agent_id"), p.get("session_id")) for p in payloads}
    return sorted(found, key=str)


class VectorStore(Protocol):
    """The operations the memory service needs; every read and delete is bounded by a `RecordFilter`."""

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        """Write points atomically (all or none) and durably."""

    def query(
        self, dense: list[float], sparse: SparseVector, where: RecordFilter, limit: int, ranking: Ranking
    ) -> list[FoundPoint]:
        """Best matches first."""

    def scroll(
        self,
        where: RecordFilter,
        limit: int,
        before_ts: float | None = None,
        skip_ids: Sequence[str] = (),
        with_vectors: bool = False,
    ) -> list[FoundPoint]:
        """Matches ordered by event time, newest first, starting at `before_ts` (inclusive)."""

    def set_payload(self, where: RecordFilter, values: dict[str, object]) -> None:
        """Set payload fields on every match, keeping the others."""

    def pending_scopes(
        self, limit: int, kind: str = "turn", stage: str = "pending"
    ) -> list[tuple[str, str | None, str | None]]:
        """(user, agent, session) of records of `kind` at `stage`, across users: turns waiting for
        extraction (the default), facts waiting for consolidation."""

    def count(self, where: RecordFilter) -> int:
        """How many records match."""

    def delete(self, where: RecordFilter) -> None:
        """Delete every match."""

    def scan(
        self, where: RecordFilter | None = None, with_vectors: bool = False, page_size: int = 256
    ) -> Iterator[FoundPoint]:
        """Every match in id order, vector-less points included, read a page at a time. `None` matches
        every point of every user: for export and accounting only, never for a tool's read."""

    def close(self) -> None:
        """Flush and release the store."""


def open_store(settings: StoreSettings, layout: StoreLayout) -> VectorStore:
    """The configured store: a Qdrant server when a URL is set, else the embedded shard."""
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        from lightmem_mcp.store.qdrant_server import QdrantServerStore

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        client = QdrantClient(url=settings.qdrant_url, api_key=api_key, prefer_grpc=settings.qdrant_grpc)
        return QdrantServerStore(client, settings.collection, layout)
    from lightmem_mcp.store.edge import EdgeStore

    return EdgeStore(settings.embedded_path, layout)
