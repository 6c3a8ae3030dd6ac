"""The MCP tools, driven in-process by the SDK's client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from lightmem_mcp.config import CompressionSettings, ServerSettings, Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.memory import Memory
from lightmem_mcp.server import MAX_TOPIC_CHARS, MemoryProvider, build_server
from tests.conftest import open_memory

pytestmark = pytest.mark.anyio

TOOLS = {
    # name: (read_only, destructive, idempotent)
    "add_memory": (False, False, False),
    "search_memory": (True, None, True),
    "recall": (True, None, True),
    "get_memory": (True, None, True),
    "list_memories": (True, None, True),
    "delete_memory": (False, True, True),
    "forget": (False, True, True),
    "flush_memory": (False, False, True),
    "compress": (True, None, True),
    "consolidate": (False, False, True),
    "summarize": (False, False, True),
    "memory_history": (True, None, True),
    "stats": (True, None, True),
}


def client_for(memory: Memory, settings: Settings) -> Client:
    return Client(build_server(settings, MemoryProvider(settings, lambda _: memory)))


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def error_of(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    return str(result.content[0].text)  # type: ignore[union-attr]


async def test_every_tool_has_honest_annotations_and_an_output_schema(memory: Memory, settings: Settings) -> None:
    async with client_for(memory, settings) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

    assert set(tools) == set(TOOLS)
    for name, (read_only, destructive, idempotent) in TOOLS.items():
        annotations = tools[name].annotations
        assert annotations is not None
        assert (annotations.read_only_hint, annotations.destructive_hint, annotations.idempotent_hint) == (
            read_only,
            destructive,
            idempotent,
        ), name
        assert tools[name].output_schema is not None, name
        assert tools[name].description


async def test_store_search_get_list_delete_round_trip(memory: Memory, settings: Settings) -> None:
    async with client_for(memory, settings) as client:
        added = await call(
            client,
            "add_memory",
            {
                "messages": [
                    {"role": "user", "content": "My sister Maya lives in Lisbon.", "id": "t1"},
                    {"role": "assistant", "content": "Lisbon is lovely in spring.", "id": "t2"},
                ],
                "user_id": "u1",
                "session_id": "s1",
            },
        )
        hits = (await call(client, "search_memory", {"query": "where does my sister live", "user_id": "u1"}))["hits"]
        got = await call(client, "get_memory", {"ids": added["ids"], "user_id": "u1"})
        listed = await call(client, "list_memories", {"user_id": "u1", "session_id": "s1"})
        deleted = await call(client, "delete_memory", {"ids": added["ids"][:1], "user_id": "u1"})
        after = await call(client, "list_memories", {"user_id": "u1"})

    assert added["source_ids"] == ["t1", "t2"]
    assert hits[0]["source_ids"] == ["t1"]
    assert hits[0]["session_id"] == "s1"
    assert {r["original_text"] for r in got["records"]} == {
        "My sister Maya lives in Lisbon.",
        "Lisbon is lovely in spring.",
    }
    assert len(listed["records"]) == 2
    assert deleted == {"deleted": added["ids"][:1], "missing": []}
    assert [r["source_ids"] for r in after["records"]] == [["t2"]]


async def test_tenants_do_not_see_each_other(memory: Memory, settings: Settings) -> None:
    async with client_for(memory, settings) as client:
        ids = (
            await call(client, "add_memory", {"messages": [{"role": "user", "content": "A's secret"}], "user_id": "a"})
        )["ids"]
        searched = await call(client, "search_memory", {"query": "secret", "user_id": "b"})
        got = await call(client, "get_memory", {"ids": ids, "user_id": "b"})
        forgot = await call(client, "forget", {"confirm": True, "user_id": "b"})
        still = await call(client, "get_memory", {"ids": ids, "user_id": "a"})

    assert searched["hits"] == []
    assert got == {"records": [], "missing": ids}
    assert forgot == {"deleted_count": 0}
    assert len(still["records"]) == 1


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("add_memory", {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ("add_memory", {"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ("add_memory", {"messages": [{"role": "user", "content": "hi", "timestamp": "noon"}]}, "messages[0].timestamp"),
        ("add_memory", {"messages": [{"role": "user", "content": "hi", "mood": "x"}]}, "messages.0.mood"),
        ("search_memory", {"query": "x", "filters": {"colour": "red"}}, "filters.colour"),
        ("search_memory", {"query": "x", "limit": 1000}, "limit"),
        ("get_memory", {"ids": ["nope"]}, "ids[0]"),
        ("forget", {"confirm": False}, "confirm"),
    ],
)
async def test_bad_arguments_are_tool_errors_naming_the_field(
    memory: Memory, settings: Settings, tool: str, arguments: dict[str, Any], field: str
) -> None:
    async with client_for(memory, settings) as client:
        message = await error_of(client, tool, arguments)
        listed = await call(client, "list_memories", {})

    assert field in message
    assert listed["records"] == []


async def test_a_backend_that_fails_to_load_is_reported_and_retried(memory: Memory, settings: Settings) -> None:
    attempts: list[int] = []

    def flaky(_: Settings) -> Memory:
        attempts.append(1)
        if len(attempts) == 1:
            raise BackendUnavailable("the embedded store is open in another lightmem-mcp process")
        return memory

    lazy = settings.model_copy(update={"server": ServerSettings(warmup=False)})
    async with Client(build_server(lazy, MemoryProvider(lazy, flaky))) as client:
        message = await error_of(client, "search_memory", {"query": "x"})
        recovered = await call(client, "search_memory", {"query": "x"})

    assert "open in another lightmem-mcp process" in message
    assert recovered["hits"] == []


async def test_compress_returns_the_compressed_text_and_its_savings(
    settings: Settings, embedder: SentenceTransformerEmbedder, tiny_model: Path
) -> None:
    compressing = settings.model_copy(update={"compression": CompressionSettings(path=tiny_model, device="cpu")})
    memory = open_memory(compressing, embedder)
    text = "Please remember that the quarterly report for the Lisbon office is due on Friday the 14th. " * 4
    try:
        async with client_for(memory, compressing) as client:
            done = await call(client, "compress", {"text": text, "rate": 0.5, "force_tokens": ["Lisbon"]})
    finally:
        memory.close()

    assert done["original_tokens"] > done["compressed_tokens"] > 0
    assert done["ratio"] == pytest.approx(done["compressed_tokens"] / done["original_tokens"], abs=0.01)
    assert "Lisbon" in done["compressed_text"]
    assert done["model"].endswith("bert-base-multilingual-cased")
    assert done["device"] == "cpu"


async def test_compress_without_a_model_says_how_to_provide_one(memory: Memory, settings: Settings) -> None:
    async with client_for(memory, settings) as client:
        message = await error_of(client, "compress", {"text": "Some text to compress " * 10})

    assert "LIGHTMEM_COMPRESSION_PATH" in message


def _string_schemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The free-text string schemas in a property's schema (enums are not free text; $refs are checked apart)."""
    if schema.get("type") == "string" and "enum" not in schema and "const" not in schema:
        yield schema
    for option in schema.get("anyOf", []):
        yield from _string_schemas(option)
    if isinstance(schema.get("items"), dict):
        yield from _string_schemas(schema["items"])


async def test_every_input_schema_is_closed_and_documents_its_text_limits(memory: Memory, settings: Settings) -> None:
    async with client_for(memory, settings) as client:
        tools = (await client.list_tools()).tools

    for tool in tools:
        objects = {tool.name: tool.input_schema, **tool.input_schema.get("$defs", {})}
        for where, schema in objects.items():
            assert schema["additionalProperties"] is False, (tool.name, where)
            for name, prop in schema["properties"].items():
                texts = list(_string_schemas(prop))
                if texts:
                    # Every free-text argument says its size limit, and the schema enforces it where it is fixed.
                    assert "at most" in prop.get("description", ""), (tool.name, where, name)
                    assert all("maxLength" in text for text in texts) or "LIGHTMEM_" in prop["description"], (
                        tool.name,
                        where,
                        name,
                    )


async def test_forget_takes_only_the_json_boolean_true(memory: Memory, settings: Settings) -> None:
    async with client_for(memory, settings) as client:
        await call(client, "add_memory", {"messages": [{"role": "user", "content": "Keep me."}], "user_id": "u1"})
        messages = [
            await error_of(client, "forget", {"confirm": loose, "user_id": "u1"})
            for loose in ("true", "True", 1, 1.0, "yes", "on", "1", [True], {"value": True})
        ]
        kept = await call(client, "list_memories", {"user_id": "u1"})

    assert all("confirm" in message for message in messages), messages
    assert len(kept["records"]) == 1


async def test_unknown_arguments_are_refused_by_name(memory: Memory, settings: Settings) -> None:
    async with client_for(memory, settings) as client:
        await call(client, "add_memory", {"messages": [{"role": "user", "content": "Mine."}], "user_id": "u1"})
        added = await error_of(
            client, "add_memory", {"messages": [{"role": "user", "content": "Whose?"}], "tenant": "x"}
        )
        forgot = await error_of(client, "forget", {"confirm": True, "tenant": "u1", "user": "u1"})
        nested = await error_of(client, "search_memory", {"query": "x", "filters": {"tenant": "x"}})
        default = await call(client, "list_memories", {})
        mine = await call(client, "list_memories", {"user_id": "u1"})

    assert "tenant" in added and "this tool takes messages, user_id, agent_id, session_id" in added
    assert "tenant" in forgot and "user\n" in forgot  # both unknown names, each on its own line
    assert "filters.tenant" in nested
    assert default["records"] == []
    assert len(mine["records"]) == 1


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("search_memory", {"query": "x", "limit": "10"}, "limit"),
        ("search_memory", {"query": "x", "limit": True}, "limit"),
        ("search_memory", {"query": "x", "limit": 10.5}, "limit"),
        ("list_memories", {"limit": "5"}, "limit"),
        ("list_memories", {"include_superseded": "false"}, "include_superseded"),
        ("list_memories", {"kinds": "turn"}, "kinds"),
        ("search_memory", {"query": "x", "filters": {"include_superseded": 1}}, "filters.include_superseded"),
        ("search_memory", {"query": "x", "filters": '{"kinds": ["turn"]}'}, "filters"),  # no JSON inside strings
        ("search_memory", {"query": 42}, "query"),
        ("summarize", {"window": "DAY"}, "window"),
        ("compress", {"text": "some text", "target_tokens": "5"}, "target_tokens"),
        ("add_memory", {"messages": [{"role": "user", "content": 7}]}, "messages.0.content"),
    ],
)
async def test_json_types_are_taken_as_the_schema_says(
    memory: Memory, settings: Settings, tool: str, arguments: dict[str, Any], field: str
) -> None:
    async with client_for(memory, settings) as client:
        message = await error_of(client, tool, arguments)
        listed = await call(client, "list_memories", {})

    assert f"\n{field}\n" in message, message
    assert listed["records"] == []


async def test_a_null_string_is_an_id_not_a_missing_one(memory: Memory, settings: Settings) -> None:
    async with client_for(memory, settings) as client:
        await call(
            client, "add_memory", {"messages": [{"role": "user", "content": "Not an agent's."}], "user_id": "u1"}
        )
        forgot = await call(client, "forget", {"confirm": True, "user_id": "u1", "agent_id": "null"})
        kept = await call(client, "list_memories", {"user_id": "u1"})

    assert forgot == {"deleted_count": 0}
    assert len(kept["records"]) == 1


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        (
            "add_memory",
            {"messages": [{"role": "user", "content": "\u200b\u200c\u200d\u2060\ufeff \n"}]},
            "messages[0].content",
        ),
        ("add_memory", {"messages": [{"role": "user", "content": "hi"}], "user_id": "\u200b"}, "user_id"),
        ("search_memory", {"query": "\u200b\u00ad"}, "query"),
        ("summarize", {"topic": "\u2060\u200e"}, "topic"),
        ("compress", {"text": "\ufeff"}, "text"),
    ],
)
async def test_text_of_only_invisible_characters_is_empty(
    memory: Memory, settings: Settings, tool: str, arguments: dict[str, Any], field: str
) -> None:
    async with client_for(memory, settings) as client:
        message = await error_of(client, tool, arguments)
        listed = await call(client, "list_memories", {})

    assert f"{field}: empty" in message
    assert listed["records"] == []


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        (
            "add_memory",
            {"messages": [{"role": "user", "content": "hi", "timestamp": "0001-01-01T00:00:00+14:00"}]},
            "messages[0].timestamp",
        ),
        ("search_memory", {"query": "x", "filters": {"until": "9999-12-31T23:59:59-01:00"}}, "filters.until"),
        ("consolidate", {"since": "0001-01-01T00:00:00+14:00"}, "since"),
        ("summarize", {"until": "9999-12-31T23:00:00-14:00"}, "until"),
    ],
)
async def test_a_time_out_of_range_is_an_error_naming_its_field(
    memory: Memory, settings: Settings, tool: str, arguments: dict[str, Any], field: str
) -> None:
    async with client_for(memory, settings) as client:
        message = await error_of(client, tool, arguments)
        listed = await call(client, "list_memories", {})

    assert f"{field}: " in message
    assert "0001-01-02 to 9999-12-29 UTC" in message
    assert "Overflow" not in message
    assert listed["records"] == []


async def test_a_summary_topic_has_a_size_limit(memory: Memory, settings: Settings) -> None:
    async with client_for(memory, settings) as client:
        await call(client, "add_memory", {"messages": [{"role": "user", "content": "We plan a trip to Porto."}]})
        message = await error_of(client, "summarize", {"topic": "travel " * 1_500_000})  # 10 MB
        longest = await call(client, "summarize", {"topic": ("trip to Porto " * MAX_TOPIC_CHARS)[:MAX_TOPIC_CHARS]})

    assert "\ntopic\n" in message and f"at most {MAX_TOPIC_CHARS} characters" in message
    assert len(longest["summaries"]) == 1
