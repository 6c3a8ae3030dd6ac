"""Expiry: memories given a lifetime (add_memory's `ttl` or `expires_at`) end, and are deleted.

From the moment a memory expires, every read leaves it out: the `live_at` condition of the reads'
`RecordFilter` compares its `expires_ts` with the clock at query time, so nothing waits for a job.
The sleep-time job then deletes what has expired here, one exact scope at a time, and counts it per
scope in a vector-less `PurgeCount` point beside the scope's records (stats sums them; forget and
export take them with the scope). The rule for facts and summaries made from expiring memories is
`records.inherited`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from lightmem_mcp.lease import Leases
from lightmem_mcp.records import KINDS, PROGRESS_KIND, PurgeCount, RecordFilter, Scope
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import to_epoch

log = logging.getLogger(__name__)

# Expired records read at once to find the scopes holding them; the purge reads again until none is left.
_SCOPES_READ = 1_000
_LEASE_KEY = "purge-expired"


class ExpiryPurger:
    """Deletes expired memories across users and counts them; one replica at a time."""

    def __init__(self, store: VectorStore, leases: Leases, lease_ttl_s: float, clock: Callable[[], datetime]) -> None:
        self._store = store
        # The count is read, added to and written again: two replicas purging at once would count twice.
        self._leases = leases
        self._lease_ttl_s = lease_ttl_s
        self._clock = clock

    def purge(self) -> int:
        """Delete every memory expired now, of every user; returns how many went (0 when another replica
        is purging)."""
        at = self._clock()
        at_ts = to_epoch(at)
        total = 0
        with self._leases.hold(_LEASE_KEY, self._lease_ttl_s) as held:
            if not held:
                return 0
            while scopes := self._store.expired_scopes(at_ts, _SCOPES_READ):
                purged = sum(self._purge_scope(scope, at) for scope in scopes)
                total += purged
                if not purged:  # a scope listed but nothing deleted: never loop on it
                    break
        if total:
            log.info("deleted %d expired memories", total)
        return total

    def _purge_scope(self, scope: Scope, at: datetime) -> int:
        where = RecordFilter(
            scope.user_id,
            scope.agent_id,
            scope.session_id,
            kinds=KINDS,
            exact_scope=True,
            project=scope.project,
            expired_at=to_epoch(at),
        )
        count = self._store.count(where)
        if not count:
            return 0
        self._store.delete(where)
        count_id = PurgeCount.id_of(scope)
        found = self._store.scroll(RecordFilter(scope.user_id, kinds=(PROGRESS_KIND,), ids=(count_id,)), 1)
        before = PurgeCount.read(found[0]).purged if found else 0
        self._store.upsert([PurgeCount(count_id, before + count).point(scope, at)])
        return count
