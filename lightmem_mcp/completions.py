"""Completions of prompt and resource-template arguments: session ids, agents, projects, topics,
windows and weeks, taken from the caller's own memories (through `Calls`, so a hosted caller is
offered its tenant's values and nothing else)."""

from __future__ import annotations

from datetime import timedelta

from mcp.server.mcpserver import MCPServer
from mcp.types import Completion, CompletionArgument, CompletionContext, PromptReference, ResourceTemplateReference

from lightmem_mcp.api import Suggestion
from lightmem_mcp.auth import DEFAULT_USER, acting_user
from lightmem_mcp.calls import Calls
from lightmem_mcp.errors import LightMemError
from lightmem_mcp.records import Scope
from lightmem_mcp.resources import WINDOWS
from lightmem_mcp.timestamps import now

# The most values one completion returns (the protocol's limit).
MAX_VALUES = 100
# Weeks offered for review_week: this one and the ones before it.
RECENT_WEEKS = 12
# What each argument name completes from: a stored field.
FROM_STORE: dict[str, Suggestion] = {
    "session_id": "session_id",
    "agent_id": "agent_id",
    "project": "project",
    "topic": "topic",
}


def register_completions(server: MCPServer, calls: Calls) -> None:
    """One handler for every prompt and template argument."""

    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        known = dict(context.arguments or {}) if context is not None else {}
        values = await _values(calls, argument.name, argument.value, known)
        return Completion(values=values[:MAX_VALUES], total=len(values), has_more=len(values) > MAX_VALUES)

    server.completion()(complete)  # type: ignore[no-untyped-call]  # the SDK's decorator is unannotated


async def _values(calls: Calls, name: str, typed: str, known: dict[str, str]) -> list[str]:
    """Values for argument `name` starting with `typed`; none for an argument that has no list of values."""
    try:
        user = acting_user(known.get("user_id") or DEFAULT_USER)
    except LightMemError:
        return []  # another tenant's user id: nothing of theirs is offered
    if name == "user_id":
        return [user] if user.startswith(typed) else []
    if name == "window":
        return [w for w in WINDOWS if w.startswith(typed)]
    if name == "week":
        return [w for w in _recent_weeks() if w.startswith(typed)]
    field = FROM_STORE.get(name)
    if field is None:
        return []
    scope = Scope(user, known.get("agent_id") or None, known.get("session_id") if name != "session_id" else None)
    try:
        found = await calls.run(lambda m: m.suggest(scope, field, typed, MAX_VALUES + 1))
        if field == "topic":
            # Topics asked about before, then the people the memories name.
            found += [s for s in await calls.run(lambda m: m.suggest(scope, "speaker", typed, MAX_VALUES)) if s]
    except LightMemError:
        return []
    return list(dict.fromkeys(found))


def _recent_weeks() -> list[str]:
    today = now()
    weeks: list[str] = []
    for back in range(RECENT_WEEKS):
        year, week, _ = (today - timedelta(weeks=back)).isocalendar()
        weeks.append(f"{year}-W{week:02d}")
    return weeks
