"""The MCP surface beyond tools, driven in-process by the SDK's client in both protocol eras:
resources (list, templates, reads, links from search and recall), prompts, completions, the
person asked before destructive calls (accepted, declined, not askable), titles and icons, and
exactly the capabilities that are implemented."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import ElicitRequestParams, ElicitResult, ResourceLink, TextResourceContents

from lightmem_mcp.config import Settings
from lightmem_mcp.memory import Memory
from lightmem_mcp.server import MemoryProvider, build_server
from tests.test_server import call, error_of

pytestmark = pytest.mark.anyio

ERAS = ["legacy", "auto"]  # 2025-11-25 (initialize) and 2026-07-28 (stateless rounds)


class Person:
    """An elicitation callback: answers every question the same way and keeps them."""

    def __init__(self, action: str, confirm: bool = True) -> None:
        self.action = action
        self.confirm = confirm
        self.asked: list[str] = []

    async def __call__(self, _: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        self.asked.append(params.message)
        if self.action != "accept":
            return ElicitResult(action=self.action)  # type: ignore[arg-type]
        return ElicitResult(action="accept", content={"confirm": self.confirm})


def client(memory: Memory, settings: Settings, mode: str = "auto", person: Person | None = None) -> Client:
    server = build_server(settings, MemoryProvider(settings, lambda _: memory), close_on_exit=False)
    return Client(server, mode=mode, elicitation_callback=person)  # type: ignore[arg-type]


def conversation(session: str, *texts: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": text, "timestamp": f"2026-11-2{i + 3}T10:00:00Z"}
            for i, text in enumerate(texts)
        ],
        "user_id": "ana",
        "session_id": session,
    }


def text_of(contents: list[Any]) -> str:
    assert len(contents) == 1 and isinstance(contents[0], TextResourceContents)
    return contents[0].text


@pytest.mark.parametrize("mode", ERAS)
async def test_declares_what_it_implements_and_nothing_it_does_not(
    memory: Memory, settings: Settings, mode: str
) -> None:
    async with client(memory, settings, mode) as session:
        capabilities = session.server_capabilities
        tools = (await session.list_tools()).tools
        prompts = (await session.list_prompts()).prompts
        templates = (await session.list_resource_templates()).resource_templates

    assert capabilities is not None
    assert capabilities.completions is not None and capabilities.prompts is not None
    assert capabilities.resources is not None
    # No change notification is ever sent, so none is declared, in either era.
    assert not capabilities.resources.subscribe and not capabilities.resources.list_changed
    assert not capabilities.prompts.list_changed
    assert capabilities.tools is not None and not capabilities.tools.list_changed
    assert capabilities.logging is None
    assert all(tool.title and tool.icons for tool in tools)
    assert {p.name for p in prompts} == {"recall_topic", "save_conversation", "review_week"}
    assert all(p.title and p.description and p.icons for p in prompts)
    assert all(arg.description for p in prompts for arg in p.arguments or [])
    assert {t.name for t in templates} == {"record", "summaries", "stats"}
    assert all(t.title and t.description and t.mime_type for t in templates)


@pytest.mark.parametrize("mode", ERAS)
async def test_records_summaries_and_stats_read_as_resources(memory: Memory, settings: Settings, mode: str) -> None:
    async with client(memory, settings, mode) as session:
        added = await call(
            session,
            "add_memory",
            conversation("trip", "I booked a train to Lisbon for May.", "The hotel is near the Alfama district."),
        )
        await call(session, "summarize", {"user_id": "ana", "window": "day"})
        listed = (await session.list_resources()).resources
        found = await session.call_tool("search_memory", {"query": "train to Lisbon", "user_id": "ana"})
        record_link = next(c for c in found.content if isinstance(c, ResourceLink))
        record = json.loads(text_of((await session.read_resource(str(record_link.uri))).contents))
        days = text_of((await session.read_resource("lightmem://users/ana/summaries/day")).contents)
        weeks = text_of((await session.read_resource("lightmem://users/ana/summaries/week")).contents)
        stats = json.loads(
            text_of((await session.read_resource("lightmem://users/ana/stats?session_id=trip")).contents)
        )
        recalled = await session.call_tool("recall", {"query": "Where is the hotel?", "user_id": "ana"})

    # The list shows the caller's summaries (one per day) and their stats; "ana" is not the caller
    # here (stdio's caller is the default user), so the list holds the default user's: none.
    assert [r.name for r in listed] == ["stats"]
    assert found.structured_content is not None
    assert record_link.uri == f"lightmem://users/ana/records/{found.structured_content['hits'][0]['id']}"
    assert record["text"] == "I booked a train to Lisbon for May." and record["source_ids"] == [added["source_ids"][0]]
    assert "## Day 2026-11-23" in days and "## Day 2026-11-24" in days and "Lisbon" in days
    assert "No week summaries yet" in weeks
    assert stats["session_id"] == "trip" and sum(r["total"] for r in stats["records"]) >= 2
    assert any(isinstance(c, ResourceLink) and c.uri == record_link.uri for c in recalled.content)


async def test_the_resource_list_shows_the_callers_newest_summaries(memory: Memory, settings: Settings) -> None:
    async with client(memory, settings) as session:
        await call(session, "add_memory", {**conversation("s", "We adopted a cat named Miso."), "user_id": "default"})
        written = await call(session, "summarize", {"window": "week"})
        listed = (await session.list_resources()).resources
        read = json.loads(text_of((await session.read_resource(str(listed[0].uri))).contents))

    assert [r.name for r in listed] == ["summary-week-2026-W48", "stats"]
    assert listed[0].title == "Summary of week 2026-W48" and listed[0].mime_type == "application/json"
    assert read["id"] == written["summaries"][0]["id"] and read["kind"] == "summary"


@pytest.mark.parametrize("mode", ERAS)
async def test_bad_resource_reads_are_refused_with_the_reason(memory: Memory, settings: Settings, mode: str) -> None:
    async with client(memory, settings, mode) as session:
        await call(session, "add_memory", conversation("s", "A note."))
        with pytest.raises(MCPError, match="window: 'month' is not one of all, session, day, week"):
            await session.read_resource("lightmem://users/ana/summaries/month")
        with pytest.raises(MCPError, match="no record"):
            await session.read_resource("lightmem://users/ana/records/00000000-0000-0000-0000-000000000000")
        with pytest.raises(MCPError, match="not a memory id"):
            await session.read_resource("lightmem://users/ana/records/nope")


@pytest.mark.parametrize("mode", ERAS)
async def test_prompts_fill_in_what_memory_holds(memory: Memory, settings: Settings, mode: str) -> None:
    async with client(memory, settings, mode) as session:
        await call(session, "add_memory", conversation("trip", "I booked a train to Lisbon for May."))
        await call(session, "summarize", {"user_id": "ana", "window": "week"})
        recalled = await session.get_prompt("recall_topic", {"topic": "Lisbon trip", "user_id": "ana"})
        nothing = await session.get_prompt("recall_topic", {"topic": "Lisbon trip", "user_id": "bob"})
        save = await session.get_prompt("save_conversation", {"session_id": "standup"})
        week = await session.get_prompt("review_week", {"week": "2026-W48", "user_id": "ana"})
        empty_week = await session.get_prompt("review_week", {"week": "2026-W02", "user_id": "ana"})
        with pytest.raises(MCPError, match="write it like 2026-W48"):
            await session.get_prompt("review_week", {"week": "last week"})

    def text(result: Any) -> str:
        return str(result.messages[0].content.text)

    assert "I booked a train to Lisbon for May." in text(recalled) and "cites its message id" in text(recalled)
    assert "holds nothing about 'Lisbon trip'" in text(nothing)
    assert "add_memory" in text(save) and "flush_memory" in text(save) and 'session_id "standup"' in text(save)
    assert "2026-11-23 to 2026-11-29" in text(week) and "Lisbon" in text(week)
    assert 'window "week"' in text(empty_week) and "2026-01-05" in text(empty_week)


@pytest.mark.parametrize("mode", ERAS)
async def test_completions_offer_the_callers_own_values(memory: Memory, settings: Settings, mode: str) -> None:
    async with client(memory, settings, mode) as session:
        await call(session, "add_memory", conversation("trip-lisbon", "Train booked."))
        await call(session, "add_memory", conversation("trip-porto", "Bus booked."))
        await call(session, "add_memory", {**conversation("work", "Standup at nine."), "user_id": "bob"})
        record = {
            "type": "ref/resource",
            "uri": "lightmem://users/{user_id}/summaries/{window}{?agent_id,session_id,project}",
        }
        sessions = await session.complete(record, {"name": "session_id", "value": "trip"}, {"user_id": "ana"})
        bobs = await session.complete(record, {"name": "session_id", "value": ""}, {"user_id": "bob"})
        windows = await session.complete(record, {"name": "window", "value": "w"})
        weeks = await session.complete({"type": "ref/prompt", "name": "review_week"}, {"name": "week", "value": "20"})
        unknown = await session.complete({"type": "ref/prompt", "name": "nope"}, {"name": "x", "value": "a"})

    assert sorted(sessions.completion.values) == ["trip-lisbon", "trip-porto"]
    assert bobs.completion.values == ["work"]
    assert windows.completion.values == ["week"]
    assert len(weeks.completion.values) == 12 and all(w.startswith("20") for w in weeks.completion.values)
    assert unknown.completion.values == []


@pytest.mark.parametrize("mode", ERAS)
async def test_forget_asks_the_person_and_a_decline_deletes_nothing(
    memory: Memory, settings: Settings, mode: str
) -> None:
    declining = Person("decline")
    async with client(memory, settings, mode, declining) as session:
        await call(session, "add_memory", conversation("s1", "First.", "Second."))
        refused = await error_of(session, "forget", {"user_id": "ana", "confirm": True})
        left = await call(session, "stats", {"user_id": "ana"})
    accepting = Person("accept")
    async with client(memory, settings, mode, accepting) as session:
        done = await call(session, "forget", {"user_id": "ana"})
        after = await call(session, "list_memories", {"user_id": "ana"})

    assert (
        declining.asked
        == accepting.asked
        == ["Permanently delete every memory of user 'ana': 2 records (2 stored messages)? This cannot be undone."]
    )
    assert "the person declined; nothing was deleted" in refused  # confirm=true does not bypass the person
    assert sum(r["total"] for r in left["records"]) == 2
    assert done == {"deleted_count": 2} and after["records"] == []


@pytest.mark.parametrize("mode", ERAS)
async def test_an_unticked_confirmation_deletes_nothing(memory: Memory, settings: Settings, mode: str) -> None:
    async with client(memory, settings, mode, Person("accept", confirm=False)) as session:
        await call(session, "add_memory", conversation("s1", "Keep me."))
        refused = await error_of(session, "forget", {"user_id": "ana"})
        kept = await call(session, "list_memories", {"user_id": "ana"})
    assert "did not confirm; nothing was deleted" in refused and len(kept["records"]) == 1


async def test_without_elicitation_confirm_true_stays_the_way(memory: Memory, settings: Settings) -> None:
    async with client(memory, settings) as session:  # a client that cannot ask the person
        await call(session, "add_memory", conversation("s1", "One.", "Two."))
        missing = await error_of(session, "forget", {"user_id": "ana"})
        done = await call(session, "forget", {"user_id": "ana", "confirm": True})
    assert "call again with confirm=true" in missing and done == {"deleted_count": 2}


@pytest.mark.parametrize("mode", ERAS)
async def test_deleting_more_than_a_few_records_asks_with_the_list(
    memory: Memory, settings: Settings, mode: str
) -> None:
    person = Person("decline")
    async with client(memory, settings, mode, person) as session:
        added = await call(session, "add_memory", conversation("s", "One.", "Two.", "Three.", "Four.", "Five."))
        refused = await error_of(session, "delete_memory", {"ids": added["ids"], "user_id": "ana"})
        few = await call(session, "delete_memory", {"ids": added["ids"][:3], "user_id": "ana"})
        left = await call(session, "list_memories", {"user_id": "ana"})

    assert "declined; nothing was deleted" in refused
    assert len(person.asked) == 1 and person.asked[0].startswith("Permanently delete these 5 memories?")
    assert "- turn of 2026-11-27: Five." in person.asked[0]
    assert few["deleted"] == added["ids"][:3]  # three or fewer: not asked
    assert len(left["records"]) == 2
