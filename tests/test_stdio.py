"""End to end: the `lightmem-mcp` command spawned and driven over stdio by the MCP SDK's client, or by raw bytes."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import JSONRPCRequest

from lightmem_mcp.stdio import guarded_stdio
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


class RawClient:
    """A stdio client that writes raw bytes and reads one JSON answer per line, as a buggy or hostile one would."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._answers = BufferedByteReceiveStream(process.stdout)

    async def send(self, line: bytes) -> None:
        await self._stdin.send(line + b"\n")

    async def answer(self, within_s: float) -> tuple[dict[str, Any], int]:
        """The next answer and its size in bytes; fails if none comes within `within_s`."""
        with anyio.fail_after(within_s):
            line = await self._answers.receive_until(b"\n", 8 * 1024 * 1024)
        return json.loads(line), len(line)


@asynccontextmanager
async def raw_server(data_dir: Path) -> AsyncIterator[tuple[RawClient, Path]]:
    """`lightmem-mcp` over stdio, initialized by a raw client; also the file its stderr goes to."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(data_dir),
        "LIGHTMEM_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "LIGHTMEM_LOG_LEVEL": "WARNING",
        "LIGHTMEM_WARMUP": "false",  # no model loading competes with the answers being timed
    }
    stderr = data_dir / "stderr.log"
    with open(stderr, "wb") as log:
        async with await anyio.open_process([COMMAND], env=env, stderr=log) as process:
            client = RawClient(process)
            hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
            await client.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}).encode())
            initialized, _ = await client.answer(within_s=120)
            assert initialized["result"]["serverInfo"]["name"] == "lightmem-mcp"
            await client.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
            yield client, stderr
            assert process.stdin is not None
            await process.stdin.aclose()  # the end of stdin ends the server
            with anyio.fail_after(60):
                assert await process.wait() == 0


def search(request_id: str, query: str) -> str:
    params = {"name": "search_memory", "arguments": {"query": query, "user_id": "raw"}}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


def nested(request_id: str, depth: int) -> str:
    return f'{{"jsonrpc":"2.0","id":"{request_id}","method":"ping","params":{{"x":{"[" * depth}{"]" * depth}}}}}'


# What each line gets back: (JSON-RPC error code, the id echoed).
MALFORMED = {
    # A lone surrogate (invalid UTF-16) as a JSON escape, in an argument and in the method name.
    search("surrogate", "\ud800 where do I live"): (-32700, "surrogate"),
    '{"jsonrpc":"2.0","id":"in-method","method":"tools/\\udc00call"}': (-32700, "in-method"),
    nested("deep-200", 200): (-32700, "deep-200"),
    nested("deep-500", 500): (-32700, "deep-500"),
    '{"jsonrpc":"2.0","id":7,': (-32700, None),
    '{"jsonrpc":"2.0","id":"no-method"}': (-32600, None),
    "[]": (-32600, None),
    '{"jsonrpc":"2.0","id":"' + "i" * 1_000_000 + '","method":"ping"}': (-32600, None),
}


async def test_malformed_requests_over_stdio_are_answered_at_once_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    answers = []
    async with raw_server(tmp_path) as (client, stderr):
        for line in MALFORMED:
            await client.send(line.encode())
            answers.append(await client.answer(within_s=1))
        await client.send(b'{"jsonrpc":"2.0","id":"after","method":"ping"}')
        pong, _ = await client.answer(within_s=5)
        await client.send(search("found", "where do I live").encode())
        searched, _ = await client.answer(within_s=120)

    for (expected_code, expected_id), (answer, size) in zip(MALFORMED.values(), answers, strict=True):
        assert answer["error"]["code"] == expected_code, answer
        assert answer["id"] == expected_id
        assert size < 1000  # the 1 MB id is not sent back
    assert pong == {"jsonrpc": "2.0", "id": "after", "result": {}}
    assert searched["result"]["structuredContent"]["hits"] == []
    assert "Traceback" not in stderr.read_text()


async def test_an_oversized_line_is_answered_and_skipped() -> None:
    server_in, client_out = os.pipe()
    client_in, server_out = os.pipe()
    with (
        os.fdopen(server_in, "rb") as stdin,
        os.fdopen(server_out, "wb") as stdout,
        os.fdopen(client_in, "rb") as answers,
        os.fdopen(client_out, "wb") as requests,
    ):
        oversized = b'{"jsonrpc":"2.0","id":3,"method":"ping","params":{"pad":"' + b"x" * 300 + b'"}}'
        requests.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n' + oversized + b"\n")
        requests.write(b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n')
        requests.close()
        async with guarded_stdio((stdin, stdout), max_line_bytes=100) as (from_client, to_client):
            received = [item async for item in from_client]
            await to_client.aclose()
        refused = json.loads(answers.readline())

    assert [m.message.id for m in received if isinstance(m.message, JSONRPCRequest)] == [1, 2]
    assert refused["id"] is None
    assert refused["error"]["code"] == -32600
    assert "at most 100 bytes" in refused["error"]["message"]
