"""What the memory tells its observers: turns stored, facts written, LLM calls made.

One mechanism for every listener: the usage ledger persists each LLM call, the sleep-time schedule
counts new facts, the HTTP server's metrics count all three. An observer that fails is logged and
never fails the work it observes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from lightmem_mcp.records import LLMCall, Scope, Turn

log = logging.getLogger(__name__)


class MemoryObserver:
    """Told what the memory did; an observer overrides what it wants to hear."""

    def turns_stored(self, turns: Sequence[Turn]) -> None:
        """After add_memory stored these turns."""

    def turns_compressed(self, turns: Sequence[Turn]) -> None:
        """After a buffer compressed these turns (deferred at add) and stored their compressed words."""

    def facts_stored(self, scope: Scope, count: int) -> None:
        """After extraction wrote `count` facts for the scope."""

    def llm_called(self, call: LLMCall) -> None:
        """After an LLM call ended, answered or not."""


class Observers(MemoryObserver):
    """Hands each event to every observer, in the order they were added."""

    def __init__(self, observers: Sequence[MemoryObserver] = ()) -> None:
        self._observers = list(observers)

    def add(self, observer: MemoryObserver) -> None:
        """Also tell `observer`."""
        self._observers.append(observer)

    def turns_stored(self, turns: Sequence[Turn]) -> None:
        """Tell every observer."""
        self._tell(lambda observer: observer.turns_stored(turns), "stored turns")

    def turns_compressed(self, turns: Sequence[Turn]) -> None:
        """Tell every observer."""
        self._tell(lambda observer: observer.turns_compressed(turns), "compressed turns")

    def facts_stored(self, scope: Scope, count: int) -> None:
        """Tell every observer."""
        self._tell(lambda observer: observer.facts_stored(scope, count), "stored facts")

    def llm_called(self, call: LLMCall) -> None:
        """Tell every observer."""
        self._tell(lambda observer: observer.llm_called(call), "an LLM call")

    def _tell(self, event: Callable[[MemoryObserver], None], what: str) -> None:
        for observer in self._observers:
            try:
                event(observer)
            except Exception:  # observing must never fail the work it observes
                log.exception("observer %s failed on %s", type(observer).__name__, what)
