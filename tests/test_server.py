"""The MCP tools, driven in-process by the SDK's client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from lightmem_mcp.config import CompressionSettings, ServerSettings, Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.memory import Memory
from lightmem_mcp.server import MemoryProvider, build_server
from tests.conftest import open_memory

pytestmark = pytest.mark.anyio

TOOLS = {
    # name: (read_only, destructive, idempotent)
    "add_memory": (False, False, False),
    "search_memory": (True, None, True),
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
    assert recovered == {"hits": []}


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
