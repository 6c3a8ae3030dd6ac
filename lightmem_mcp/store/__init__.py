"""Vector stores behind one small protocol: the embedded Qdrant Edge shard, or a Qdrant server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from lightmem_mcp.config import StoreSettings
from lightmem_mcp.records import FoundPoint, RecordFilter, Scope, SparseVector, StoredPoint, scope_of
from lightmem_mcp.store.schema import DENSE, StoreLayout


def dense_vector(vector: object) -> list[float] | None:
    """The dense vector out of a store's named-vector mapping, if it was returned."""
    if isinstance(vector, dict) and DENSE in vector:
        return [float(x) for x in vector[DENSE]]
    return None


def scopes_of(payloads: Iterable[dict[str, Any]]) -> list[Scope]:
    """The distinct exact scopes (user, agent, session, project) of some records' payloads, in a stable order."""
    return sorted(set(map(scope_of, payloads)), key=str)


class TermCounts:
    """Per-user BM25 statistics remembered between searches: counting a term over a large user's
    records reads its postings (milliseconds at 100k records), and a user's queries share words.
    A user's counts are dropped when this process writes or deletes that user's records, and after
    `ttl_s` (other processes writing the same store: replicas sharing a Qdrant server)."""

    def __init__(self, ttl_s: float | None) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._users: dict[str, tuple[float, int, dict[int, int]]] = {}
        # Bumped by every write of the user (and for everyone by `forget(None)`): counts taken
        # before a write are never remembered after it.
        self._generations: dict[str, int] = {}
        self._epoch = 0

    def get(self, count: Callable[[RecordFilter], int], user_id: str, terms: Sequence[int]) -> tuple[int, list[int]]:
        """(the user's records, how many hold each term), counted with `count` only where not
        remembered. Only the tenant and term indexes are used: a per-point check of `kind` would read
        every record of the user. The user's few LLM-ledger entries count in the total; they hold no
        terms."""
        now = time.monotonic()
        with self._lock:
            generation = (self._epoch, self._generations.get(user_id, 0))
            entry = self._users.get(user_id)
        if entry is None or (self._ttl_s is not None and now - entry[0] > self._ttl_s):
            entry = (now, count(RecordFilter(user_id)), {})
        taken, records, known = entry
        missing = [t for t in dict.fromkeys(terms) if t not in known]
        fresh = {t: count(RecordFilter(user_id, term=t)) if records else 0 for t in missing}
        counts = {**known, **fresh}
        with self._lock:
            if generation == (self._epoch, self._generations.get(user_id, 0)):
                self._users[user_id] = (taken, records, counts)
        return records, [counts[t] for t in terms]

    def forget(self, user_ids: Iterable[str | None]) -> None:
        """Drop these users' counts (None: everyone's)."""
        with self._lock:
            for user_id in user_ids:
                if user_id is None:
                    self._users.clear()
                    self._epoch += 1
                else:
                    self._users.pop(user_id, None)
                    self._generations[user_id] = self._generations.get(user_id, 0) + 1


class Writes:
    """How often this process has changed each user's records: a derived figure (such as a user's
    stats) taken at one count is still true while the count stays the same, for this process's writes.
    `None` stands for every user (a re-index)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}
        self._everyone = 0

    def wrote(self, user_ids: Iterable[str | None]) -> None:
        """Count a change to these users' records."""
        with self._lock:
            for user_id in user_ids:
                if user_id is None:
                    self._everyone += 1
                else:
                    self._users[user_id] = self._users.get(user_id, 0) + 1

    def of(self, user_id: str) -> tuple[int, int]:
        """The user's count (and everyone's): equal counts mean no change in between."""
        with self._lock:
            return self._everyone, self._users.get(user_id, 0)


# Rewrites a page of points into the current layout (fresh vectors, updated payload) during a re-index.
Rewrite = Callable[[Sequence[FoundPoint]], list[StoredPoint]]


class VectorStore(Protocol):
    """The operations the memory service needs; every read and delete is bounded by a `RecordFilter`."""

    # Written by an older lightmem-mcp: `reindex` must run before the store is used.
    stale: bool

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        """Write points atomically (all or none) and durably."""

    def nearest(
        self, vector: list[float] | SparseVector, where: RecordFilter, limit: int, with_payload: bool = True
    ) -> list[FoundPoint]:
        """Best matches first: a dense vector by cosine, a sparse one by dot product with the lexical
        vectors (BM25 when the query carries the IDF weights of `LexicalEncoder.weigh`)."""

    def term_stats(self, user_id: str, terms: Sequence[int]) -> tuple[int, list[int]]:
        """How many of the user's memories are lexically indexed, and how many of them hold each
        term: BM25 statistics from the user's own records, never another tenant's."""

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

    def values(self, field: str, where: RecordFilter, limit: int) -> list[str]:
        """Distinct values of an indexed keyword field among the matches, most frequent first."""

    def pending_scopes(self, limit: int, kind: str = "turn", stage: str = "pending") -> list[Scope]:
        """The exact scopes (user, agent, session, project) of records of `kind` at `stage`, across
        users: turns waiting for extraction (the default), facts waiting for consolidation."""

    def expired_scopes(self, at: float, limit: int) -> list[Scope]:
        """The exact scopes holding records expired at `at` (epoch seconds), across users, found among
        up to `limit` of those records: the purge's work."""

    def written(self, user_id: str) -> tuple[int, int]:
        """Changes whenever this process writes, updates or deletes the user's records (`Writes`)."""

    def count(self, where: RecordFilter) -> int:
        """How many records match."""

    def delete(self, where: RecordFilter) -> None:
        """Delete every match."""

    def scan(
        self,
        where: RecordFilter | None = None,
        with_vectors: bool = False,
        page_size: int = 256,
        after: str | None = None,
    ) -> Iterator[FoundPoint]:
        """Every match in id order, vector-less points included, read a page at a time; with `after` (a
        point id, stored or not), only those whose id comes after it. `None` matches every point of every
        user: for export and accounting only, never for a tool's read."""

    def reindex(self, rewrite: Rewrite, progress: Callable[[int], None], batch: int = 64) -> None:
        """Rewrite every point into the current layout, a page at a time, resumable: a run that is
        killed midway continues where it stopped, and the store serves the old layout until done."""

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
