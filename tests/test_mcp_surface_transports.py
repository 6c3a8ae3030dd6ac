"""The MCP surface over real transports: the `lightmem-mcp` command over stdio, and the hosted
server over streamable HTTP with tenant tokens. A cancelled consolidation stops at a batch
boundary with nothing half-written; progress reaches the client; resources, templates, prompts
and completions answer, and none of them reveals another tenant's memories."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import ResourceLink, TextResourceContents

from lightmem_mcp.auth import new_token, token_line
from tests.hosted_server import HostedServer, call, error_of
from tests.openai_server import ChatRequest, FakeLLMServer, Reply
from tests.test_consolidate import SPRING, SUMMER, extract, judge
from tests.test_mcp_surface import Person
from tests.test_stdio import COMMAND

pytestmark = pytest.mark.anyio


def llm_env(llm: FakeLLMServer) -> dict[str, str]:
    return {
        "LIGHTMEM_LLM_PROVIDER": "openai-compatible",
        "LIGHTMEM_LLM_BASE_URL": llm.base_url,
        "LIGHTMEM_LLM_MODEL": "fake-model",
        "LIGHTMEM_LLM_MAX_RETRIES": "0",
        "LIGHTMEM_PIPELINE_BUFFER_TOKENS": "10000",
        "LIGHTMEM_CONSOLIDATION_SCORE_THRESHOLD": "0.7",
        "LIGHTMEM_CONSOLIDATION_TARGETS_PER_CALL": "1",
        "LIGHTMEM_COMPRESSION_ENABLED": "false",
    }


def stdio_server(data_dir: Path, env: dict[str, str]) -> Client:
    base = {"LIGHTMEM_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "LIGHTMEM_LOG_LEVEL": "WARNING"}
    return Client(StdioServerParameters(command=COMMAND, env={**base, **env}), read_timeout_seconds=120)


def said(rows: list[tuple[str, str, str, str]], session: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": text, "id": mid, "timestamp": ts} for mid, ts, text, _ in rows]
    return {"messages": messages, "user_id": "maya", "session_id": session}


class Held:
    """A scripted LLM answer that waits until the test lets it go (the call in flight when the
    client cancels), then answers like `answer`."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, request: ChatRequest) -> Any:
        self.started.set()
        assert self.release.wait(60), "the test never released the held LLM call"
        return self.answer(request)


@asynccontextmanager
async def session_over(transport: str, data_dir: Path, env: dict[str, str]) -> AsyncIterator[Any]:
    """A client session of the `lightmem-mcp` command: over stdio, or over HTTP with a tenant token."""
    if transport == "stdio":
        async with stdio_server(data_dir, env) as client:
            yield client
        return
    if transport == "stdio front door":
        # A second window on the same memory: the first server owns the store, this one forwards to it.
        async with stdio_server(data_dir, env) as owner:
            await call(owner, "stats", {"user_id": "maya"})  # loaded: it holds the store
            async with stdio_server(data_dir, env) as door:
                yield door
        return
    token = new_token()
    tokens = data_dir / "tokens.jsonl"
    tokens.write_text(token_line(token, "maya", ["read", "write"], "maya") + "\n")
    server = HostedServer(data_dir, "http", {**env, "LIGHTMEM_AUTH_TOKENS_FILE": str(tokens)}).start()
    try:
        async with server.session(token) as session:
            yield session
    finally:
        assert server.terminate() == 0, server.log()


@pytest.mark.parametrize("transport", ["stdio", "stdio front door", "http"])
async def test_a_cancelled_consolidation_stops_at_a_batch_boundary(
    tmp_path: Path, llm_server: FakeLLMServer, transport: str
) -> None:
    held = Held(judge)
    llm_server.script(extract, extract)
    async with session_over(transport, tmp_path, llm_env(llm_server)) as client:
        for rows, session in ((SPRING, "spring"), (SUMMER, "summer")):
            await call(client, "add_memory", said(rows, session))
            await call(client, "flush_memory", {"user_id": "maya", "session_id": session})
        extraction_calls = len(llm_server.requests)
        # Two targets (Berlin, Luna), one per call: the first is in flight when the client cancels.
        llm_server.script(Reply.computed(held), judge)

        with anyio.CancelScope() as cancelled:
            async with anyio.create_task_group() as group:
                group.start_soon(client.call_tool, "consolidate", {"user_id": "maya"})
                await anyio.to_thread.run_sync(held.started.wait, 60)
                cancelled.cancel()
        # The client's notice travels to the server (and from a front door on to the owner) while the
        # first call is held; a second is plenty for a few local hops. Then the call may answer.
        await anyio.sleep(1)
        held.release.set()
        # The first batch is applied whole (its decision: Berlin is superseded by Munich)...
        with anyio.fail_after(60):
            while True:
                listed = await call(client, "list_memories", {"user_id": "maya", "include_superseded": True})
                if any(r["status"] == "superseded" for r in listed["records"]):
                    break
                await anyio.sleep(0.1)
        # ... and a later run decides the rest, each once.
        finished = await call(client, "consolidate", {"user_id": "maya"})
        facts = await call(client, "list_memories", {"user_id": "maya", "kinds": ["fact"]})

    assert len(llm_server.requests) == extraction_calls + 2 and llm_server.pending == 0
    assert not llm_server.unexpected
    # The later run did the cat: the cancelled one had stopped before it. Berlin was done once.
    assert [c["action"] for c in finished["changes"]] == ["update"]
    active = {r["text"] for r in facts["records"]}
    assert "Maya has a grey Persian cat named Luna." in active and "Maya lives in Munich, Germany." in active
    assert not active & {"Maya lives in Berlin, Germany.", "Maya has a cat named Luna."}


async def test_progress_of_a_flush_reaches_the_client_over_stdio(tmp_path: Path, llm_server: FakeLLMServer) -> None:
    llm_server.script(extract)
    reports: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        reports.append((done, total, message))

    async with stdio_server(tmp_path, llm_env(llm_server)) as client:
        await call(client, "add_memory", said(SPRING, "spring"))
        flushed = await client.call_tool(
            "flush_memory", {"user_id": "maya", "session_id": "spring"}, progress_callback=progress
        )

    assert not flushed.is_error and flushed.structured_content is not None
    assert flushed.structured_content["facts"] == 3
    assert reports and reports[-1][0] == reports[-1][1]  # the last report says it is done


# -- over HTTP, with tenant tokens --------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    grants = {"alice": ("alice", ["read", "write"]), "bob": ("bob", ["read", "write"])}
    issued = {name: new_token() for name in grants}
    path = tmp_path_factory.mktemp("auth") / "tokens.jsonl"
    path.write_text("\n".join(token_line(issued[n], t, s, n) for n, (t, s) in grants.items()) + "\n")
    return {**issued, "file": str(path)}


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory, tokens: dict[str, str]) -> Any:
    env = {"LIGHTMEM_AUTH_TOKENS_FILE": tokens["file"], "LIGHTMEM_COMPRESSION_ENABLED": "false"}
    server = HostedServer(tmp_path_factory.mktemp("http"), "http", env).start()
    yield server
    assert server.terminate() == 0, server.log()


def text_of(contents: list[Any]) -> str:
    assert len(contents) == 1 and isinstance(contents[0], TextResourceContents)
    return contents[0].text


async def test_over_http_each_tenant_reads_lists_and_completes_only_its_own(
    http_server: HostedServer, tokens: dict[str, str]
) -> None:
    async with http_server.session(tokens["alice"]) as alice:
        note = {"role": "user", "content": "My sister Maya lives in Lisbon.", "timestamp": "2026-11-24T09:00:00Z"}
        await call(alice, "add_memory", {"messages": [note], "session_id": "family"})
        await call(alice, "summarize", {"window": "week"})
        found = await alice.call_tool("search_memory", {"query": "where does Maya live"})
        link = next(c for c in found.content if isinstance(c, ResourceLink))
        listed = (await alice.list_resources()).resources
        templates = (await alice.list_resource_templates()).resource_templates
        record = json.loads(text_of((await alice.read_resource(str(link.uri))).contents))
        weeks = text_of((await alice.read_resource("lightmem://users/alice/summaries/week")).contents)
        prompt = await alice.get_prompt("recall_topic", {"topic": "Maya"})
        template = {"type": "ref/resource", "uri": templates[0].uri_template}
        sessions = await alice.complete(template, {"name": "session_id", "value": ""})  # type: ignore[arg-type]
        users = await alice.complete(template, {"name": "user_id", "value": ""})  # type: ignore[arg-type]

    async with http_server.session(tokens["bob"]) as bob:
        bobs_list = (await bob.list_resources()).resources
        with pytest.raises(MCPError, match="not the tenant of this token"):
            await bob.read_resource(f"lightmem://users/alice/records/{record['id']}")
        with pytest.raises(MCPError, match="no record"):  # alice's record id under bob's own name
            await bob.read_resource(f"lightmem://users/bob/records/{record['id']}")
        with pytest.raises(MCPError, match="not the tenant of this token"):
            await bob.read_resource("lightmem://users/alice/summaries/week")
        bobs_weeks = text_of((await bob.read_resource("lightmem://users/default/summaries/week")).contents)
        bobs_prompt = await bob.get_prompt("recall_topic", {"topic": "Maya"})
        with pytest.raises(MCPError, match="not the tenant of this token"):
            await bob.get_prompt("recall_topic", {"topic": "Maya", "user_id": "alice"})
        template = {
            "type": "ref/resource",
            "uri": "lightmem://users/{user_id}/summaries/{window}{?agent_id,session_id,project}",
        }
        bobs_sessions = await bob.complete(template, {"name": "session_id", "value": ""})  # type: ignore[arg-type]
        spying = await bob.complete(template, {"name": "session_id", "value": ""}, {"user_id": "alice"})  # type: ignore[arg-type]
        refused = await error_of(bob, "forget", {"confirm": True, "user_id": "alice"})

    assert link.uri == f"lightmem://users/alice/records/{record['id']}"
    assert record["text"] == note["content"] and record["user_id"] == "alice"
    assert [r.name for r in listed] == ["summary-week-2026-W48", "stats"]
    assert "Lisbon" in weeks
    assert "Lisbon" in prompt.messages[0].content.text  # type: ignore[union-attr]
    assert sessions.completion.values == ["family"] and users.completion.values == ["alice"]
    # Bob sees nothing of alice's: his list, his summaries, his recall, his completions.
    assert [r.name for r in bobs_list] == ["stats"] and "bob" in str(bobs_list[0].uri)
    assert "No week summaries yet" in bobs_weeks and "Lisbon" not in bobs_weeks
    assert "holds nothing" in bobs_prompt.messages[0].content.text  # type: ignore[union-attr]
    assert bobs_sessions.completion.values == [] and spying.completion.values == []
    assert "not the tenant of this token" in refused


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_forget_asks_the_person_over_a_real_transport(tmp_path: Path, transport: str) -> None:
    """Over stdio and over HTTP with a tenant token, in the newest protocol version the client
    and server share: a declined question deletes nothing, an accepted one deletes the scope."""
    env = {"LIGHTMEM_COMPRESSION_ENABLED": "false"}
    notes = said(SPRING, "spring")
    outcomes = []
    for answer in (Person("decline"), Person("accept")):
        async with elicitation_session(transport, tmp_path, env, answer) as client:
            if answer.action == "decline":
                await call(client, "add_memory", notes)
            result = await client.call_tool("forget", {"user_id": "maya", "session_id": "spring", "confirm": True})
            left = await call(client, "list_memories", {"user_id": "maya"})
            outcomes.append((answer.asked, result.is_error, len(left["records"]), client.protocol_version))

    question = (
        "Permanently delete every memory of user 'maya', session 'spring': 3 records (3 stored messages)? "
        "This cannot be undone."
    )
    (declined_asked, declined_error, kept, version), (accepted_asked, accepted_error, gone, _) = outcomes
    assert version == "2026-07-28"
    assert declined_asked == [question] and declined_error and kept == 3
    assert accepted_asked == [question] and not accepted_error and gone == 0


@asynccontextmanager
async def elicitation_session(
    transport: str, data_dir: Path, env: dict[str, str], person: Person
) -> AsyncIterator[Any]:
    """A `Client` (which negotiates the newest version) that answers elicitations as `person` does."""
    if transport == "stdio":
        base = {"LIGHTMEM_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "LIGHTMEM_LOG_LEVEL": "WARNING"}
        # Started in its home folder, which is no project: the scope is the user's alone.
        home = {"HOME": str(data_dir), "PATH": os.environ.get("PATH", "")}
        parameters = StdioServerParameters(command=COMMAND, env={**base, **home, **env}, cwd=data_dir)
        async with Client(parameters, read_timeout_seconds=120, elicitation_callback=person) as client:
            yield client
        return
    token = new_token()
    tokens = data_dir / "tokens.jsonl"
    tokens.write_text(token_line(token, "maya", ["read", "write"], "maya") + "\n")
    server = HostedServer(data_dir / "http", "http", {**env, "LIGHTMEM_AUTH_TOKENS_FILE": str(tokens)}).start()
    try:
        async with (
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=120)
            ) as http,
            Client(streamable_http_client(server.mcp_url, http_client=http), elicitation_callback=person) as client,
        ):
            yield client
    finally:
        assert server.terminate() == 0, server.log()


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_metadata_filters_and_expiry_over_a_real_transport(tmp_path: Path, transport: str) -> None:
    env = {"LIGHTMEM_COMPRESSION_ENABLED": "false", "LIGHTMEM_SLEEP_PURGE_INTERVAL_MINUTES": "0.01"}
    scope = {"user_id": "maya", "session_id": "work"}
    async with session_over(transport, tmp_path, env) as client:
        slack = {"source": "slack", "priority": 2}
        await call(client, "add_memory", {**said(SPRING[:2], "work"), "metadata": slack})
        await call(client, "add_memory", {**said(SPRING[2:], "work"), "metadata": {"source": "email"}})
        await call(client, "add_memory", {**said(SUMMER[:1], "work"), "ttl": 1})
        refused = await error_of(client, "add_memory", {**said(SUMMER[1:], "work"), "metadata": {"a.b": 1}})
        from_slack = await call(
            client, "search_memory", {"query": "Berlin cat", **scope, "filters": {"metadata": slack}}
        )
        from_email = await call(client, "list_memories", {**scope, "metadata": {"source": "email"}})
        with anyio.fail_after(60):  # the ttl runs out, then the purge deletes it
            while (await call(client, "stats", scope))["expired_purged"] == 0:
                await anyio.sleep(0.2)
        listed = await call(client, "list_memories", scope)

    assert refused.startswith("metadata.a.b:") or "metadata" in refused
    assert {hit["text"] for hit in from_slack["hits"]} == {text for _, _, text, _ in SPRING[:2]}
    assert all(hit["metadata"] == slack for hit in from_slack["hits"])
    assert [r["text"] for r in from_email["records"]] == [SPRING[2][2]]
    assert sorted(r["text"] for r in listed["records"]) == sorted(text for _, _, text, _ in SPRING)


async def test_over_stdio_resources_prompts_and_completions_answer(tmp_path: Path) -> None:
    env = {"LIGHTMEM_COMPRESSION_ENABLED": "false"}
    async with session_over("stdio", tmp_path, env) as client:
        await call(client, "add_memory", said(SPRING, "spring"))
        await call(client, "summarize", {"user_id": "maya", "window": "day"})
        found = await client.call_tool("search_memory", {"query": "Berlin", "user_id": "maya"})
        link = next(c for c in found.content if isinstance(c, ResourceLink))
        record = json.loads(text_of((await client.read_resource(str(link.uri))).contents))
        days = text_of((await client.read_resource("lightmem://users/maya/summaries/day")).contents)
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        listed = [r.name for r in (await client.list_resources()).resources]
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        recalled = await client.get_prompt("recall_topic", {"topic": "where Maya lives", "user_id": "maya"})
        template = {"type": "ref/resource", "uri": templates[1]}
        sessions = await client.complete(template, {"name": "session_id", "value": "spr"}, {"user_id": "maya"})

    assert record["text"] == "I live in Berlin." and record["source_ids"] == ["s1"]
    assert "## Day 2024-03-01" in days and "I live in Berlin." in days
    assert templates == [
        "lightmem://users/{user_id}/records/{record_id}",
        "lightmem://users/{user_id}/summaries/{window}{?agent_id,session_id,project}",
        "lightmem://users/{user_id}/stats{?agent_id,session_id,project}",
    ]
    assert listed == ["stats"]  # the default user has no summaries; maya's are read by URI
    assert set(prompts) == {"recall_topic", "save_conversation", "review_week"}
    assert "I live in Berlin." in recalled.messages[0].content.text  # type: ignore[union-attr]
    assert sessions.completion.values == ["spring"]
