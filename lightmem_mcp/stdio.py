"""The stdio transport: one JSON-RPC message per line on stdin and stdout, and every request answered.

The SDK's transport (`mcp.server.stdio.stdio_server`) passes a line it cannot parse or validate to
the server as an exception, which the dispatcher drops without a reply
(`mcp.shared.jsonrpc_dispatcher.JSONRPCDispatcher._dispatch`: no `on_stream_exception` observer on
the server side). A request with a lone surrogate or nested 200 levels deep then waits forever.
This transport reads the lines itself, answers those with a JSON-RPC error (`jsonrpc.admit`), and
hands the rest to the SDK's server.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import BinaryIO

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.mcpserver import MCPServer
from mcp.shared.message import SessionMessage
from mcp.types import INVALID_REQUEST, JSONRPCMessage

from lightmem_mcp.jsonrpc import Refusal, admit, refusal

if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)

# A guard on memory, not a limit a client meets: 200 messages of 32,000 characters fit many times.
MAX_LINE_BYTES = 64 * 1024 * 1024
_SKIP_CHUNK_BYTES = 1024 * 1024


async def serve_stdio(server: MCPServer) -> None:
    """Serve `server` over the process's stdin and stdout until stdin ends."""
    # MCPServer runs stdio only through the SDK's transport; the SDK's own in-process client
    # reaches the low-level server the same way.
    lowlevel = server._lowlevel_server
    async with guarded_stdio() as (read_stream, write_stream):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


@asynccontextmanager
async def guarded_stdio(
    wire: tuple[BinaryIO, BinaryIO] | None = None, max_line_bytes: int = MAX_LINE_BYTES
) -> AsyncIterator[tuple[MemoryObjectReceiveStream[SessionMessage], MemoryObjectSendStream[SessionMessage]]]:
    """The server's streams over `wire` (input, output), by default the process's stdin and stdout.

    While serving the process's own, fd 0 reads the null device and fd 1 writes to stderr, so a
    library's stray print or a child process can neither corrupt the replies nor eat requests.
    """
    restore: Callable[[], None] = _nothing
    if wire is None:
        wire, restore = _claim_std_fds()
    stdin, stdout = wire
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage](0)
    to_client, outgoing = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_read, stdin, to_server, to_client.clone(), max_line_bytes)
            tasks.start_soon(_write, stdout, outgoing)
            yield from_client, to_client
    finally:
        restore()


async def _read(
    wire: BinaryIO,
    to_server: MemoryObjectSendStream[SessionMessage],
    to_client: MemoryObjectSendStream[SessionMessage],
    max_line_bytes: int,
) -> None:
    """Hand each good line to the server and answer each bad one, until stdin ends."""
    async with to_server, to_client:
        while line := await anyio.to_thread.run_sync(wire.readline, max_line_bytes + 1, abandon_on_cancel=True):
            if len(line) > max_line_bytes:
                await anyio.to_thread.run_sync(_skip_line, wire, abandon_on_cancel=True)
                admitted: JSONRPCMessage | Refusal = refusal(
                    INVALID_REQUEST, f"Invalid Request: a line may hold at most {max_line_bytes} bytes", None
                )
            elif line.isspace():
                continue
            else:
                admitted = admit(line)
            if isinstance(admitted, Refusal):
                # The reason names the position, never the content, which may be a secret or huge.
                log.warning("answered a malformed stdio message: %s", admitted.answer.error.message)
                await to_client.send(SessionMessage(admitted.answer))
            else:
                await to_server.send(SessionMessage(admitted))


async def _write(wire: BinaryIO, outgoing: MemoryObjectReceiveStream[SessionMessage]) -> None:
    """Write each answer as one line; once the client has gone, drain them so the server can finish."""
    connected = True
    async with outgoing:
        async for message in outgoing:
            if not connected:
                continue
            line = message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
            try:
                await anyio.to_thread.run_sync(_send, wire, line)
            except BrokenPipeError:
                log.info("the stdio client closed its end; dropping answers until stdin ends")
                connected = False


def _send(wire: BinaryIO, line: bytes) -> None:
    wire.write(line)
    wire.flush()


def _skip_line(wire: BinaryIO) -> None:
    while (chunk := wire.readline(_SKIP_CHUNK_BYTES)) and not chunk.endswith(b"\n"):
        pass


def _claim_std_fds() -> tuple[tuple[BinaryIO, BinaryIO], Callable[[], None]]:
    """The wire moved to private descriptors, and how to move it back to fds 0 and 1."""
    if sys.platform == "win32":  # its standard handles do not follow dup2: serve in place
        return (sys.stdin.buffer, sys.stdout.buffer), _nothing
    sys.stdout.flush()
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    os.dup2(2, 1)

    def restore() -> None:
        os.dup2(wire_in, 0)
        os.dup2(wire_out, 1)

    # closefd=False: a worker thread can still be blocked reading the wire when serving ends, and a
    # closed descriptor could be reused under it.
    return (os.fdopen(wire_in, "rb", closefd=False), os.fdopen(wire_out, "wb", closefd=False)), restore


def _nothing() -> None:
    pass
