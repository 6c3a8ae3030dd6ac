"""The sleep-time schedule: delete expired memories, consolidate and summarize in the background.

Consolidation and summaries are off unless `LIGHTMEM_SLEEP_INTERVAL_MINUTES` or
`LIGHTMEM_SLEEP_AFTER_FACTS` is set; expired memories are deleted every
`LIGHTMEM_SLEEP_PURGE_INTERVAL_MINUTES` (no LLM needed) and at each scheduled run. One worker
thread runs the work, so a run never overlaps itself; requests that arrive while it works are
merged into the next run. What is due is read from the store (facts still at
`stage = "extracted"`, the per-user summary mark), so a restart picks up where the last run
stopped and nothing is kept in this process.
"""

from __future__ import annotations

import logging
import threading
import time

from lightmem_mcp.config import SleepSettings
from lightmem_mcp.consolidate import Consolidator
from lightmem_mcp.events import MemoryObserver
from lightmem_mcp.expiry import ExpiryPurger
from lightmem_mcp.records import RecordFilter, Scope
from lightmem_mcp.store import VectorStore
from lightmem_mcp.summarize import Summarizer

log = logging.getLogger(__name__)

_MAX_SCOPES = 10_000


class SleepSchedule(MemoryObserver):
    """Runs the purge of expired memories, consolidation, then summaries of the days with new facts,
    every N minutes or after M facts."""

    def __init__(
        self,
        settings: SleepSettings,
        store: VectorStore,
        consolidator: Consolidator,
        summarizer: Summarizer,
        purger: ExpiryPurger | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._consolidator = consolidator
        self._summarizer = summarizer
        self._purger = purger
        self._wake = threading.Condition()
        self._due: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._scheduling = False

    @property
    def enabled(self) -> bool:
        """Whether an interval or a fact count is set."""
        return self._settings.interval_minutes > 0 or self._settings.after_facts > 0

    @property
    def purging(self) -> bool:
        """Whether expired memories are deleted on their own cadence."""
        return self._purger is not None and self._settings.purge_interval_minutes > 0

    def start(self, llm: bool = True) -> None:
        """Start the worker thread if the schedule is on, or expired memories are purged. Without an
        LLM (`llm` false) only the purge runs: consolidation and summaries need one."""
        self._scheduling = self.enabled and llm
        if (self._scheduling or self.purging) and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lightmem-sleep", daemon=True)
            self._thread.start()

    def facts_stored(self, scope: Scope, count: int) -> None:
        """After extraction: wake the worker when the user has `after_facts` facts not yet consolidated."""
        if self._thread is None or self._settings.after_facts <= 0 or count <= 0:
            return
        waiting = self._store.count(
            RecordFilter(scope.user_id, kinds=("fact",), statuses=("active",), stages=("extracted",))
        )
        if waiting >= self._settings.after_facts:
            self._request(scope.user_id)

    def close(self) -> None:
        """Stop after the current run, if any."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _request(self, user_id: str) -> None:
        with self._wake:
            self._due.add(user_id)
            self._wake.notify_all()

    def _loop(self) -> None:
        interval = self._settings.interval_minutes * 60 if self._scheduling else None
        purge_every = self._settings.purge_interval_minutes * 60 if self.purging else None
        next_run = time.monotonic() + interval if interval else None
        next_purge = time.monotonic() if purge_every else None  # expired while stopped: deleted at once
        while True:
            with self._wake:
                timeout = _until(next_run, next_purge)
                if not self._due and not self._stopping and (timeout is None or timeout > 0):
                    self._wake.wait(timeout=timeout)
                if self._stopping:
                    return
                due, self._due = self._due, set()
            started = time.monotonic()
            scheduled = next_run is not None and started >= next_run
            try:
                if due or scheduled:
                    self.run_once(None if scheduled else sorted(due))
                elif next_purge is not None and started >= next_purge and self._purger is not None:
                    self._purger.purge()
            except Exception:  # the schedule must outlive a bad run; the next one retries
                log.exception("sleep-time run failed; it is retried at the next interval")
            if scheduled and interval:
                next_run = time.monotonic() + interval
            if purge_every and (due or scheduled or started >= (next_purge or 0)):
                next_purge = time.monotonic() + purge_every  # every run purges first

    def run_once(self, users: list[str] | None = None) -> None:
        """Delete every user's expired memories, consolidate the given users (default: everyone with new
        facts), then summarize their new days."""
        if self._purger is not None:
            self._purger.purge()
        if users is None:
            users = sorted({scope.user_id for scope in self._store.pending_scopes(_MAX_SCOPES, "fact", "extracted")})
        for user in users:
            done = self._consolidator.run(Scope(user))
            if done.error:
                log.warning("sleep-time consolidation stopped: %s", done.error)
                return
            if self._settings.summarize:
                summarized = self._summarizer.run_scheduled(user)
                if summarized is not None and summarized.error:
                    log.warning("sleep-time summaries stopped: %s", summarized.error)
                    return


def _until(*moments: float | None) -> float | None:
    """Seconds to the earliest of the (monotonic) moments set; None when none is."""
    set_moments = [m for m in moments if m is not None]
    return max(0.0, min(set_moments) - time.monotonic()) if set_moments else None
