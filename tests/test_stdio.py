"""End to end: the `lightmem-mcp` command spawned and driven over stdio by the MCP SDK's client."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.openai_server import FakeLLMServer, facts_per_message

pytestmark = pytest.mark.anyio

COMMAND = str(Path(sys.executable).with_name("lightmem-mcp"))


def server(
    data_dir: Path, command: str = COMMAND, args: list[str] | None = None, extra_env: dict[str, str] | None = None
) -> Client:
    env = {"LIGHTMEM_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "LIGHTMEM_LOG_LEVEL": "WARNING"}
    env.update(extra_env or {})
    return Client(StdioServerParameters(command=command, args=args or [], env=env), read_timeout_seconds=120)


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


TURNS = [
    {"role": "user", "content": "I'm training for the Berlin marathon in September.", "id": "run-1"},
    {"role": "assistant", "content": "Great goal! What's your weekly mileage?", "id": "run-2"},
    {"role": "user", "content": "About 60 km a week, with a long run on Sundays.", "id": "run-3"},
]


async def test_a_stdio_session_stores_searches_and_survives_a_restart(tmp_path: Path) -> None:
    async with server(tmp_path) as client:
        assert client.server_info is not None
        assert client.server_info.name == "lightmem-mcp"
        added = await call(client, "add_memory", {"messages": TURNS, "user_id": "runner"})
        first = await call(client, "search_memory", {"query": "which race am I preparing for", "user_id": "runner"})

    async with server(tmp_path) as client:
        again = await call(client, "search_memory", {"query": "which race am I preparing for", "user_id": "runner"})
        listed = await call(client, "list_memories", {"user_id": "runner"})

    assert added["source_ids"] == ["run-1", "run-2", "run-3"]
    assert first["hits"][0]["source_ids"] == ["run-1"]
    assert again["hits"] == first["hits"]
    assert len(listed["records"]) == 3


async def test_acknowledged_memories_survive_a_killed_server(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # `exec` keeps the shell's pid, so the pid file names the server process itself.
    wrapper = ["-c", f'echo $$ > {pid_file}; exec "{COMMAND}"']
    try:
        async with server(tmp_path, "/bin/sh", wrapper) as client:
            await call(client, "add_memory", {"messages": TURNS, "user_id": "runner"})
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            with anyio.fail_after(30):
                while True:  # wait until the process is gone
                    try:
                        os.kill(int(pid_file.read_text()), 0)
                    except ProcessLookupError:
                        break
                    await anyio.sleep(0.05)
    except Exception:  # the client notices its server died; that is the point
        pass

    async with server(tmp_path) as client:
        listed = await call(client, "list_memories", {"user_id": "runner"})

    assert sorted(source for r in listed["records"] for source in r["source_ids"]) == ["run-1", "run-2", "run-3"]


async def test_over_stdio_flush_memory_extracts_facts_that_search_returns(
    tmp_path: Path, llm_server: FakeLLMServer
) -> None:
    llm_server.script(facts_per_message("Maya said"))
    llm = {
        "LIGHTMEM_LLM_PROVIDER": "openai-compatible",
        "LIGHTMEM_LLM_BASE_URL": llm_server.base_url,
        "LIGHTMEM_LLM_MODEL": "fake-model",
        "LIGHTMEM_LLM_RETRY_BASE_DELAY_S": "0.01",
    }
    async with server(tmp_path, extra_env=llm) as client:
        await call(client, "add_memory", {"messages": TURNS, "user_id": "runner"})
        flushed = await call(client, "flush_memory", {"user_id": "runner"})
        found = await call(
            client, "search_memory", {"query": "marathon", "user_id": "runner", "filters": {"kinds": ["fact"]}}
        )

    assert flushed["llm_calls"] == 1
    assert flushed["pending_turns"] == 0
    assert len(llm_server.requests) == 1
    assert found["hits"][0]["text"] == "Maya said: I'm training for the Berlin marathon in September."
    assert found["hits"][0]["source_ids"] == ["run-1"]
