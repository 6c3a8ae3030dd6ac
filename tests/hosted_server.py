"""The `lightmem-mcp serve --transport http|sse` command run as a subprocess on 127.0.0.1, and MCP clients for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

COMMAND = str(Path(sys.executable).with_name("lightmem-mcp"))
START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HostedServer:
    """One server process: started with `env`, stopped with SIGTERM; its stderr kept in a file."""

    def __init__(self, data_dir: Path, transport: str = "http", env: Mapping[str, str] | None = None) -> None:
        self.transport = transport
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(data_dir),
            "LIGHTMEM_DATA_DIR": str(data_dir),
            "HF_HUB_OFFLINE": "1",
            "LIGHTMEM_LOG_LEVEL": "WARNING",
            "LIGHTMEM_EMBEDDING_DEVICE": "cpu",
            "LIGHTMEM_COMPRESSION_DEVICE": "cpu",
            **(env or {}),
        }
        self.log_path = data_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def mcp_url(self) -> str:
        """Where MCP clients connect: /mcp (streamable HTTP) or /sse."""
        return f"{self.base_url}/{'mcp' if self.transport == 'http' else 'sse'}"

    def start(self) -> HostedServer:
        """Spawn the server and wait until /readyz says ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [COMMAND, "serve", "--transport", self.transport, "--port", str(self.port)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                ready = httpx2.get(f"{self.base_url}/readyz", timeout=5)
                if ready.status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {START_TIMEOUT_S}s:\n{self.log()}")
            time.sleep(0.2)

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM, then the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self) -> str:
        """What the server wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @asynccontextmanager
    async def session(self, token: str | None) -> AsyncIterator[ClientSession]:
        """An initialized MCP client session over this server's transport, sending `token`."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.transport == "http":
            async with (
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
                streamable_http_client(self.mcp_url, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                yield session
        else:
            async with (
                sse_client(self.mcp_url, headers=headers, sse_read_timeout=120) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                yield session


async def call(session: ClientSession, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A tool's structured result; fails the test on a tool error."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def error_of(session: ClientSession, tool: str, arguments: dict[str, Any]) -> str:
    """The message of a tool error; fails the test if the call succeeded."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return str(getattr(result.content[0], "text", ""))
