"""Hosted mode end to end: `lightmem-mcp serve --transport http|sse` on 127.0.0.1, driven by the MCP SDK's clients."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from lightmem_mcp.auth import new_token, token_line
from lightmem_mcp.config import Settings, StoreSettings
from lightmem_mcp.extractor import EXTRACTION_PURPOSE
from lightmem_mcp.hosted import OneResponse
from lightmem_mcp.server import build_server
from tests.hosted_server import HostedServer, call, error_of
from tests.openai_server import FakeLLMServer, Reply, facts_per_message

pytestmark = pytest.mark.anyio

LONG_TURN = (
    "For the record: my sister Maya moved to Lisbon last spring, she works as an architect near the river, "
    "and we agreed that I would visit her for two weeks every September from now on."
)
MAX_BODY = 64 * 1024
TENANTS = ("alice", "bob")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tokens of two tenants, and a read-only one of alice, in a tokens file."""
    grants = {"alice": ("alice", ["read", "write"]), "reader": ("alice", ["read"]), "bob": ("bob", ["read", "write"])}
    issued = {name: new_token() for name in grants}
    path = tmp_path_factory.mktemp("auth") / "tokens.jsonl"
    lines = ["# tokens of the tests", *(token_line(issued[n], t, s, n) for n, (t, s) in grants.items())]
    path.write_text("\n".join(lines) + "\n")
    return {**issued, "file": str(path)}


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer().start()
    yield server
    server.stop()
    assert not server.unexpected, "the fake LLM got requests beyond its script"


def hosted_env(tokens: dict[str, Any], tiny_model: Path) -> dict[str, str]:
    return {
        "LIGHTMEM_AUTH_TOKENS_FILE": tokens["file"],
        "LIGHTMEM_COMPRESSION_PATH": str(tiny_model),
        "LIGHTMEM_HTTP_MAX_REQUEST_BYTES": str(MAX_BODY),
    }


def start_ready(server: HostedServer) -> HostedServer:
    """Start, then wait for the compression model too, so stored turns are compressed."""
    server.start()
    deadline = time.monotonic() + 120
    while httpx2.get(f"{server.base_url}/readyz").json()["checks"]["compression"]["status"] != "ready":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    return server


@pytest.fixture(scope="module")
def http_server(
    tmp_path_factory: pytest.TempPathFactory, tokens: dict[str, Any], tiny_model: Path, llm: FakeLLMServer
) -> Iterator[HostedServer]:
    env = {
        **hosted_env(tokens, tiny_model),
        "LIGHTMEM_LLM_PROVIDER": "openai-compatible",
        "LIGHTMEM_LLM_BASE_URL": llm.base_url,
        "LIGHTMEM_LLM_MODEL": "fake-model",
        "LIGHTMEM_LLM_RETRY_BASE_DELAY_S": "0.01",
    }
    server = start_ready(HostedServer(tmp_path_factory.mktemp("http"), "http", env))
    yield server
    assert server.terminate() == 0, server.log()


def turns(prefix: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": LONG_TURN, "id": f"{prefix}-1"},
        {"role": "assistant", "content": "Lisbon in September sounds lovely.", "id": f"{prefix}-2"},
    ]


async def round_trip(session: ClientSession, prefix: str) -> None:
    """The tools a client uses most, each answering with its structured result, in a session of its own."""
    scope = {"session_id": f"session-{prefix}"}
    added = await call(session, "add_memory", {"messages": turns(prefix), **scope})
    hits = await call(session, "search_memory", {"query": "where does my sister live", **scope})
    got = await call(session, "get_memory", {"ids": added["ids"], **scope})
    listed = await call(session, "list_memories", scope)
    history = await call(session, "memory_history", {"id": added["ids"][0], **scope})
    stats = await call(session, "stats", scope)
    squeezed = await call(session, "compress", {"text": LONG_TURN, "rate": 0.5})
    deleted = await call(session, "delete_memory", {"ids": added["ids"][1:], **scope})
    forgot = await call(session, "forget", {"confirm": True, **scope})

    assert added["source_ids"] == [f"{prefix}-1", f"{prefix}-2"]
    assert hits["hits"][0]["source_ids"] == [f"{prefix}-1"]
    assert {r["original_text"] for r in got["records"]} == {m["content"] for m in turns(prefix)}
    assert len(listed["records"]) == 2
    assert history["versions"][0]["id"] == added["ids"][0]
    assert stats
    assert squeezed["original_tokens"] > squeezed["compressed_tokens"] > 0
    assert deleted == {"deleted": added["ids"][1:], "missing": []}
    assert forgot == {"deleted_count": 1}


async def test_every_tool_is_served_over_streamable_http(
    http_server: HostedServer, tokens: dict[str, Any], llm: FakeLLMServer, tmp_path: Path
) -> None:
    in_process = build_server(Settings(store=StoreSettings(data_dir=tmp_path)))
    expected = {tool.name: tool.input_schema for tool in await in_process.list_tools()}
    llm.script(facts_per_message("Alice said"))

    async with http_server.session(tokens["alice"]) as session:
        served = {tool.name: tool.input_schema for tool in (await session.list_tools()).tools}
        await call(session, "add_memory", {"messages": turns("flush")})
        flushed = await call(session, "flush_memory", {})
        await round_trip(session, "http")

    assert served == expected
    assert (flushed["llm_calls"], flushed["facts"], flushed["pending_turns"]) == (1, 1, 0)


async def test_over_sse_every_tool_answers_with_the_same_tenancy_and_sigterm_ends_the_streams(
    tmp_path: Path, tokens: dict[str, Any], tiny_model: Path
) -> None:
    server = start_ready(HostedServer(tmp_path / "data", "sse", hosted_env(tokens, tiny_model)))
    process = server.process
    assert process is not None
    try:
        async with server.session(tokens["alice"]) as session:
            await round_trip(session, "sse")
            await call(session, "add_memory", {"messages": turns("kept")})
            refused = await error_of(session, "list_memories", {"user_id": "bob"})
        async with server.session(tokens["reader"]) as session:
            forbidden = await error_of(session, "add_memory", {"messages": turns("nope")})
            readable = await call(session, "list_memories", {})
        with contextlib.suppress(Exception):  # the client sees its stream end
            async with server.session(tokens["alice"]) as session:
                await call(session, "list_memories", {})
                process.send_signal(signal.SIGTERM)  # with the stream open
                await anyio.to_thread.run_sync(process.wait)
    finally:
        exit_code = server.terminate()

    assert "'bob' is not the tenant of this token" in refused
    assert forbidden.endswith("forbidden: this token lacks the 'write' scope")
    assert {r["user_id"] for r in readable["records"]} == {"alice"}
    assert len(readable["records"]) == 2
    assert exit_code == 0, server.log()
    assert "Traceback" not in server.log()


async def test_probes_answer_without_a_token(http_server: HostedServer) -> None:
    health = httpx2.get(f"{http_server.base_url}/healthz")
    ready = httpx2.get(f"{http_server.base_url}/readyz")

    assert (health.status_code, health.text) == (200, "ok")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"store", "embedding", "compression", "llm"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["llm"]["provider"] == "openai-compatible"


async def test_a_request_without_a_valid_token_gets_a_401_challenge(http_server: HostedServer) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    anonymous = httpx2.post(http_server.mcp_url, json=ping)
    wrong = httpx2.post(http_server.mcp_url, json=ping, headers={"Authorization": "Bearer lmk_not-a-token"})
    challenge = anonymous.headers["www-authenticate"]
    metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
    metadata = httpx2.get(metadata_url)

    assert anonymous.status_code == wrong.status_code == 401
    assert challenge.startswith("Bearer ")
    assert metadata_url == f"{http_server.base_url}/.well-known/oauth-protected-resource/mcp"
    assert metadata.status_code == 200
    assert metadata.json()["resource"] == http_server.mcp_url


async def test_a_read_only_token_cannot_write(http_server: HostedServer, tokens: dict[str, Any]) -> None:
    async with http_server.session(tokens["reader"]) as session:
        message = await error_of(session, "add_memory", {"messages": turns("reader")})
        deleting = await error_of(session, "forget", {"confirm": True})
        searched = await call(session, "search_memory", {"query": "Lisbon"})

    assert message.endswith("forbidden: this token lacks the 'write' scope")
    assert deleting.endswith("forbidden: this token lacks the 'write' scope")
    assert "hits" in searched


async def test_a_tenant_cannot_reach_another_tenants_memories(
    http_server: HostedServer, tokens: dict[str, Any]
) -> None:
    async with http_server.session(tokens["bob"]) as bob:
        bobs = (await call(bob, "add_memory", {"messages": turns("bob"), "user_id": "bob"}))["ids"]

    async with http_server.session(tokens["alice"]) as alice:
        refusals = [
            await error_of(alice, "list_memories", {"user_id": "bob"}),
            await error_of(alice, "search_memory", {"query": "Lisbon", "user_id": "bob"}),
            await error_of(alice, "get_memory", {"ids": bobs, "user_id": "bob"}),
            await error_of(alice, "delete_memory", {"ids": bobs, "user_id": "bob"}),
            await error_of(alice, "forget", {"confirm": True, "user_id": "bob"}),
        ]
        got = await call(alice, "get_memory", {"ids": bobs})
        deleted = await call(alice, "delete_memory", {"ids": bobs})
        history = await error_of(alice, "memory_history", {"id": bobs[0]})
        searched = await call(alice, "search_memory", {"query": "my sister Maya moved to Lisbon"})
        await call(alice, "forget", {"confirm": True})

    async with http_server.session(tokens["bob"]) as bob:
        still = await call(bob, "get_memory", {"ids": bobs})

    assert all("is not the tenant of this token" in refusal for refusal in refusals)
    assert got == {"records": [], "missing": bobs}
    assert deleted == {"deleted": [], "missing": bobs}
    assert bobs[0] in history
    assert not set(bobs) & {hit["id"] for hit in searched["hits"]}
    assert [r["id"] for r in still["records"]] == bobs


async def test_foreign_hosts_and_oversized_bodies_are_refused(
    http_server: HostedServer, tokens: dict[str, Any]
) -> None:
    auth = {"Authorization": f"Bearer {tokens['alice']}"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    rebound = httpx2.post(http_server.mcp_url, json=ping, headers={**auth, "Host": "attacker.example"})
    cross_site = httpx2.post(http_server.mcp_url, json=ping, headers={**auth, "Origin": "http://attacker.example"})
    huge = {**ping, "params": {"padding": "x" * MAX_BODY}}
    oversized = httpx2.post(http_server.mcp_url, json=huge, headers=auth)

    assert rebound.status_code == 421
    assert cross_site.status_code == 403
    assert oversized.status_code == 413


async def test_get_on_the_stateless_endpoint_is_refused_at_once(
    http_server: HostedServer, tokens: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {tokens['alice']}", "Accept": "text/event-stream"}
    got = httpx2.get(http_server.mcp_url, headers=headers, timeout=5)  # an endless event stream before

    assert got.status_code == 405
    assert got.headers["allow"] == "POST"


async def test_malformed_requests_get_a_400_that_never_echoes_a_large_id(
    http_server: HostedServer, tokens: dict[str, Any]
) -> None:
    headers = {
        "Authorization": f"Bearer {tokens['alice']}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    ping = '{"jsonrpc":"2.0","id":%s,"method":"ping","params":{"x":%s}}'
    bodies = {
        "lone surrogate": ping % ("1", '"\\ud800"'),
        "500 levels deep": ping % ("2", "[" * 500 + "]" * 500),
        "10 kB id": ping % (json.dumps("i" * 10_000), "1"),
    }
    answers = {name: httpx2.post(http_server.mcp_url, content=body, headers=headers) for name, body in bodies.items()}

    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(bodies, 400)
    assert [answer.json()["error"]["code"] for answer in answers.values()] == [-32700, -32700, -32600]
    assert all(answer.json()["id"] is None and len(answer.content) < 1000 for answer in answers.values())


async def test_over_sse_a_foreign_host_or_origin_is_refused_cleanly_and_a_large_id_is_not_echoed(
    tmp_path: Path, tokens: dict[str, Any]
) -> None:
    env = {"LIGHTMEM_AUTH_TOKENS_FILE": tokens["file"], "LIGHTMEM_COMPRESSION_ENABLED": "false"}
    server = HostedServer(tmp_path / "data", "sse", env).start()
    auth = {"Authorization": f"Bearer {tokens['alice']}"}
    big_id = {"jsonrpc": "2.0", "id": "i" * 10_000, "method": "ping"}
    try:
        rebound = httpx2.get(server.mcp_url, headers={**auth, "Host": "attacker.example"}, timeout=5)
        cross_site = httpx2.get(server.mcp_url, headers={**auth, "Origin": "http://attacker.example"}, timeout=5)
        with httpx2.stream("GET", server.mcp_url, headers=auth, timeout=10) as events:
            lines = events.iter_lines()  # kept: dropping the iterator would close the stream, and the session
            endpoint = next(line for line in lines if line.startswith("data: "))[len("data: ") :]
            posted = httpx2.post(f"{server.base_url}{endpoint}", json=big_id, headers=auth)
            pinged = httpx2.post(f"{server.base_url}{endpoint}", json={**big_id, "id": 1}, headers=auth)
    finally:
        exit_code = server.terminate()

    assert (rebound.status_code, rebound.text) == (421, "Invalid Host header")
    assert (cross_site.status_code, cross_site.text) == (403, "Invalid Origin header")
    assert posted.status_code == 400
    assert posted.json()["id"] is None
    assert pinged.status_code == 202  # the session serves on; the answer comes on its stream
    assert exit_code == 0
    assert "Traceback" not in server.log()
    assert "Exception in ASGI application" not in server.log()


def scrape(server: HostedServer) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    text = httpx2.get(f"{server.base_url}/metrics").text
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_tool_calls_llm_usage_and_compression(
    http_server: HostedServer, tokens: dict[str, Any], llm: FakeLLMServer
) -> None:
    _, before = scrape(http_server)
    llm.script(Reply.computed(facts_per_message("Alice said"), cached_tokens=7))
    async with http_server.session(tokens["alice"]) as session:
        await call(session, "add_memory", {"messages": turns("metered"), "session_id": "metered"})
        await error_of(session, "get_memory", {"ids": ["not-an-id"]})
        await call(session, "flush_memory", {"session_id": "metered"})
    text, after = scrape(http_server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("lightmem_tool_calls_total", tool="add_memory", outcome="ok") == 1
    assert delta("lightmem_tool_calls_total", tool="get_memory", outcome="error") == 1
    assert delta("lightmem_tool_calls_total", tool="flush_memory", outcome="ok") == 1
    assert delta("lightmem_tool_call_duration_seconds_count", tool="add_memory") == 1
    assert delta("lightmem_records_stored_total", kind="turn") == 2
    assert delta("lightmem_records_stored_total", kind="fact") == 1
    original = delta("lightmem_stored_turn_tokens_total", form="original")
    assert original > delta("lightmem_stored_turn_tokens_total", form="compressed") > 0
    assert delta("lightmem_llm_calls_total", purpose=EXTRACTION_PURPOSE, outcome="ok") == 1
    assert delta("lightmem_llm_tokens_total", purpose=EXTRACTION_PURPOSE, kind="cached") == 7
    assert delta("lightmem_llm_tokens_total", purpose=EXTRACTION_PURPOSE, kind="prompt") > 7
    assert delta("lightmem_llm_call_duration_seconds_count", purpose=EXTRACTION_PURPOSE) == 1
    assert value(after, "lightmem_inflight_requests") == 0
    assert ("lightmem_inflight_requests", frozenset()) in after
    for tenant in TENANTS:
        assert tenant not in text


async def test_sigterm_during_adds_loses_nothing_acknowledged(tmp_path: Path) -> None:
    env = {"LIGHTMEM_AUTH_MODE": "none", "LIGHTMEM_COMPRESSION_ENABLED": "false"}
    server = HostedServer(tmp_path / "data", "http", env).start()
    process = server.process
    assert process is not None
    total = 60
    acknowledged: list[str] = []
    refused: list[str] = []

    async def add(session: ClientSession, limiter: anyio.CapacityLimiter, n: int) -> None:
        async with limiter:
            message = {"role": "user", "content": f"Note number {n}: water the plants.", "id": f"note-{n}"}
            try:
                with anyio.fail_after(60):
                    result = await session.call_tool("add_memory", {"messages": [message], "user_id": "u"})
            except Exception:
                refused.append(message["id"])
                return
            (refused if result.is_error else acknowledged).append(message["id"])

    try:
        async with server.session(None) as session, anyio.create_task_group() as group:
            limiter = anyio.CapacityLimiter(6)
            for n in range(total):
                group.start_soon(add, session, limiter, n)
            with anyio.fail_after(60):
                while len(acknowledged) < 10:
                    await anyio.sleep(0.005)
            process.send_signal(signal.SIGTERM)
    except Exception:  # the client sees its server go away mid-batch; that is the point
        pass
    exit_code = await anyio.to_thread.run_sync(process.wait)

    restarted = HostedServer(tmp_path / "data", "http", env).start()
    try:
        async with restarted.session(None) as session:
            listed = await call(session, "list_memories", {"user_id": "u", "limit": 100})
    finally:
        assert restarted.terminate() == 0, restarted.log()

    stored = {source for record in listed["records"] for source in record["source_ids"]}
    assert exit_code == 0, server.log()
    assert len(acknowledged) >= 10
    assert set(acknowledged) <= stored
    assert "Traceback" not in server.log()


class JWKS:
    """A local identity provider: an RSA signing key and its JWKS served on 127.0.0.1."""

    issuer = "https://id.example.test/"
    audience = "lightmem-test"

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        body = json.dumps({"keys": [{**public, "kid": "test-key", "alg": "RS256", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"

    def token(self, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        payload = {"iss": self.issuer, "aud": self.audience, "exp": int(time.time()) + 600, **claims}
        return jwt.encode(payload, key or self._key, algorithm="RS256", headers={"kid": "test-key"})

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


async def test_jwt_mode_takes_tenant_and_scopes_from_the_token(tmp_path: Path) -> None:
    idp = JWKS()
    env = {
        "LIGHTMEM_AUTH_MODE": "jwt",
        "LIGHTMEM_AUTH_JWKS_URL": idp.url,
        "LIGHTMEM_AUTH_ISSUER": idp.issuer,
        "LIGHTMEM_AUTH_AUDIENCE": idp.audience,
        "LIGHTMEM_AUTH_SCOPE_PREFIX": "memory:",
        "LIGHTMEM_COMPRESSION_ENABLED": "false",
    }
    server = HostedServer(tmp_path / "data", "http", env).start()
    writer = idp.token(sub="carol", scope="openid memory:read memory:write")
    reader = idp.token(sub="carol", scp=["memory:read"])
    unscoped = idp.token(sub="carol", scope="read write")  # this server's scopes carry the prefix
    refused_tokens = [
        idp.token(sub="carol", scope="memory:write", exp=int(time.time()) - 3600),
        idp.token(sub="carol", scope="memory:write", aud="another-service"),
        idp.token(sub="carol", scope="memory:write", iss="https://evil.example.test/"),
        idp.token(rsa.generate_private_key(public_exponent=65537, key_size=2048), sub="carol", scope="memory:write"),
    ]
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    try:
        async with server.session(writer) as session:
            await call(session, "add_memory", {"messages": turns("jwt")})
            listed = await call(session, "list_memories", {"user_id": "carol"})
            other = await error_of(session, "list_memories", {"user_id": "dave"})
        async with server.session(reader) as session:
            read_only = await error_of(session, "add_memory", {"messages": turns("jwt")})
            readable = await call(session, "search_memory", {"query": "Lisbon"})
        async with server.session(unscoped) as session:
            no_scope = await error_of(session, "search_memory", {"query": "Lisbon"})
        statuses = [
            httpx2.post(server.mcp_url, json=ping, headers={"Authorization": f"Bearer {t}"}).status_code
            for t in refused_tokens
        ]
        metadata = httpx2.get(f"{server.base_url}/.well-known/oauth-protected-resource/mcp").json()
    finally:
        rc = server.terminate()
        idp.stop()

    assert {r["user_id"] for r in listed["records"]} == {"carol"}
    assert len(listed["records"]) == 2
    assert "'dave' is not the tenant of this token" in other
    assert read_only.endswith("forbidden: this token lacks the 'write' scope")
    assert readable["hits"]
    assert no_scope.endswith("forbidden: this token lacks the 'read' scope")
    assert statuses == [401, 401, 401, 401]
    assert metadata["authorization_servers"] == [idp.issuer]
    assert rc == 0


async def test_a_second_response_to_one_request_is_dropped_and_the_first_completed() -> None:
    async def answers_twice(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"event: endpoint\n\n", "more_body": True})
        await send({"type": "http.response.start", "status": 200, "headers": []})  # what the SDK's SSE GET does
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await OneResponse(answers_twice)({"type": "http"}, receive, send)

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
