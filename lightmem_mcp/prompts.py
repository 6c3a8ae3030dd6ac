"""Prompts a person picks from their client's menu: recall a topic, save this conversation,
review a week. Each fills in what the memory holds (through `Calls`, so the tenant rules of the
tools apply) or tells the agent which tools to call."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS
from pydantic import Field

from lightmem_mcp.api import SummaryInfo
from lightmem_mcp.calls import Calls
from lightmem_mcp.recall import DEFAULT_RECALL_CONTEXT, DEFAULT_RECALL_TOKENS, MAX_RECALL_TOKENS, MIN_RECALL_TOKENS
from lightmem_mcp.records import Scope
from lightmem_mcp.resources import ICON, invalid_params, record_uri
from lightmem_mcp.timestamps import now

# An ISO week as the summarizer keys it, e.g. 2026-W48.
WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
# Summaries read to find one week's.
_SUMMARIES_READ = 200

UserArg = Annotated[
    str | None, Field(description="Whose memory. Default: yours (the default user, or your token's tenant).")
]
SessionArg = Annotated[str | None, Field(description="Optional: only this conversation session.")]


def current_week() -> str:
    """This ISO week, as the summarizer names weeks."""
    year, week, _ = now().isocalendar()
    return f"{year}-W{week:02d}"


def week_days(week: str) -> tuple[date, date]:
    """The Monday and Sunday of an ISO week like 2026-W48."""
    match = WEEK.match(week)
    if match is None:
        raise MCPError(code=INVALID_PARAMS, message=f"week: {week!r} is not an ISO week: write it like 2026-W48")
    try:
        monday = date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise MCPError(code=INVALID_PARAMS, message=f"week: {week!r} has no such week number") from None
    return monday, monday + timedelta(days=6)


def register_prompts(server: MCPServer, calls: Calls) -> None:
    """The three prompts of the menu."""

    async def scope(user_id: str | None, session_id: str | None = None) -> Scope:
        with invalid_params():
            return await calls.scope(user_id or "default", None, session_id or None)

    @server.prompt(title="Recall what is known about a topic", icons=[ICON])
    async def recall_topic(
        topic: Annotated[str, Field(description="What to recall, e.g. 'travel plans' or 'the deploy script'.")],
        max_tokens: Annotated[
            str | None,
            Field(
                description=f"Token budget of the recalled memories, {MIN_RECALL_TOKENS} to {MAX_RECALL_TOKENS} "
                f"(default {DEFAULT_RECALL_TOKENS})."
            ),
        ] = None,
        session_id: SessionArg = None,
        user_id: UserArg = None,
    ) -> str:
        """Put what long-term memory holds about a topic into the conversation: the most relevant
        memories with the messages around them, within a token budget, citing their message ids."""
        budget = DEFAULT_RECALL_TOKENS
        if max_tokens:
            if not max_tokens.strip().isdigit():
                raise MCPError(code=INVALID_PARAMS, message=f"max_tokens: {max_tokens!r} is not a whole number")
            budget = int(max_tokens)
        where = await scope(user_id, session_id)
        with invalid_params():
            found = await calls.run(lambda m: m.recall(topic, where, budget, DEFAULT_RECALL_CONTEXT))
        if not found.context:
            return (
                f"My long-term memory holds nothing about {topic!r} yet. Say so if it matters, and keep what "
                "we learn about it with add_memory."
            )
        return (
            f"Here is what my long-term memory holds about {topic!r} ({found.tokens} tokens, oldest first; "
            "each line cites its message id):\n\n"
            f"{found.context}\n\n"
            "Use it where it helps, say which memories you relied on, and prefer the newest when they disagree."
        )

    @server.prompt(title="Save this conversation to memory", icons=[ICON])
    async def save_conversation(
        session_id: Annotated[
            str | None,
            Field(description="Optional: a name for this conversation, stored as its session id."),
        ] = None,
        user_id: UserArg = None,
    ) -> str:
        """Have the agent store this conversation in long-term memory: every message through
        add_memory, then flush_memory so the facts are extracted now."""
        where = await scope(user_id)
        session = f', session_id "{session_id}"' if session_id else ""
        user = f', user_id "{where.user_id}"' if user_id else ""
        return (
            "Save this conversation to long-term memory:\n"
            f"1. Call add_memory with every message of this conversation so far, oldest first, both mine "
            f"(role user) and yours (role assistant){session}{user}. Keep each message's words as they were "
            "said; give each its timestamp when you know it, and a speaker name when several people talk. "
            "Send at most 100 messages per call; send the rest in further calls, in order.\n"
            f"2. Then call flush_memory once{session}{user}, so the facts are extracted now rather than when "
            "the buffer fills.\n"
            "3. Tell me how many messages you stored. Do not summarize or rewrite them: the memory keeps the "
            "words and extracts the facts itself."
        )

    @server.prompt(title="Review a week", icons=[ICON])
    async def review_week(
        week: Annotated[
            str | None, Field(description="The ISO week, e.g. 2026-W48. Default: the current week.")
        ] = None,
        user_id: UserArg = None,
    ) -> str:
        """Review a week from its summaries: the week's summary and its daily summaries, to go over
        what happened, what was decided and what is still open."""
        chosen = week or current_week()
        monday, sunday = week_days(chosen)
        where = await scope(user_id)
        with invalid_params():
            found = await calls.run(lambda m: m.summaries(where, None, _SUMMARIES_READ))
        days = {(monday + timedelta(days=n)).isoformat() for n in range(7)}
        weekly = [s for s in found if s.window == "week" and s.window_key == chosen]
        daily = sorted((s for s in found if s.window == "day" and s.window_key in days), key=lambda s: s.window_key)
        if not weekly and not daily:
            return (
                f"There are no summaries of week {chosen} ({monday} to {sunday}) yet. Call summarize with "
                f'window "week", since "{monday}T00:00:00Z" and until "{sunday}T23:59:59Z" (and window "day" for '
                "a day-by-day view), then review the week from the summaries it returns: what happened, what "
                "was decided, what is still open."
            )
        parts = [f"Review week {chosen} ({monday} to {sunday}) from my long-term memory's summaries.", ""]
        parts += _summary_sections(where.user_id, weekly, "The week")
        parts += _summary_sections(where.user_id, daily, None)
        parts.append("Go over what happened, what was decided and what is still open; cite the days.")
        return "\n".join(parts)


def _summary_sections(user_id: str, summaries: list[SummaryInfo], heading: str | None) -> list[str]:
    lines: list[str] = []
    for summary in summaries:
        title = heading or summary.window_key
        lines += [f"## {title}", summary.text, f"({record_uri(user_id, summary.id)})", ""]
    return lines
