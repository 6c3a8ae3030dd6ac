"""One memory per embedded store, however many stdio servers an IDE starts on it.

The first server to lock the store owns it: it opens the store, runs the background work
(extraction, sleep-time jobs) and serves the other servers over a local channel: a Unix socket,
mode 0600, in a 0700 directory next to the store; where there are no Unix sockets (or with
`LIGHTMEM_SHARED_CHANNEL=tcp`), a loopback port and a secret kept in a 0600 file. The others are
front doors: they forward each service call to the owner and never open the store.

When the owner goes (its client quit, or it was killed), the front doors race for the lock; the
winner opens the store and serves, and the others connect to it. A call in flight meanwhile is
sent again to whoever owns the store then: every call is safe to repeat, because reads are reads,
`add` carries message ids fixed before its first attempt, and deletes, flushes, consolidation and
summaries are idempotent. A call that finds no owner within `handover_timeout_s` fails with an
error that says to retry.

A connection from another OS user is refused (peer credentials on Linux, file modes elsewhere,
the secret on the loopback channel), and so is a server of another version: both sides say which.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import hmac
import inspect
import json
import logging
import os
import queue
import secrets
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar, get_type_hints

from pydantic import BaseModel, TypeAdapter

import lightmem_mcp
from lightmem_mcp import errors
from lightmem_mcp.api import (
    ActivityResult,
    AddResult,
    BucketSize,
    ConsolidateResult,
    DeleteResult,
    ExportPage,
    FlushResult,
    GetResult,
    HistoryResult,
    Known,
    ListResult,
    LLMCallInfo,
    Message,
    Progress,
    RecallResult,
    SearchFilters,
    SearchResult,
    StatsResult,
    Stop,
    StopFlag,
    Suggestion,
    SummarizeResult,
    SummaryInfo,
    Window,
)
from lightmem_mcp.compressor import Compression
from lightmem_mcp.config import SearchMode, Settings
from lightmem_mcp.embedder import Embedder, SentenceTransformerEmbedder
from lightmem_mcp.errors import BackendUnavailable, LightMemError, StoreInUse
from lightmem_mcp.memory import Memory
from lightmem_mcp.privacy import PRIVATE_FILE, private_directory
from lightmem_mcp.records import Kind, MetadataValue, Scope, check_metadata

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bumped whenever the messages between owner and front door change shape.
PROTOCOL = 3
# The service calls a front door forwards: the tool-facing methods of `Memory`.
FORWARDED = (
    "add",
    "search",
    "recall",
    "get",
    "list",
    "delete",
    "forget",
    "flush",
    "consolidate",
    "summarize",
    "history",
    "compress",
    "stats",
    "summaries",
    "forget_preview",
    "suggest",
    "known",
    "activity",
    "llm_calls",
    "export_page",
)
# A guard on memory, as on stdio: a front door is the same user, but a line is read whole.
MAX_LINE_BYTES = 64 * 1024 * 1024
# Calls the owner runs at once for its front doors (its own client's run in the MCP server's threads).
_WORKERS = 32
# How long a closing owner lets front-door calls already running finish before it closes the store.
_DRAIN_S = 30.0
# Unix socket paths are limited to ~104 bytes (macOS) / 108 (Linux).
_MAX_SOCKET_PATH = 100
_POLL_S = 0.05
# How often a front door waiting for a stoppable call asks whether its caller cancelled.
_STOP_POLL_S = 0.1
# How long a front door without the model loaded leaves the takeover to the successor, which has it.
_SUCCESSOR_GRACE_S = 2.0

Role = Literal["owner", "front door"]


class OwnerInfo(BaseModel):
    """Who holds a store and where it listens, as the holder writes it (`owner.json`, 0600)."""

    pid: int
    version: str
    protocol: int
    since: str
    role: str = "serving"  # "serving" (a stdio server) or the CLI command that holds the store
    channel: Literal["unix", "tcp"] | None = None
    address: str | None = None  # socket path, or loopback port
    secret: str | None = None  # tcp only: what a front door must present


@dataclass(frozen=True)
class OwnerFiles:
    """Where the owner of an embedded store keeps its lock, its address and its socket."""

    folder: Path

    @classmethod
    def of(cls, store_path: Path) -> OwnerFiles:
        """The files for the store at `store_path`: a private folder beside it."""
        return cls(store_path.parent / f"{store_path.name}.owner")

    @property
    def lock(self) -> Path:
        """Locked (flock) by whichever process holds the store."""
        return self.folder / "lock"

    @property
    def info(self) -> Path:
        """The holder's `OwnerInfo`."""
        return self.folder / "owner.json"

    @property
    def socket(self) -> Path:
        """The Unix socket, or a short private path elsewhere when this one is too long."""
        path = self.folder / "socket"
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(os.fsencode(self.folder)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"lightmem-{os.getuid()}" / f"{digest}.sock"

    def read_info(self) -> OwnerInfo | None:
        """The holder's info, or None when there is none (yet) or it is unreadable."""
        try:
            return OwnerInfo.model_validate_json(self.info.read_bytes())
        except (OSError, ValueError):
            return None

    def write_info(self, info: OwnerInfo) -> None:
        """Replace the info file atomically, 0600."""
        tmp = self.info.with_name(f"owner.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(info.model_dump_json())
        os.replace(tmp, self.info)


class StoreLock:
    """The exclusive lock that makes a process the store's owner; the OS drops it when the process dies."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds it."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if it is free; never waits."""
        if self._fd is not None:
            return True
        private_directory(self._path.parent)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            if sys.platform == "win32":
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Let another process take it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if sys.platform == "win32":
            with suppress(OSError):
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)  # closing the descriptor drops a flock


def describe_owner(settings: Settings) -> dict[str, Any]:
    """Who holds the embedded store now, and how many front doors it serves (for `doctor`)."""
    files = OwnerFiles.of(settings.store.embedded_path)
    probe = StoreLock(files.lock)
    if probe.acquire():
        probe.release()
        return {"owner": None, "note": "no server holds the store now"}
    info = files.read_info()
    if info is None:
        return {"owner": "unknown", "note": "the store is locked by a process that wrote no owner file yet"}
    report: dict[str, Any] = {"owner_pid": info.pid, "version": info.version, "since": info.since, "role": info.role}
    if info.channel is None:
        return report
    report["channel"] = info.channel
    try:
        with _Connection.open(info, role="probe", timeout_s=2.0) as door:
            report["front_doors"] = door.welcome.get("front_doors")
    except (OSError, LightMemError) as exc:
        report["front_doors"] = None
        report["warning"] = f"the owner does not answer: {exc}"
    return report


@contextmanager
def holding_store(settings: Settings, role: str) -> Iterator[None]:
    """Hold the embedded store for a CLI command (export, import, reindex) that opens it directly;
    refuse clearly while a server owns it."""
    if settings.store.qdrant_url:
        yield
        return
    files = OwnerFiles.of(settings.store.embedded_path)
    lock = StoreLock(files.lock)
    if not lock.acquire():
        info = files.read_info()
        who = f"lightmem-mcp (pid {info.pid}, {info.role})" if info else "another lightmem-mcp process"
        raise BackendUnavailable(
            f"the store {settings.store.embedded_path} is in use by {who}: quit the MCP clients that run it "
            "(or wait for that command to finish), then run this again"
        )
    try:
        files.write_info(_info(role))
        yield
    finally:
        lock.release()


def _info(role: str, channel: Literal["unix", "tcp"] | None = None, address: str | None = None) -> OwnerInfo:
    return OwnerInfo(
        pid=os.getpid(),
        version=lightmem_mcp.__version__,
        protocol=PROTOCOL,
        since=datetime.now(UTC).isoformat(timespec="seconds"),
        role=role,
        channel=channel,
        address=address,
        secret=secrets.token_hex(32) if channel == "tcp" else None,
    )


# -- the calls on the wire -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Signature:
    """How one forwarded call's arguments and result travel as JSON."""

    arguments: dict[str, TypeAdapter[Any]]
    result: TypeAdapter[Any]
    takes_progress: bool
    takes_stop: bool


# Callbacks: progress travels as messages of its own, a stop not at all (see `SharedMemory._call`).
_CALLBACKS = ("progress", "stop")


@cache
def _signature(name: str) -> _Signature:
    if name not in FORWARDED:
        raise KeyError(name)
    method = getattr(Memory, name)
    hints = get_type_hints(method)
    parameters = [p for p in inspect.signature(method).parameters if p != "self"]
    return _Signature(
        arguments={p: TypeAdapter(hints[p]) for p in parameters if p not in _CALLBACKS},
        result=TypeAdapter(hints["return"]),
        takes_progress="progress" in parameters,
        takes_stop="stop" in parameters,
    )


def _error_payload(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, errors.InvalidInput):
        return {"kind": "InvalidInput", "field": exc.field, "message": str(exc)}
    if isinstance(exc, LightMemError):
        return {"kind": type(exc).__name__, "message": str(exc)}
    return {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}


class ForwardedError(RuntimeError):
    """An unexpected failure inside the owner, as its own client would have seen it."""


def _raise_forwarded(payload: dict[str, Any]) -> None:
    message = str(payload.get("message", "the owner failed"))
    kind = payload.get("kind")
    if kind == "InvalidInput":
        field = str(payload.get("field", ""))
        problem = message.removeprefix(f"{field}: ")
        raise errors.InvalidInput(field, problem)
    known = {c.__name__: c for c in (errors.ConfigError, errors.NotFound, BackendUnavailable, errors.SchemaMismatch)}
    cls = known.get(str(kind), LightMemError if kind != "internal" else None)
    if cls is None:
        raise ForwardedError(message)
    raise cls(message)


# -- the owner's side ------------------------------------------------------------------------------


class _OwnerChannel:
    """The owner's listening end: accepts front doors and runs their calls on its `Memory`."""

    def __init__(self, files: OwnerFiles, memory: Memory, channel: Literal["unix", "tcp"]) -> None:
        self._memory = memory
        self._files = files
        self._closing = False
        self._lock = threading.Lock()
        # Each front door's socket and how to send to it; the successor is the one that keeps the
        # embedding model loaded, to take over first when this owner goes.
        self._connections: dict[int, tuple[socket.socket, Callable[[dict[str, Any]], None]]] = {}
        self._successor: int | None = None
        self._running = 0
        self._idle = threading.Condition(self._lock)
        # The stop flags of the front doors' calls running now, by connection and call id.
        self._stops: dict[tuple[int, object], threading.Event] = {}
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="lightmem-owner")
        if channel == "unix":
            path = files.socket
            private_directory(path.parent)
            with suppress(FileNotFoundError):
                path.unlink()  # a dead owner's; the lock says nobody else can be listening
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                self._listener.bind(str(path))
            finally:
                os.umask(old)
            os.chmod(path, PRIVATE_FILE)
            address = str(path)
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind(("127.0.0.1", 0))
            address = str(self._listener.getsockname()[1])
        self._listener.listen(64)
        self.info = _info("serving", channel, address)
        files.write_info(self.info)
        self._acceptor = threading.Thread(target=self._accept, name="lightmem-owner-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), name="lightmem-owner-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        send_lock = threading.Lock()

        def send(message: dict[str, Any]) -> None:
            line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
            with send_lock, suppress(OSError):
                conn.sendall(line)

        reader = conn.makefile("rb")
        counted = False
        try:
            hello = _read_message(reader)
            if hello is None:
                return
            refusal = self._check(conn, hello.get("hello"))
            if refusal:
                send({"refused": refusal})
                return
            probe = hello["hello"].get("role") == "probe"
            successor = False
            with self._lock:
                if not probe:
                    self._connections[id(conn)] = (conn, send)
                    counted = True
                    if self._successor is None:
                        self._successor = id(conn)
                        successor = True
                front_doors = len(self._connections)
            welcome = {**self.info.model_dump(exclude={"secret"}), "front_doors": front_doors, "successor": successor}
            send({"welcome": welcome})
            while (message := _read_message(reader)) is not None:
                if "cancel" in message:
                    self._cancel(id(conn), message["cancel"])
                else:
                    self._start_call(message, send, id(conn))
        except (OSError, ValueError) as exc:
            log.debug("front door connection ended: %s", exc)
        finally:
            heir = None
            with self._lock:
                if counted:
                    self._connections.pop(id(conn), None)
                if self._successor == id(conn):
                    self._successor = next(iter(self._connections), None)
                    heir = self._connections.get(self._successor) if self._successor is not None else None
            if heir is not None and not self._closing:
                heir[1]({"successor": True})
            with suppress(OSError):
                reader.close()
                conn.close()

    def _check(self, conn: socket.socket, hello: object) -> str | None:
        """Why this connection may not be served, or None."""
        if not isinstance(hello, dict):
            return "expected a hello first"
        if self.info.secret is not None and not hmac.compare_digest(
            str(hello.get("secret", "")).encode(), self.info.secret.encode()
        ):
            return "wrong secret"
        peer_uid = _peer_uid(conn)
        if peer_uid is not None and peer_uid != os.getuid():
            log.warning("refused a front door of another user (uid %d)", peer_uid)
            return "another OS user's memory: connect as the user who owns it"
        if hello.get("role") == "probe":
            return None
        if hello.get("protocol") != PROTOCOL or hello.get("version") != self.info.version:
            return (
                f"this store is served by lightmem-mcp {self.info.version} (pid {self.info.pid}), and this server "
                f"is lightmem-mcp {hello.get('version')}: quit the MCP clients that run the other version (or "
                "restart them all on one version); until then this server cannot reach the memory"
            )
        return None

    def _start_call(self, message: dict[str, Any], send: Callable[[dict[str, Any]], None], door: int) -> None:
        call_id = message.get("id")
        stop = threading.Event()
        if message.get("cancelled"):
            stop.set()
        with self._lock:
            if self._closing:
                send({"id": call_id, "closing": True})
                return
            self._running += 1
            # Known before the call runs: a cancel read right after the call finds it.
            self._stops[(door, call_id)] = stop
        self._pool.submit(self._run_call, message, send, stop, door)

    def _cancel(self, door: int, call_id: object) -> None:
        """A front door's caller cancelled: its call stops at the next batch boundary."""
        with self._lock:
            stop = self._stops.get((door, call_id))
        log.debug("a front door cancelled its call %s (%s)", call_id, "running" if stop is not None else "done")
        if stop is not None:
            stop.set()

    def _run_call(
        self, message: dict[str, Any], send: Callable[[dict[str, Any]], None], stop: threading.Event, door: int
    ) -> None:
        call_id = message.get("id")
        try:
            name = str(message.get("call"))
            signature = _signature(name)
            raw = message.get("args") or {}
            kwargs = {key: signature.arguments[key].validate_python(value) for key, value in raw.items()}
            if signature.takes_progress and message.get("progress"):

                def progress(done: float, total: float, note: str) -> None:
                    send({"id": call_id, "progress": [done, total, note]})

                kwargs["progress"] = progress
            if signature.takes_stop:
                kwargs["stop"] = stop.is_set
            result = getattr(self._memory, name)(**kwargs)
            send({"id": call_id, "result": signature.result.dump_python(result, mode="json")})
        except Exception as exc:
            if not isinstance(exc, LightMemError):
                log.exception("a forwarded %s call failed", message.get("call"))
            send({"id": call_id, "error": _error_payload(exc)})
        finally:
            with self._idle:
                self._stops.pop((door, call_id), None)
                self._running -= 1
                self._idle.notify_all()

    def close(self) -> None:
        """Stop taking calls, let running ones finish (bounded), then drop every front door."""
        with self._lock:
            self._closing = True
        with suppress(OSError):
            self._listener.close()
        deadline = time.monotonic() + _DRAIN_S
        with self._idle:
            while self._running and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def disconnect(self) -> None:
        """Drop every front door (after the store is closed and the lock released, so they can take over)."""
        with self._lock:
            connections = [conn for conn, _ in self._connections.values()]
            self._connections.clear()
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        if self.info.channel == "unix" and self.info.address:
            with suppress(OSError):
                if self._files.read_info() == self.info:
                    Path(self.info.address).unlink()


def _peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's user, where the OS says (Linux); None elsewhere."""
    if conn.family != getattr(socket, "AF_UNIX", None) or not hasattr(socket, "SO_PEERCRED"):
        return None
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", raw)
    return int(uid)


def _read_message(reader: BinaryIO) -> dict[str, Any] | None:
    line = reader.readline(MAX_LINE_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_LINE_BYTES or not line.endswith(b"\n"):
        raise ValueError("a message longer than the limit, or cut off")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message that is not a JSON object")
    return message


# -- the front door's side -------------------------------------------------------------------------


class _OwnerGone(Exception):
    """The owner closed the connection or is closing: send the call again after the handover."""


_Event = tuple[Literal["progress", "result", "error", "gone", "stop"], Any]


class _Connection:
    """A front door's connection to the owner: calls from any thread, replies matched by id."""

    def __init__(
        self,
        sock: socket.socket,
        reader: BinaryIO,
        welcome: dict[str, Any],
        on_gone: Callable[[_Connection], None] | None = None,
        on_successor: Callable[[], None] | None = None,
    ) -> None:
        self._sock = sock
        self.welcome = welcome
        self._on_gone = on_gone
        self._on_successor = on_successor
        self._reader = reader
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, queue.SimpleQueue[_Event]] = {}
        self._next_id = 0
        self._gone = False
        threading.Thread(target=self._read, name="lightmem-front-door", daemon=True).start()

    @classmethod
    def open(
        cls,
        info: OwnerInfo,
        role: str = "front door",
        timeout_s: float = 5.0,
        on_gone: Callable[[_Connection], None] | None = None,
        on_successor: Callable[[], None] | None = None,
    ) -> _Connection:
        """Connect and say hello; raises OSError when nobody listens, `BackendUnavailable` when refused."""
        if info.channel == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = info.address
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = ("127.0.0.1", int(info.address or 0))
        try:
            sock.settimeout(timeout_s)
            sock.connect(target)
            hello = {
                "protocol": PROTOCOL,
                "version": lightmem_mcp.__version__,
                "pid": os.getpid(),
                "role": role,
                "secret": info.secret,
            }
            sock.sendall(json.dumps({"hello": hello}).encode() + b"\n")
            # One reader for the welcome and all that follows: a second buffer could swallow a line.
            reader = sock.makefile("rb")
            reply = _read_message(reader)
            if reply is None:
                raise ConnectionResetError("the owner closed the connection")
            if "refused" in reply:
                raise BackendUnavailable(f"the memory owner refused this server: {reply['refused']}")
            sock.settimeout(None)
            return cls(sock, reader, dict(reply.get("welcome") or {}), on_gone, on_successor)
        except BaseException:
            sock.close()
            raise

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def gone(self) -> bool:
        """Whether the owner has gone."""
        return self._gone

    def call(self, name: str, args: dict[str, Any], progress: Progress | None, stop: Stop | None = None) -> Any:
        """The call's JSON result; raises the owner's error, or `_OwnerGone`. Once `stop` says so, the
        owner is told to stop the call at its next batch boundary; its result still comes back."""
        replies: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        with self._lock:
            if self._gone:
                raise _OwnerGone
            self._next_id += 1
            call_id = self._next_id
            self._pending[call_id] = replies
        try:
            # A call cancelled before it is sent goes with its stop already set; a `StopFlag` wakes this
            # wait the moment it is set, another `Stop` is asked every `_STOP_POLL_S`.
            cancelled = stop is not None and stop()
            if isinstance(stop, StopFlag):
                stop.on_set(lambda: replies.put(("stop", None)))
            call = {"id": call_id, "call": name, "args": args, "progress": progress is not None, "cancelled": cancelled}
            with self._send_lock:
                self._sock.sendall(json.dumps(call).encode() + b"\n")
            while True:
                if stop is not None and not cancelled and stop():
                    cancelled = True
                    with self._send_lock:
                        self._sock.sendall(json.dumps({"cancel": call_id}).encode() + b"\n")
                try:
                    kind, value = replies.get(timeout=_STOP_POLL_S if stop is not None and not cancelled else None)
                except queue.Empty:
                    continue
                if kind == "stop":
                    continue  # the caller cancelled: told to the owner above
                if kind == "progress":
                    if progress is not None:
                        progress(*value)
                elif kind == "result":
                    return value
                elif kind == "error":
                    _raise_forwarded(value)
                else:
                    raise _OwnerGone
        except OSError as exc:
            raise _OwnerGone from exc
        finally:
            with self._lock:
                self._pending.pop(call_id, None)

    def _read(self) -> None:
        try:
            while (message := _read_message(self._reader)) is not None:
                if message.get("successor") and self._on_successor is not None:
                    self._on_successor()  # the previous successor left: this one keeps the model now
                    continue
                with self._lock:
                    replies = self._pending.get(message.get("id", -1))
                if replies is None:
                    continue
                if "progress" in message:
                    replies.put(("progress", message["progress"]))
                elif "result" in message:
                    replies.put(("result", message["result"]))
                elif "error" in message:
                    replies.put(("error", message["error"]))
                else:  # closing
                    replies.put(("gone", None))
        except (OSError, ValueError):
            pass
        with self._lock:
            self._gone = True
            waiting = list(self._pending.values())
        for replies in waiting:
            replies.put(("gone", None))
        if self._on_gone is not None:
            self._on_gone(self)

    def close(self) -> None:
        """Hang up."""
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            self._sock.close()


# -- the service every stdio server uses -----------------------------------------------------------

OpenMemory = Callable[[Settings, Embedder | None], Memory]


def _open_memory(settings: Settings, embedder: Embedder | None) -> Memory:
    return Memory.open(settings, embedder=embedder)


class SharedMemory:
    """The memory service of a stdio server: the store itself when this process owns it, else the
    owner's, reached through the local channel. The same calls as `Memory`; a handover in between is
    invisible to the caller but for the wait."""

    def __init__(self, settings: Settings, open_memory: OpenMemory = _open_memory) -> None:
        self._settings = settings
        self._open_memory = open_memory
        self._files = OwnerFiles.of(settings.store.embedded_path)
        self._lock = StoreLock(self._files.lock)
        self._channel_kind: Literal["unix", "tcp"] = _channel_kind(settings.shared.channel)
        self._route = threading.Lock()
        self._memory: Memory | None = None
        self._channel: _OwnerChannel | None = None
        self._door: _Connection | None = None
        self._warm: Future[Embedder] | None = None
        self._closed = False
        self.handovers = 0  # times this process took the store over from a departed owner

    @classmethod
    def open(cls, settings: Settings, open_memory: OpenMemory = _open_memory) -> SharedMemory:
        """Own the store or connect to its owner; blocking (seconds when this process opens the store)."""
        shared = cls(settings, open_memory)
        with shared._route:
            shared._settle(time.monotonic() + settings.shared.handover_timeout_s)
        return shared

    @property
    def role(self) -> Role:
        """Whether this process holds the store ("owner") or forwards to the process that does."""
        return "owner" if self._memory is not None else "front door"

    @property
    def standby(self) -> bool:
        """Whether this front door keeps the embedding model loaded, as the owner's successor."""
        return self._memory is None and self._warm is not None

    # -- routing ---------------------------------------------------------------------------------

    def _settle(self, deadline: float, defer_lock_until: float = 0.0) -> None:
        """Become the owner, or connect to it; the caller holds `_route`. Before `defer_lock_until`,
        only connect: that leaves the lock to the successor, which has the model loaded."""
        waited_for: OwnerInfo | None = None
        while not self._closed:
            if time.monotonic() >= defer_lock_until and self._lock.acquire():
                self._own(deadline)
                return
            info = self._files.read_info()
            if info is not None and info.channel is not None:
                try:
                    self._door = _Connection.open(info, on_gone=self._owner_went, on_successor=self._start_warm_standby)
                except OSError:
                    pass  # not listening yet, or just died: try again
                else:
                    log.info("forwarding to the memory owner (pid %s)", self._door.welcome.get("pid"))
                    if self._door.welcome.get("successor"):
                        self._start_warm_standby()
                    return
            waited_for = info or waited_for
            if time.monotonic() > deadline:
                who = (
                    f"lightmem-mcp pid {waited_for.pid} ({waited_for.role})"
                    if waited_for
                    else "a process that does not answer"
                )
                raise BackendUnavailable(
                    f"the memory store {self._settings.store.embedded_path} is held by {who}, and no server took "
                    f"it over within {self._settings.shared.handover_timeout_s:g} s; this is temporary: retry the "
                    "call (LIGHTMEM_SHARED_HANDOVER_TIMEOUT_S sets the wait)"
                )
            time.sleep(_POLL_S)
        raise BackendUnavailable("the memory server is shutting down")

    def _own(self, deadline: float) -> None:
        """Open the store (retrying while a departed owner's engine lock lingers) and serve front doors."""
        embedder = self._warm.result() if self._warm is not None and self._warm.done() else None
        if self._warm is not None and embedder is None:
            with suppress(Exception):
                embedder = self._warm.result(timeout=max(0.0, deadline - time.monotonic()))
        while True:
            try:
                memory = self._open_memory(self._settings, embedder)
                break
            except StoreInUse:
                if time.monotonic() > deadline:
                    self._lock.release()
                    raise
                time.sleep(_POLL_S)
            except BaseException:
                self._lock.release()
                raise
        try:
            self._channel = _OwnerChannel(self._files, memory, self._channel_kind)
        except BaseException:
            memory.close()
            self._lock.release()
            raise
        self._memory = memory
        log.info("owning the memory store %s; serving other servers on it", self._settings.store.embedded_path)

    def _start_warm_standby(self) -> None:
        """Load the embedding model in the background, so that a takeover opens the store in well under a
        second. Only the owner's successor (one front door at a time) does: the model costs ~400 MB."""
        if self._warm is not None or not self._settings.shared.warm_standby:
            return
        warm: Future[Embedder] = Future()
        self._warm = warm

        def load() -> None:
            try:
                warm.set_result(SentenceTransformerEmbedder(self._settings.embedding))
            except BaseException as exc:  # the takeover loads it again and reports the error then
                warm.set_exception(exc)

        threading.Thread(target=load, name="lightmem-standby", daemon=True).start()

    def _call(
        self, result: type[T], name: str, progress: Progress | None = None, stop: Stop | None = None, **kwargs: Any
    ) -> T:
        """Run a service call on whoever owns the store; across a handover, send it again."""
        deadline: float | None = None
        while True:
            memory, door = self._memory, self._door
            if memory is not None:
                signature = _signature(name)
                method: Callable[..., T] = getattr(memory, name)
                callbacks: dict[str, object] = {"progress": progress} if signature.takes_progress else {}
                if signature.takes_stop:
                    callbacks["stop"] = stop
                return method(**kwargs, **callbacks)
            # A front door hands `stop` on: it tells the owner to stop the call once it says so.
            if door is not None and not door.gone:
                signature = _signature(name)
                args = {k: signature.arguments[k].dump_python(v, mode="json") for k, v in kwargs.items()}
                try:
                    value = door.call(name, args, progress, stop)
                except _OwnerGone:
                    pass
                else:
                    adapter: TypeAdapter[T] = signature.result  # `result` is what `Memory`'s hint says
                    return adapter.validate_python(value)
            if deadline is None:
                deadline = time.monotonic() + self._settings.shared.handover_timeout_s
            self._recover(door, deadline)

    def _owner_went(self, door: _Connection) -> None:
        """The owner hung up: settle again now, so that a new owner opens the store (and resumes the
        background work) without waiting for the next call to find out."""
        if self._closed:
            return

        def settle() -> None:
            try:
                self._recover(door, time.monotonic() + self._settings.shared.handover_timeout_s)
            except LightMemError as exc:
                if not self._closed:
                    log.warning("no owner took the store over: %s; the next call tries again", exc)

        threading.Thread(target=settle, name="lightmem-handover", daemon=True).start()

    def _recover(self, failed: _Connection | None, deadline: float) -> None:
        """After the owner went: take the store over, or connect to whoever did (one thread does it)."""
        with self._route:
            if self._closed:
                raise BackendUnavailable("the memory server is shutting down")
            if self._memory is not None or (self._door is not None and self._door is not failed):
                return  # another thread already settled
            if failed is not None:
                failed.close()
                self._door = None
                log.info("the memory owner went away; taking over or waiting for who does")
            started = time.monotonic()
            # Without the model loaded, give the successor (which has it) the first chance to take over.
            warm = self._warm is not None or not self._settings.shared.warm_standby
            self._settle(deadline, 0.0 if warm else started + _SUCCESSOR_GRACE_S)
            if self._memory is not None:
                self.handovers += 1
                log.info("took the memory store over in %.2f s", time.monotonic() - started)

    def close(self) -> None:
        """Hand the store over (when owning it) or hang up."""
        with self._route:
            self._closed = True
            channel, memory, door = self._channel, self._memory, self._door
            self._channel = self._door = None
            self._memory = None
        if door is not None:
            door.close()
        if channel is not None:
            channel.close()
        try:
            if memory is not None:
                memory.close()
        finally:
            self._lock.release()
            if channel is not None:
                channel.disconnect()

    # -- the service calls (the same signatures as `Memory`'s) -------------------------------------

    def add(
        self,
        messages: Sequence[Message],
        scope: Scope,
        metadata: Mapping[str, MetadataValue] | None = None,
        expires_at: str | None = None,
        ttl: int | None = None,
    ) -> AddResult:
        """`Memory.add`, with message ids fixed first, so that sending it again after a handover
        replaces rather than duplicates."""
        check_metadata(metadata)  # here too: a value JSON cannot carry (NaN) fails with the same error
        fixed = [m if m.id is not None else m.model_copy(update={"id": uuid.uuid4().hex}) for m in messages]
        return self._call(
            AddResult, "add", messages=fixed, scope=scope, metadata=metadata, expires_at=expires_at, ttl=ttl
        )

    def search(
        self,
        query: str,
        scope: Scope,
        limit: int = 10,
        filters: SearchFilters | None = None,
        mode: SearchMode | None = None,
        context: int = 0,
    ) -> SearchResult:
        """`Memory.search`."""
        return self._call(
            SearchResult, "search", query=query, scope=scope, limit=limit, filters=filters, mode=mode, context=context
        )

    def recall(
        self,
        query: str,
        scope: Scope,
        max_tokens: int,
        context: int,
        filters: SearchFilters | None = None,
        compress: bool = False,
    ) -> RecallResult:
        """`Memory.recall`."""
        return self._call(
            RecallResult,
            "recall",
            query=query,
            scope=scope,
            max_tokens=max_tokens,
            context=context,
            filters=filters,
            compress=compress,
        )

    def get(self, ids: Sequence[str], scope: Scope) -> GetResult:
        """`Memory.get`."""
        return self._call(GetResult, "get", ids=ids, scope=scope)

    def list(
        self,
        scope: Scope,
        kinds: Sequence[Kind] | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_superseded: bool = False,
        metadata: Mapping[str, MetadataValue] | None = None,
        speakers: Sequence[str] | None = None,
    ) -> ListResult:
        """`Memory.list`."""
        check_metadata(metadata)
        return self._call(
            ListResult,
            "list",
            scope=scope,
            kinds=kinds,
            limit=limit,
            cursor=cursor,
            include_superseded=include_superseded,
            metadata=metadata,
            speakers=speakers,
        )

    def delete(self, ids: Sequence[str], scope: Scope) -> DeleteResult:
        """`Memory.delete`."""
        return self._call(DeleteResult, "delete", ids=ids, scope=scope)

    def forget(self, scope: Scope, confirm: bool) -> int:
        """`Memory.forget`."""
        return self._call(int, "forget", scope=scope, confirm=confirm)

    def flush(
        self,
        scope: Scope,
        backlog: bool = False,
        dry_run: bool = False,
        progress: Progress | None = None,
        *,
        stop: Stop | None = None,
    ) -> FlushResult:
        """`Memory.flush`; a front door passes `stop` on to the owner."""
        return self._call(FlushResult, "flush", progress, stop, scope=scope, backlog=backlog, dry_run=dry_run)

    def consolidate(
        self,
        scope: Scope | None,
        since: str | None = None,
        until: str | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
        *,
        stop: Stop | None = None,
    ) -> ConsolidateResult:
        """`Memory.consolidate`; a front door passes `stop` on to the owner."""
        return self._call(
            ConsolidateResult, "consolidate", progress, stop, scope=scope, since=since, until=until, dry_run=dry_run
        )

    def summarize(
        self,
        scope: Scope,
        window: Window = "all",
        since: str | None = None,
        until: str | None = None,
        topic: str | None = None,
        progress: Progress | None = None,
        dry_run: bool = False,
        *,
        stop: Stop | None = None,
    ) -> SummarizeResult:
        """`Memory.summarize`; a front door passes `stop` on to the owner."""
        return self._call(
            SummarizeResult,
            "summarize",
            progress,
            stop,
            scope=scope,
            window=window,
            since=since,
            until=until,
            topic=topic,
            dry_run=dry_run,
        )

    def history(self, record: str, scope: Scope) -> HistoryResult:
        """`Memory.history`."""
        return self._call(HistoryResult, "history", record=record, scope=scope)

    def compress(
        self, text: str, rate: float | None = None, target_tokens: int | None = None, force_tokens: Sequence[str] = ()
    ) -> Compression:
        """`Memory.compress`."""
        return self._call(
            Compression, "compress", text=text, rate=rate, target_tokens=target_tokens, force_tokens=force_tokens
        )

    def stats(self, scope: Scope) -> StatsResult:
        """`Memory.stats`."""
        return self._call(StatsResult, "stats", scope=scope)

    def summaries(self, scope: Scope, window: Window | None = None, limit: int = 20) -> builtins.list[SummaryInfo]:
        """`Memory.summaries`."""
        return self._call(builtins.list, "summaries", scope=scope, window=window, limit=limit)

    def forget_preview(self, scope: Scope) -> dict[str, int]:
        """`Memory.forget_preview`."""
        return self._call(dict, "forget_preview", scope=scope)

    def suggest(self, scope: Scope, field: Suggestion, prefix: str = "", limit: int = 100) -> builtins.list[str]:
        """`Memory.suggest`."""
        return self._call(builtins.list, "suggest", scope=scope, field=field, prefix=prefix, limit=limit)

    def known(self, scope: Scope, field: Known, limit: int = 50) -> builtins.list[str]:
        """`Memory.known`."""
        return self._call(builtins.list, "known", scope=scope, field=field, limit=limit)

    def activity(self, scope: Scope, bucket: BucketSize = "week", buckets: int = 12) -> ActivityResult:
        """`Memory.activity`."""
        return self._call(ActivityResult, "activity", scope=scope, bucket=bucket, buckets=buckets)

    def llm_calls(self, scope: Scope, ids: Sequence[str]) -> builtins.list[LLMCallInfo]:
        """`Memory.llm_calls`."""
        return self._call(builtins.list, "llm_calls", scope=scope, ids=ids)

    def export_page(self, scope: Scope, after: str | None = None, limit: int = 500) -> ExportPage:
        """`Memory.export_page`."""
        return self._call(ExportPage, "export_page", scope=scope, after=after, limit=limit)


def _channel_kind(setting: str) -> Literal["unix", "tcp"]:
    if setting == "tcp" or (setting == "auto" and not hasattr(socket, "AF_UNIX")):
        return "tcp"
    if not hasattr(socket, "AF_UNIX"):
        raise errors.ConfigError("LIGHTMEM_SHARED_CHANNEL=unix, but this platform has no Unix sockets: use auto or tcp")
    return "unix"
