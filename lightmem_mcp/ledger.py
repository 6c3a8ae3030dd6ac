"""The LLM usage ledger: one vector-less record per LLM call, in the scope it was made for.

Kept in the store beside the memories, so every replica sees the same accounting and `forget`
removes a user's usage together with their memories.
"""

from __future__ import annotations

from lightmem_mcp.llm import LLMCall
from lightmem_mcp.records import Scope, StoredPoint, record_id
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import now

LEDGER_KIND = "llm_call"


class UsageLedger:
    """Writes what each LLM call cost and how it ended."""

    def __init__(self, store: VectorStore) -> None:
        self._store = store

    def record(self, scope: Scope, call: LLMCall, *, turns: int = 0) -> None:
        """Persist one call, successful or not."""
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
