"""Memories as MCP resources, for clients that attach context without a tool call.

Three templates under `lightmem://users/{user_id}/`:
- `records/{record_id}`: one record as JSON (what get_memory returns for it);
- `summaries/{window}{?agent_id,session_id,project}`: the scope's summaries of one window kind
  (all, session, day, week) as Markdown, newest period first;
- `stats{?agent_id,session_id,project}`: what stats returns, as JSON.

`resources/list` shows the caller's most recent summaries (as record resources) and their stats.
Search and recall results link to the records they cite (`resource_links`). Every read and list
goes through `Calls`, so a hosted caller reaches its own tenant's memories and nothing else: another
user id in a URI is refused, and a record of another user reads as not found.

Subscriptions are not offered: nothing here sends `notifications/resources/updated`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import cast, get_args
from urllib.parse import quote

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.resources import ResourceSecurity
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, Annotations, Icon, ResourceLink
from mcp.types import Resource as MCPResource
from pydantic import BaseModel

from lightmem_mcp.api import SummaryInfo, Window
from lightmem_mcp.auth import DEFAULT_USER, acting_user
from lightmem_mcp.calls import Calls
from lightmem_mcp.errors import LightMemError, NotFound
from lightmem_mcp.records import Scope

SCHEME = "lightmem"
RECORD_TEMPLATE = SCHEME + "://users/{user_id}/records/{record_id}"
SUMMARIES_TEMPLATE = SCHEME + "://users/{user_id}/summaries/{window}{?agent_id,session_id,project}"
STATS_TEMPLATE = SCHEME + "://users/{user_id}/stats{?agent_id,session_id,project}"
WINDOWS: tuple[str, ...] = get_args(Window)
# Summaries `resources/list` shows, newest first.
LISTED_SUMMARIES = 20
# Summaries one summaries resource holds, newest period first.
READ_SUMMARIES = 50
# Characters of a summary shown as its resource description.
DESCRIPTION_CHARS = 200
# Ids are opaque text, never paths: the SDK's path-traversal checks do not apply to them.
_OPAQUE = ResourceSecurity(exempt_params={"user_id", "record_id", "agent_id", "session_id", "project"})

# The server's icon, served inline: a client never fetches anything from elsewhere.
ICON = Icon(
    src="data:image/svg+xml;base64,"
    "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIHZpZXdCb3g9IjAgMCAzMiAzMiI+PHJlY3Qgd2lkdGg9"
    "IjMyIiBoZWlnaHQ9IjMyIiByeD0iNyIgZmlsbD0iIzFmM2E1ZiIvPjxjaXJjbGUgY3g9IjE2IiBjeT0iMTYiIHI9IjkiIGZp"
    "bGw9Im5vbmUiIHN0cm9rZT0iI2ZmZDE2NiIgc3Ryb2tlLXdpZHRoPSIyLjUiLz48Y2lyY2xlIGN4PSIxNiIgY3k9IjE2IiBy"
    "PSIzLjUiIGZpbGw9IiNmZmQxNjYiLz48L3N2Zz4=",
    mime_type="image/svg+xml",
    sizes=["any"],
)


def user_part(user_id: str) -> str:
    """A user id as one URI path segment."""
    return quote(user_id, safe="")


def record_uri(user_id: str, record_id: str) -> str:
    """The resource of one record."""
    return f"{SCHEME}://users/{user_part(user_id)}/records/{record_id}"


def stats_uri(user_id: str) -> str:
    """The resource of a user's stats (every agent, session and project)."""
    return f"{SCHEME}://users/{user_part(user_id)}/stats"


def resource_links(user_id: str, cited: Sequence[tuple[str, str, str, datetime]]) -> list[ResourceLink]:
    """Links to the records a result cites: (id, kind, text, event time) each, in the result's order."""
    links: list[ResourceLink] = []
    for record_id, kind, text, when in dict.fromkeys(cited):
        links.append(
            ResourceLink(
                type="resource_link",
                uri=record_uri(user_id, record_id),
                name=f"{kind}-{record_id}",
                title=f"{kind.capitalize()} of {when:%Y-%m-%d %H:%M}",
                description=shortened(text),
                mime_type="application/json",
            )
        )
    return links


def shortened(text: str, chars: int = DESCRIPTION_CHARS) -> str:
    """A memory's text on one line, cut to `chars` with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


@contextmanager
def invalid_params() -> Iterator[None]:
    """A read the caller may not make, or made wrong (a domain error): an invalid-params error
    carrying the reason, which names the field and the fix."""
    try:
        yield
    except LightMemError as exc:
        raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc


def _json(model: BaseModel) -> str:
    return model.model_dump_json(indent=2)


def summaries_markdown(scope: Scope, window: str, summaries: Sequence[SummaryInfo]) -> str:
    """The summaries of one window kind as one Markdown document, newest period first."""
    who = f"user {scope.user_id}" + "".join(
        f", {label} {value}"
        for label, value in (("agent", scope.agent_id), ("session", scope.session_id), ("project", scope.project))
        if value
    )
    lines = [f"# Summaries by {window} of {who}", ""]
    if not summaries:
        lines.append(f"No {window} summaries yet: call the summarize tool with window={window!r} to write them.")
    for summary in summaries:
        heading = "Everything" if summary.window == "all" else f"{summary.window.capitalize()} {summary.window_key}"
        if summary.topic:
            heading += f" (topic: {summary.topic})"
        lines += [
            f"## {heading}",
            f"{summary.start:%Y-%m-%d %H:%M} to {summary.end:%Y-%m-%d %H:%M} UTC · {len(summary.source_ids)} "
            f"messages · {record_uri(scope.user_id, summary.id)}",
            "",
            summary.text,
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def register_resources(server: MCPServer, calls: Calls) -> None:
    """The record, summaries and stats templates (reads); `list_resources` answers the list."""

    async def scope(
        user_id: str, agent_id: str | None = None, session_id: str | None = None, project: str | None = None
    ) -> Scope:
        # Empty query values are absent ones; a missing project reads every tier.
        return await calls.scope(user_id, agent_id or None, session_id or None, project or "all")

    @server.resource(
        RECORD_TEMPLATE,
        name="record",
        title="Memory record",
        description="One stored message, fact or summary with its provenance, as get_memory returns it.",
        mime_type="application/json",
        icons=[ICON],
        security=_OPAQUE,
    )
    async def record(user_id: str, record_id: str) -> str:
        with invalid_params():
            where = await scope(user_id)
            found = await calls.run(lambda m: m.get([record_id], where))
            if not found.records:
                raise NotFound(f"record_id: no record {record_id!r} of user {where.user_id!r}")
        return _json(found.records[0])

    @server.resource(
        SUMMARIES_TEMPLATE,
        name="summaries",
        title="Memory summaries",
        description="The summaries of a user's memories for one window kind (all, session, day or week), newest "
        "first, as Markdown; agent_id, session_id and project narrow the scope.",
        mime_type="text/markdown",
        icons=[ICON],
        security=_OPAQUE,
    )
    async def summaries(user_id: str, window: str, agent_id: str = "", session_id: str = "", project: str = "") -> str:
        if window not in WINDOWS:
            raise MCPError(code=INVALID_PARAMS, message=f"window: {window!r} is not one of {', '.join(WINDOWS)}")
        with invalid_params():
            where = await scope(user_id, agent_id, session_id, project)
            found = await calls.run(lambda m: m.summaries(where, cast(Window, window), READ_SUMMARIES))
        return summaries_markdown(where, window, found)

    @server.resource(
        STATS_TEMPLATE,
        name="stats",
        title="Memory statistics",
        description="What a user's memory holds and what its LLM calls cost, as the stats tool returns it.",
        mime_type="application/json",
        icons=[ICON],
        security=_OPAQUE,
    )
    async def stats(user_id: str, agent_id: str = "", session_id: str = "", project: str = "") -> str:
        with invalid_params():
            where = await scope(user_id, agent_id, session_id, project)
            return _json(await calls.run(lambda m: m.stats(where)))


async def listed_resources(calls: Calls) -> list[MCPResource]:
    """What `resources/list` shows the caller: their newest summaries, then their stats."""
    try:
        user = acting_user(DEFAULT_USER)
        found = await calls.run(lambda m: m.summaries(Scope(user), None, LISTED_SUMMARIES))
    except LightMemError:
        return []  # no read access, or the store is not ready: nothing to show yet
    listed = [
        MCPResource(
            uri=record_uri(user, summary.id),
            name=f"summary-{summary.window}-{summary.window_key}",
            title=_summary_title(summary),
            description=shortened(summary.text),
            mime_type="application/json",
            icons=[ICON],
            annotations=Annotations(
                audience=["user", "assistant"], priority=0.5, last_modified=summary.end.isoformat()
            ),
        )
        for summary in found
    ]
    listed.append(
        MCPResource(
            uri=stats_uri(user),
            name="stats",
            title="Memory statistics",
            description=f"What the memory of user {user} holds and what its LLM calls cost.",
            mime_type="application/json",
            icons=[ICON],
        )
    )
    return listed


def _summary_title(summary: SummaryInfo) -> str:
    title = {
        "all": "Summary of everything",
        "session": f"Summary of session {summary.window_key}",
        "day": f"Summary of {summary.window_key}",
        "week": f"Summary of week {summary.window_key}",
    }[summary.window]
    return title + (f" ({summary.topic})" if summary.topic else "")
