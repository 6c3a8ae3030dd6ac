"""The LLM usage ledger: one vector-less record per LLM call, in the scope it was made for.

Kept in the store beside the memories, so every replica sees the same accounting and `forget`
removes a user's usage together with their memories. It observes the LLM client's calls (see
events.py), so no stage writes to it.
"""

from __future__ import annotations

from lightmem_mcp.events import MemoryObserver
from lightmem_mcp.records import LedgerEntry, LLMCall
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import now


class UsageLedger(MemoryObserver):
    """Writes what each LLM call cost and how it ended."""

    def __init__(self, store: VectorStore) -> None:
        self._store = store

    def llm_called(self, call: LLMCall) -> None:
        """Persist one call, successful or not."""
        self._store.upsert([LedgerEntry.new(call, now()).point])
