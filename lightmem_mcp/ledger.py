"""The LLM usage ledger: one vector-less record per LLM call, in the scope it was made for.

Kept in the store beside the memories, so every replica sees the same accounting and `forget`
removes a user's usage together with their memories.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lightmem_mcp.llm import LLMCall
from lightmem_mcp.records import Scope, StoredPoint, record_id
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import now

log = logging.getLogger(__name__)

LEDGER_KIND = "llm_call"


class UsageLedger:
    """Writes what each LLM call cost and how it ended."""

    def __init__(self, store: VectorStore) -> None:
        self._store = store
        self._listeners: list[Callable[[LLMCall], None]] = []

    def listen(self, listener: Callable[[LLMCall], None]) -> None:
        """Also hand every call to `listener` (the HTTP server's metrics), before it is persisted."""
        self._listeners.append(listener)

    def record(self, scope: Scope, call: LLMCall, *, turns: int = 0) -> None:
        """Persist one call, successful or not."""
        for listener in self._listeners:
            try:
                listener(call)
            except Exception:  # accounting must never fail the work it accounts for
                log.exception("LLM usage listener failed")
        recorded_at = now()
        payload: dict[str, object] = {
            "user_id": scope.user_id,
            "agent_id": scope.agent_id,
            "session_id": scope.session_id,
            "kind": LEDGER_KIND,
            "status": "active",
            "purpose": call.purpose,
            "provider": call.provider,
            "model": call.model,
            "ok": call.ok,
            "error": call.error,
            "attempts": call.attempts,
            "seconds": call.seconds,
            "prompt_tokens": call.usage.prompt_tokens,
            "completion_tokens": call.usage.completion_tokens,
            "cached_tokens": call.usage.cached_tokens,
            "turns": turns,
            "event_ts": call.started_at.timestamp(),
            "created_ts": recorded_at.timestamp(),
        }
        self._store.upsert([StoredPoint(record_id(scope, LEDGER_KIND, call.call_id), None, None, payload)])
