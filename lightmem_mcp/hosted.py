"""Hosted mode: the MCP server over streamable HTTP (`/mcp`) or SSE (`/sse`), with auth, probes and metrics.

The app is the SDK's transport app (its auth middleware, 401 challenges, protected-resource
metadata, DNS-rebinding checks and body-size limit) mounted under a small Starlette app that
adds `/healthz`, `/readyz` and `/metrics` (unauthenticated: they carry no user data), the memory
browser at `/ui` (the same tokens, see `ui`), and owns the lifespan: the `Memory` opens once per
process and closes once, at shutdown.

Small ASGI guards in front of it answer what the SDK would leave hanging or echo: `GET /mcp` (405),
a refused Host or Origin on `/sse` (without the SDK's traceback) and a request id too large to
send back (400, see `jsonrpc`).

Streamable HTTP is stateless (JSON responses), so any replica answers any request behind a
round-robin load balancer. SSE keeps a session in the process that opened the stream, so SSE
clients need sticky sessions.

On SIGTERM the server stops accepting connections, lets the MCP requests in flight finish (up to
`LIGHTMEM_HTTP_SHUTDOWN_TIMEOUT_S`), ends SSE streams, then closes the `Memory` (running
extraction finishes, the store is flushed and closed). Every acknowledged add was already
durable in the store before its answer was sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import pydantic_core
import uvicorn
from mcp.server.auth.settings import AuthSettings as ProtectedResourceSettings
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from prometheus_client import disable_created_metrics
from pydantic import AnyHttpUrl
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Message as ASGIMessage
from starlette.types import Scope as ASGIScope

from lightmem_mcp.auth import RequestToken, build_verifier
from lightmem_mcp.calls import InFlight, credential_key
from lightmem_mcp.config import HttpSettings, Settings
from lightmem_mcp.jsonrpc import Refusal, id_refusal
from lightmem_mcp.memory import Memory
from lightmem_mcp.metrics import CONTENT_TYPE, Metrics, RequestMetrics
from lightmem_mcp.records import RecordFilter
from lightmem_mcp.server import MemoryProvider, build_server
from lightmem_mcp.ui.access import PATH as UI_PATH
from lightmem_mcp.ui.app import Guard, build_ui
from lightmem_mcp.ui.local import access_of

log = logging.getLogger(__name__)

Transport = Literal["http", "sse"]
MCP_PATH = "/mcp"
SSE_PATH = "/sse"
SSE_MESSAGE_PATH = "/messages/"
# Readiness counts this user's records: a cheap read that needs the store to answer.
_PROBE_USER = "lightmem-readiness-probe"
_PROBE_TIMEOUT_S = 5.0
_AFTER_DRAIN_TIMEOUT_S = 5.0


@dataclass
class HostedApp:
    """The ASGI app of one server process, and what its shutdown needs."""

    app: Starlette
    metrics: Metrics


def build_app(settings: Settings, transport: Transport, provider: MemoryProvider[Memory] | None = None) -> HostedApp:
    """The HTTP app for `transport`; raises `ConfigError` when the auth settings are unusable."""
    http = settings.http
    metrics = Metrics()
    memory_provider = provider or MemoryProvider(settings, lambda s: Memory.open(s, observers=[metrics]))
    verifier = build_verifier(settings.auth)
    if verifier is None and not _is_loopback(http.host):
        print(
            f"lightmem-mcp: WARNING: LIGHTMEM_AUTH_MODE=none on {http.host}: anyone who reaches this port can "
            "read and delete every user's memories. Use it only on a trusted network.",
            file=sys.stderr,
            flush=True,
        )
    base_url = _base_url(http)
    resource_url = settings.auth.resource_url or base_url + (MCP_PATH if transport == "http" else SSE_PATH)
    protected = (
        ProtectedResourceSettings(
            # Static tokens have no authorization server; the metadata then names this server.
            issuer_url=AnyHttpUrl(settings.auth.issuer or base_url),
            resource_server_url=AnyHttpUrl(resource_url),
            required_scopes=settings.auth.required_scopes or None,
            validate_token_resource=False,  # the verifiers check the audience themselves
        )
        if verifier is not None
        else None
    )
    server = build_server(settings, memory_provider, auth=protected, token_verifier=verifier, close_on_exit=False)
    server.middleware.extend([RequestMetrics(metrics), RequestToken()])

    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=http.dns_rebinding_protection,
        allowed_hosts=allowed_hosts(http),
        allowed_origins=allowed_origins(http),
    )
    if transport == "http":
        mcp_app = server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            json_response=True,
            stateless_http=True,
            max_request_body_size=http.max_request_bytes,
            transport_security=security,
            host=http.host,
        )
    else:
        mcp_app = server.sse_app(
            sse_path=SSE_PATH,
            message_path=SSE_MESSAGE_PATH,
            max_request_body_size=http.max_request_bytes,
            transport_security=security,
            host=http.host,
        )

    edge: ASGIApp = (
        CancelNotices(NoGetStream(mcp_app), server.calls.in_flight)
        if transport == "http"
        else SseHostCheck(OneResponse(mcp_app), security)
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        metrics.know_tools(tool.name for tool in await server.list_tools())
        if settings.server.warmup:
            memory_provider.start()
        try:
            async with mcp_app.router.lifespan_context(mcp_app):
                yield
        finally:
            await memory_provider.close()

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        checks = await readiness(memory_provider, settings)
        ready = all(check["ok"] for check in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def metrics_page(_: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    browser: list[Route | Mount] = []
    if settings.ui.enabled:
        access = access_of(settings, "open" if verifier is None else "token", verifier)
        to_browser = Guard(RedirectResponse(f"{UI_PATH}/", status_code=308), security)
        browser = [
            Route(UI_PATH, to_browser, methods=["GET"]),
            Mount(UI_PATH, app=build_ui(memory_provider, access, security)),
        ]
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
            *browser,
            Mount("/", app=RequestIdLimit(edge, http.max_request_bytes)),
        ],
        lifespan=lifespan,
    )
    return HostedApp(app, metrics)


async def readiness(provider: MemoryProvider[Memory], settings: Settings) -> dict[str, dict[str, Any]]:
    """Named checks, each with `ok`: store reachable, models loaded, LLM configured or deliberately off."""
    llm = settings.llm
    checks: dict[str, dict[str, Any]] = {
        "llm": {"ok": True, "provider": llm.provider, "model": llm.model}
        if llm.provider != "none"
        else {"ok": True, "provider": "none", "extraction": "off (LIGHTMEM_LLM_PROVIDER=none)"}
    }
    future = provider.start()  # also retries a load that failed
    if not future.done():
        loading = {"ok": False, "error": "loading the embedding model and opening the store"}
        return {"store": loading, "embedding": loading, **checks}
    failure = future.exception()
    if failure is not None:
        failed = {"ok": False, "error": f"{type(failure).__name__}: {failure}"}
        return {"store": failed, "embedding": failed, **checks}
    memory = future.result()
    try:
        with anyio.fail_after(_PROBE_TIMEOUT_S):
            await anyio.to_thread.run_sync(
                lambda: memory.store.count(RecordFilter(_PROBE_USER)), abandon_on_cancel=True
            )
        store: dict[str, Any] = {"ok": True, "backend": "qdrant server" if settings.store.qdrant_url else "embedded"}
    except Exception as exc:
        store = {"ok": False, "error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__}
    compressor = memory.compressor
    compression: dict[str, Any] = {"ok": compressor.status != "unavailable", "status": compressor.status}
    if compressor.reason:
        compression["reason"] = compressor.reason
    return {
        "store": store,
        "embedding": {"ok": True, "model": memory.embedder.id},
        "compression": compression,
        **checks,
    }


def allowed_hosts(http: HttpSettings) -> list[str]:
    """Host headers the MCP endpoints accept: the bound address, localhost, the public URL's host, extras."""
    hosts = _local_hosts(http)
    if http.public_url:
        hosts.append(urlsplit(http.public_url).netloc)  # clients send the port only when it is not the default
    return list(dict.fromkeys([*hosts, *http.allowed_hosts]))


def allowed_origins(http: HttpSettings) -> list[str]:
    """Origin headers the MCP endpoints accept (requests without one are always accepted)."""
    origins = [f"http://{host}" for host in _local_hosts(http)]
    if http.public_url:
        public = urlsplit(http.public_url)
        origins.append(f"{public.scheme}://{public.netloc}")
    return list(dict.fromkeys([*origins, *http.allowed_origins]))


def _local_hosts(http: HttpSettings) -> list[str]:
    hosts = [f"127.0.0.1:{http.port}", f"localhost:{http.port}", f"[::1]:{http.port}"]
    if not _is_wildcard(http.host):
        hosts.append(f"{_url_host(http.host)}:{http.port}")
    return hosts


def _base_url(http: HttpSettings) -> str:
    if http.public_url:
        return http.public_url.rstrip("/")
    host = "localhost" if _is_wildcard(http.host) else _url_host(http.host)
    return f"http://{host}:{http.port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


class OneResponse:
    """ASGI guard: a request gets one response; a second one started after it is dropped.

    The SDK's SSE endpoint without auth answers again with an empty response once its event stream
    has ended, which uvicorn reports as an error at every disconnect and shutdown. The guard ends
    the stream's response instead, if the stream did not.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """Pass everything through except a second response."""
        started = ended = dropping = False

        async def once(message: ASGIMessage) -> None:
            nonlocal started, ended, dropping
            kind = message["type"]
            if kind == "http.response.start" and started:
                dropping = True
                if not ended:
                    ended = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            if dropping and kind.startswith("http.response."):
                return
            started = started or kind == "http.response.start"
            ended = ended or (kind == "http.response.body" and not message.get("more_body", False))
            await send(message)

        await self._app(scope, receive, once)


class NoGetStream:
    """ASGI guard: `GET /mcp` gets 405 (Allow: POST), which the MCP spec allows a server without a GET stream.

    The SDK's stateless transport answers it with an event stream that nothing is ever sent on and
    that never ends (`StreamableHTTPSessionManager._handle_stateless_request` hands it to
    `StreamableHTTPServerTransport._handle_get_request`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """Answer `GET /mcp`; pass everything else through."""
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == MCP_PATH:
            refused = PlainTextResponse("Method Not Allowed: this server has no GET stream", 405, {"Allow": "POST"})
            await refused(scope, receive, send)
            return
        await self._app(scope, receive, send)


class CancelNotices:
    """ASGI guard: a `notifications/cancelled` POSTed to the stateless `/mcp` reaches the call it names.

    Over stateless HTTP every POST stands alone, so the SDK cannot tie a cancellation to the request
    it names, and a cancelled consolidation ran on to the end. This looks the request up among the
    calls in flight (`InFlight`, by the caller's bearer token and the request id) and tells it to
    stop at its next batch boundary; the POST then goes on to the SDK, which accepts it. A replica
    only knows its own calls: behind a load balancer the notice must reach the replica running it.
    """

    def __init__(self, app: ASGIApp, in_flight: InFlight) -> None:
        self._app = app
        self._in_flight = in_flight

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """Read a POST's body; stop the calls it cancels; replay it to the app."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != MCP_PATH:
            await self._app(scope, receive, send)
            return
        received: deque[ASGIMessage] = deque()
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in received)
        if b"notifications/cancelled" in body:
            credential = credential_key(_bearer(Request(scope).headers.get("authorization", "")))
            for request_id in _cancelled_ids(body):
                self._in_flight.cancel((credential, request_id))

        async def replay() -> ASGIMessage:
            return received.popleft() if received else await receive()

        await self._app(scope, replay, send)


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _cancelled_ids(body: bytes) -> list[str]:
    """The request ids a JSON-RPC message (or batch) cancels."""
    try:
        raw = pydantic_core.from_json(body)
    except ValueError:
        return []
    messages = raw if isinstance(raw, list) else [raw]
    return [
        str(message["params"]["requestId"])
        for message in messages
        if isinstance(message, dict)
        and message.get("method") == "notifications/cancelled"
        and isinstance(message.get("params"), dict)
        and isinstance(message["params"].get("requestId"), str | int)
    ]


class SseHostCheck:
    """ASGI guard: `GET /sse` with a refused Host or Origin gets the SDK's refusal (421 / 403) from here.

    The SDK's SSE endpoint sends that refusal and then raises (`SseServerTransport.connect_sse`), so
    each one logged an ASGI traceback and could reset the connection before the answer was read.
    """

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self._app = app
        self._security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """Answer a refused `GET /sse`; pass everything else through."""
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == SSE_PATH:
            refused = await self._security.validate_request(Request(scope, receive), is_post=False)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self._app(scope, receive, send)


class RequestIdLimit:
    """ASGI guard: a JSON-RPC request whose id is too large to echo gets a 400 with a null id.

    The SDK answers every request with its id, whatever its size: a 1 MB id came back whole. A body
    over `max_body_bytes` is passed on unread, for the SDK's 413.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self._app = app
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """Read a JSON-RPC POST's body, answer it if its id is refused, else replay it to the app."""
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not _is_jsonrpc_path(path):
            await self._app(scope, receive, send)
            return
        received: deque[ASGIMessage] = deque()
        size, complete = 0, False
        while not complete and size <= self._max_body_bytes:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            complete = not message.get("more_body", False)
        if complete and size <= self._max_body_bytes:
            refused = _id_refusal(b"".join(m.get("body", b"") for m in received))
            if refused is not None:
                answer = refused.answer.model_dump_json(by_alias=True, exclude_unset=True)
                await Response(answer, 400, media_type="application/json")(scope, receive, send)
                return

        async def replay() -> ASGIMessage:
            return received.popleft() if received else await receive()

        await self._app(scope, replay, send)


def _is_jsonrpc_path(path: str) -> bool:
    return path == MCP_PATH or path.startswith(SSE_MESSAGE_PATH)


def _id_refusal(body: bytes) -> Refusal | None:
    try:
        raw = pydantic_core.from_json(body)
    except ValueError:
        return None  # the SDK answers what does not parse
    return id_refusal(raw)


class DrainingServer(uvicorn.Server):
    """uvicorn, with a shutdown that lets in-flight MCP requests finish before SSE streams end."""

    def __init__(self, config: uvicorn.Config, metrics: Metrics, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._metrics = metrics
        self._drain_timeout_s = drain_timeout_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, wait for in-flight requests, end the streams, then shut down as uvicorn does."""
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle keep-alive connections close; busy ones close after their answer
        deadline = time.monotonic() + self._drain_timeout_s
        while self._metrics.requests_in_flight and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        if self._metrics.requests_in_flight:
            log.warning("shutting down with %d request(s) unfinished", self._metrics.requests_in_flight)
        AppStatus.should_exit = True  # answers are sent: the SSE streams may end now
        await super().shutdown(sockets)


def serve(settings: Settings, transport: Transport) -> bool:
    """Run the HTTP server until SIGTERM or SIGINT; False when it could not start (e.g. the port is taken)."""
    hosted = build_app(settings, transport)
    # `_created` series would double what Prometheus stores and say nothing a scrape does not.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    # SSE streams must outlive the SIGTERM until the answers in flight are sent; DrainingServer ends them.
    AppStatus.enable_automatic_graceful_drain = False  # what disable_automatic_graceful_drain() sets
    config = uvicorn.Config(
        hosted.app,
        host=settings.http.host,
        port=settings.http.port,
        log_config=None,  # keep the process's logging: stderr, LIGHTMEM_LOG_LEVEL
        log_level=settings.server.log_level.lower(),
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(_AFTER_DRAIN_TIMEOUT_S),
    )
    server = DrainingServer(config, hosted.metrics, settings.http.shutdown_timeout_s)
    # uvicorn raises a SIGTERM again once it has shut down gracefully; exit with 0 then, the
    # status of a clean stop, rather than die of the signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    return server.started


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
