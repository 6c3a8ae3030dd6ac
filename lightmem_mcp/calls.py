"""How an MCP request reaches the memory service: the service itself (loaded in the background),
the scope a call acts on (the caller's tenant, the session's project) and a guarded call into it.

Tools, resources, prompts and completions all go through one `Calls`, so the tenant and access
rules are written once. Errors stay domain errors (`LightMemError`); each MCP surface turns them
into its own kind of error.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.resolve import ListRoots
from mcp.types import ListRootsResult

from lightmem_mcp.api import Stop, StopFlag
from lightmem_mcp.auth import acting_user, check_access
from lightmem_mcp.config import Settings
from lightmem_mcp.errors import BackendUnavailable, InvalidInput, LightMemError
from lightmem_mcp.memory import Memory
from lightmem_mcp.projects import Project, project_from_cwd, project_from_roots, project_of
from lightmem_mcp.records import GLOBAL, MAX_ID_CHARS, Scope
from lightmem_mcp.shared import SharedMemory

log = logging.getLogger(__name__)

T = TypeVar("T")
# The service the handlers call: a `Memory`, or in stdio mode a `SharedMemory` (the owner's memory,
# or a forwarder to it); mypy checks every call against both.
MemoryService = Memory | SharedMemory
S = TypeVar("S", bound=MemoryService)
Access = Literal["read", "write", "admin"]


class MemoryProvider(Generic[S]):
    """Builds the memory service once, off the event loop, so `initialize` never waits for models."""

    def __init__(self, settings: Settings, factory: Callable[[Settings], S]) -> None:
        self._settings = settings
        self._factory = factory
        self._lock = threading.Lock()
        self._future: Future[S] | None = None

    def start(self) -> Future[S]:
        """Begin loading unless it is loading or loaded; a failed load is retried."""
        with self._lock:
            if self._future is None or (self._future.done() and self._future.exception() is not None):
                future: Future[S] = Future()
                self._future = future
                threading.Thread(target=self._load, args=(future,), name="lightmem-load", daemon=True).start()
            return self._future

    def _load(self, future: Future[S]) -> None:
        try:
            service = self._factory(self._settings)
        except BaseException as exc:  # handed to every caller, logged once here
            log.error("memory backend unavailable: %s", exc)
            future.set_exception(exc)
            return
        # The models stay loaded for the life of the process: their objects leave the garbage
        # collector's care, whose full passes over them took ~0.3 s in the middle of large reads.
        gc.freeze()
        future.set_result(service)

    async def get(self) -> S:
        """The ready service; raises `BackendUnavailable` when loading failed."""
        future = self.start()
        try:
            return await anyio.to_thread.run_sync(future.result)
        except LightMemError:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"memory backend failed to load: {exc}") from exc

    async def close(self) -> None:
        """Close the service if it was loaded."""
        future = self._future
        if future is None:
            return
        memory = await anyio.to_thread.run_sync(lambda: future.exception() is None and future.result())
        if memory:
            await anyio.to_thread.run_sync(memory.close)


# What the `project` argument accepts besides a project id or a folder.
ALL_PROJECTS = "all"
GLOBAL_TIER = "global"
# How long a session's project (from its client's roots) is reused before the roots are asked again.
ROOTS_TTL_S = 60.0


class SessionProjects:
    """The project a stdio server's session works in: its client's first root that is a project
    folder (when the client offers roots), else the server's working directory. A stdio server has
    one client, so one of these per server; over HTTP every caller's scope is explicit.

    The roots are asked through the SDK's resolver (`ListRoots`), which speaks both protocol eras: a
    request to the client mid-call (2025-11-25), or an input-required round (2026-07-28). The answer
    is reused for `ROOTS_TTL_S`.
    """

    def __init__(self, cwd: Path | None = None) -> None:
        self._cwd = cwd
        self._known: tuple[float, ListRootsResult] | None = None

    async def roots(self, ctx: Context) -> ListRoots | ListRootsResult | None:
        """The resolver of a tool's `roots` parameter: the client's roots, known or to be asked."""
        capabilities = ctx.client_capabilities
        if capabilities is None or capabilities.roots is None:
            return None
        known = self._known
        if known is not None and time.monotonic() - known[0] < ROOTS_TTL_S:
            return known[1]
        return ListRoots()

    async def of(self, roots: ListRootsResult | None) -> Project | None:
        """The session's project: from its roots, else from the working directory."""
        project = None
        if roots is not None:
            if self._known is None or self._known[1] is not roots:  # a fresh answer, not the one reused
                self._known = (time.monotonic(), roots)
            project = await anyio.to_thread.run_sync(project_from_roots, [str(root.uri) for root in roots.roots])
        if project is None:
            project = await anyio.to_thread.run_sync(project_from_cwd, self._cwd)
        return project


# Who made a request (`credential_key`) and its JSON-RPC id: what a cancellation names.
RequestKey = tuple[str | None, str]


def credential_key(token: str | None) -> str | None:
    """What a bearer token is known by among the calls in flight: its hash, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest() if token else None


class InFlight:
    """The stoppable calls running now, by who asked and the request's id.

    Over stateless HTTP a client's `notifications/cancelled` arrives in a POST of its own, which the
    SDK cannot tie to the request it names; the HTTP app looks the request up here instead. A call
    is known by the credential it was made with (a hash of the bearer token; None without auth), so only the
    holder of that credential can cancel it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stops: dict[RequestKey, StopFlag] = {}

    def add(self, key: RequestKey, stop: StopFlag) -> None:
        """A call has started."""
        with self._lock:
            self._stops[key] = stop

    def discard(self, key: RequestKey, stop: StopFlag) -> None:
        """A call has ended."""
        with self._lock:
            if self._stops.get(key) is stop:
                del self._stops[key]

    def cancel(self, key: RequestKey) -> bool:
        """Tell the call to stop at its next batch boundary; False when no such call runs."""
        with self._lock:
            stop = self._stops.get(key)
        if stop is None:
            return False
        stop.set()
        return True


class Calls:
    """The scope of a call and the call itself, for every MCP handler of one server."""

    def __init__(self, provider: MemoryProvider[Any], projects: SessionProjects | None) -> None:
        self.provider = provider
        self.projects = projects
        self.in_flight = InFlight()

    async def scope(
        self,
        user_id: str,
        agent_id: str | None = None,
        session_id: str | None = None,
        project: str | None = None,
        roots: ListRootsResult | None = None,
    ) -> Scope:
        """The scope a call acts on: with an access token (HTTP), the user is the token's tenant
        (another user raises `Forbidden`); the project tier is the argument's, else the session's."""
        user = acting_user(user_id)
        if project is None:
            found = await self.projects.of(roots) if self.projects is not None else None
            tier = found.id if found is not None else None
        else:
            tier = await anyio.to_thread.run_sync(named_project, project)
        return Scope(user, agent_id, session_id, tier)

    async def run(self, call: Callable[[MemoryService], T], access: Access = "read") -> T:
        """Run a service call in a worker thread, once the caller's token grants `access`."""
        check_access(access)
        memory = await self.provider.get()
        return await anyio.to_thread.run_sync(call, memory)

    async def run_stoppable(
        self,
        call: Callable[[MemoryService, Stop], T],
        access: Access = "read",
        what: str = "call",
        request: str | None = None,
    ) -> T:
        """Like `run`, for a call that works in batches and takes a `Stop`: when the request is
        cancelled, the call is told to stop at its next batch boundary, and this waits for it to get
        there (so no worker outlives its request) before the cancellation goes on. `request` (the
        JSON-RPC id) lets a cancellation that reaches the server apart from it find it (`InFlight`)."""
        check_access(access)
        memory = await self.provider.get()
        stop = StopFlag()
        finished = threading.Event()
        token = get_access_token()
        key: RequestKey = (credential_key(token.token if token is not None else None), request or "")
        if request is not None:
            self.in_flight.add(key, stop)

        def work() -> T:
            try:
                return call(memory, stop)
            finally:
                finished.set()

        try:
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            # The service logs what it had done when it stops (e.g. "consolidate cancelled after 1 of 2
            # batches: …"); no response goes to a cancelled request.
            stop.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finished.wait)
            log.debug("%s: cancelled request ended", what)
            raise
        finally:
            self.in_flight.discard(key, stop)


def named_project(value: str) -> str | None:
    """The `Scope.project` a `project` argument names: a project id, or a folder's project."""
    if value == ALL_PROJECTS:
        return None
    if value == GLOBAL_TIER:
        return GLOBAL
    if value.startswith(("/", "~", "file:")) or (len(value) > 2 and value[1] == ":" and value[2] in "\\/"):
        found = project_from_roots([value]) if value.startswith("file:") else project_of(Path(value).expanduser())
        if found is None:
            raise InvalidInput(
                "project",
                f"{value!r} is not a project folder (it does not exist, or is the home directory or the "
                'filesystem root): give a folder inside a project, a project id, "global" or "all"',
            )
        return found.id
    if not value.strip() or len(value) > MAX_ID_CHARS or any(ord(c) < 32 for c in value):
        raise InvalidInput(
            "project",
            f"give a project id of at most {MAX_ID_CHARS} printable characters, an absolute folder path, "
            '"global" or "all"',
        )
    return value
