"""`lightmem-mcp ui` and `lightmem-mcp ui-link`: the memory browser on this machine, and links to a hosted one.

`ui` binds 127.0.0.1 only, opens the data directory through the shared owner (the stdio server
that holds it, when one runs; else this process holds it and serves the stdio servers that start
later), and prints a one-time link: nobody else on the machine can open the page without it.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import uvicorn
from mcp.server.auth.provider import TokenVerifier
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from lightmem_mcp.calls import MemoryProvider
from lightmem_mcp.config import Settings
from lightmem_mcp.errors import ConfigError
from lightmem_mcp.memory import Memory
from lightmem_mcp.shared import SharedMemory
from lightmem_mcp.ui.access import PATH, Access, Entry
from lightmem_mcp.ui.app import build_ui

_LOOPBACK = "127.0.0.1"


def access_of(settings: Settings, entry: Entry, verifier: TokenVerifier | None = None) -> Access:
    """The `Access` of a server, from the UI settings."""
    secret = settings.ui.secret.get_secret_value() if settings.ui.secret else None
    return Access(secret, entry, verifier, settings.ui.session_hours, settings.ui.link_minutes)


def local_app(settings: Settings, provider: MemoryProvider[Any], access: Access, port: int) -> Starlette:
    """The browser alone, for 127.0.0.1:`port`; the service opens at start and closes at the end."""
    here = [f"{_LOOPBACK}:{port}", f"localhost:{port}"]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=here,
        allowed_origins=[f"http://{host}" for host in here],
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        provider.start()
        try:
            yield
        finally:
            await provider.close()

    async def root(_: Request) -> Response:
        return RedirectResponse(f"{PATH}/", status_code=303)

    return Starlette(
        routes=[Route("/", root, methods=["GET"]), Mount(PATH, app=build_ui(provider, access, security))],
        lifespan=lifespan,
    )


def serve_local(settings: Settings, port: int | None, read_only: bool) -> int:
    """Run the browser on 127.0.0.1 until Ctrl-C; prints the one-time link on stdout."""
    shared = settings.shared.enabled and not settings.store.qdrant_url
    provider: MemoryProvider[Any] = MemoryProvider(settings, SharedMemory.open if shared else Memory.open)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((_LOOPBACK, settings.ui.port if port is None else port))
    except OSError as exc:
        print(f"lightmem-mcp ui: cannot listen on {_LOOPBACK}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    listener.listen(64)
    bound = listener.getsockname()[1]
    access = access_of(settings, "link")
    app = local_app(settings, provider, access, bound)
    link = access.link(f"http://{_LOOPBACK}:{bound}", None, not read_only)
    print(
        f"Memory browser of {settings.store.embedded_path}: open this link (once, within "
        f"{settings.ui.link_minutes:g} minutes):",
        flush=True,
    )
    print(link, flush=True)
    config = uvicorn.Config(
        app, log_config=None, log_level=settings.server.log_level.lower(), access_log=False, server_header=False
    )
    with suppress(KeyboardInterrupt):  # uvicorn raises the Ctrl-C again once it has shut down: a clean stop
        uvicorn.Server(config).run(sockets=[listener])
    return 0


def hosted_link(settings: Settings, tenant: str, read_only: bool, base_url: str | None) -> str:
    """A one-time link to the `/ui` of a hosted server that shares this `LIGHTMEM_UI_SECRET`."""
    if settings.ui.secret is None:
        raise ConfigError(
            "LIGHTMEM_UI_SECRET is not set: links are signed with it, so set the same secret here and on the server"
        )
    base = base_url or settings.http.public_url or f"http://{_LOOPBACK}:{settings.http.port}"
    return access_of(settings, "token").link(base, tenant, not read_only)
