"""Sleep-time consolidation and history: newer facts update or supersede older ones, losing nothing.

Facts come from the real pipeline (extraction through the scripted LLM server), the store is Qdrant
Edge and the embedder the real MiniLM; only the LLM's answers are scripted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client

from lightmem_mcp.api import Message, SearchFilters
from lightmem_mcp.config import ConsolidationSettings, PipelineSettings, Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.lease import scope_key
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import RecordFilter, Scope, record_id
from lightmem_mcp.server import MemoryProvider, build_server
from tests.conftest import open_memory
from tests.openai_server import ChatRequest, FakeLLMServer, Reply, prompt_messages

MAYA = Scope("maya")
# (message id, time, what Maya said, the fact extraction writes)
SPRING = [
    ("s1", "2024-03-01T10:00:00Z", "I live in Berlin.", "Maya lives in Berlin, Germany."),
    ("s2", "2024-03-01T10:05:00Z", "I have a cat called Luna.", "Maya has a cat named Luna."),
    ("s3", "2024-03-01T10:10:00Z", "I play chess on Sundays.", "Maya plays chess every Sunday."),
]
SUMMER = [
    ("u1", "2024-07-01T10:00:00Z", "I moved to Munich.", "Maya lives in Munich, Germany."),
    ("u2", "2024-07-01T10:05:00Z", "Luna is a grey Persian.", "Maya has a cat named Luna, a grey Persian."),
]
MERGED = "Maya has a grey Persian cat named Luna."
FACT_OF = {said: fact for _, _, said, fact in SPRING + SUMMER}
TARGET_LINE = re.compile(r"^TARGET (\d+) \(([\d-]+)\): (.*)$")


def extract(request: ChatRequest) -> dict[str, Any]:
    """Extraction: the scripted fact of each numbered message."""
    return {"facts": [{"fact": FACT_OF[text], "sources": [n]} for n, text in prompt_messages(request)]}


def targets(request: ChatRequest) -> list[str]:
    return [m.group(3) for m in map(TARGET_LINE.match, request.user.splitlines()) if m]


def judge(request: ChatRequest) -> dict[str, Any]:
    """Consolidation: Munich contradicts Berlin; the Persian detail updates the cat; the rest is ignored."""
    decisions = []
    for number, text in enumerate(targets(request), start=1):
        if "Berlin" in text:
            decisions.append({"target": number, "action": "delete", "reason": "she moved", "sources": [1]})
        elif "cat named Luna" in text:
            decisions.append(
                {"target": number, "action": "update", "text": MERGED, "reason": "breed added", "sources": [1]}
            )
        else:
            decisions.append({"target": number, "action": "ignore", "reason": "unrelated"})
    return {"decisions": decisions}


def said(rows: list[tuple[str, str, str, str]], session: str) -> list[Message]:
    return [Message(role="user", content=text, id=mid, timestamp=ts) for mid, ts, text, _ in rows]


@pytest.fixture
def memory(settings: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    configured = settings.model_copy(
        update={
            "llm": llm_server.settings(max_retries=0),
            "pipeline": PipelineSettings(buffer_tokens=10_000),
            "consolidation": ConsolidationSettings(score_threshold=0.7),
        }
    )
    service = open_memory(configured, embedder)
    llm_server.script(extract, extract)
    service.add(said(SPRING, "spring"), Scope("maya", session_id="spring"))
    service.flush(Scope("maya", session_id="spring"))
    service.add(said(SUMMER, "summer"), Scope("maya", session_id="summer"))
    service.flush(Scope("maya", session_id="summer"))
    yield service
    service.close()


def facts(memory: Memory) -> dict[str, dict[str, Any]]:
    """Every fact of Maya, by text (they are unique here)."""
    return {str(p.payload["text"]): dict(p.payload) | {"id": p.id} for p in fact_points(memory)}


def fact_points(memory: Memory) -> list[Any]:
    return memory.store.scroll(RecordFilter("maya", kinds=("fact",)), 100, with_vectors=True)


def test_contradiction_supersedes_and_update_writes_a_reembedded_version(
    memory: Memory, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder
) -> None:
    llm_server.script(judge)
    result = memory.consolidate(MAYA)

    assert (result.updated, result.superseded, result.llm_calls, result.error) == (1, 1, 1, None)
    # Only older facts are targets, and only newer facts are offered against them.
    [request] = llm_server.requests[-1:]
    assert set(targets(request)) <= {fact for *_, fact in SPRING}
    assert "Maya lives in Berlin, Germany." in targets(request)

    by_text = facts(memory)
    berlin, cat = by_text["Maya lives in Berlin, Germany."], by_text["Maya has a cat named Luna."]
    munich, merged = by_text["Maya lives in Munich, Germany."], by_text[MERGED]
    # Nothing is deleted: the contradicted fact stays, superseded by the newer one.
    assert (berlin["status"], berlin["superseded_by"]) == ("superseded", munich["id"])
    assert (cat["status"], cat["superseded_by"]) == ("superseded", merged["id"])
    assert merged["status"] == "active" and merged["supersedes"] == [cat["id"]]
    assert merged["source_ids"] == ["s2", "u2"]
    assert munich["status"] == by_text["Maya plays chess every Sunday."]["status"] == "active"

    vectors = {p.id: p.dense for p in fact_points(memory)}
    fresh = embedder.embed_documents([MERGED])[0]
    assert vectors[merged["id"]] == pytest.approx(fresh, abs=1e-5)
    assert vectors[merged["id"]] != pytest.approx(vectors[cat["id"]], abs=1e-3)

    # Search skips superseded facts unless asked.
    hits = memory.search("Which city does Maya live in?", MAYA, 10, SearchFilters(kinds=["fact"])).hits
    assert berlin["id"] not in [h.id for h in hits] and munich["id"] in [h.id for h in hits]
    everything = SearchFilters(kinds=["fact"], include_superseded=True)
    assert berlin["id"] in [h.id for h in memory.search("Which city does Maya live in?", MAYA, 10, everything).hits]
    cat_hits = memory.search("Persian cat breed", MAYA, 2, SearchFilters(kinds=["fact"])).hits
    assert merged["id"] in [h.id for h in cat_hits]  # found by its new wording
    listed = [r.id for r in memory.list(MAYA, ["fact"], 50).records]
    assert berlin["id"] not in listed and merged["id"] in listed
    assert berlin["id"] in [r.id for r in memory.list(MAYA, ["fact"], 50, include_superseded=True).records]


def test_history_shows_every_version_and_why(memory: Memory, llm_server: FakeLLMServer) -> None:
    llm_server.script(judge)
    memory.consolidate(MAYA)
    by_text = facts(memory)
    cat, merged = by_text["Maya has a cat named Luna."], by_text[MERGED]
    ledger = memory.store.scroll(RecordFilter("maya", kinds=("llm_call",)), 10)
    [update_call] = [p for p in ledger if p.payload["purpose"] == "update"]

    for asked in (cat["id"], merged["id"]):
        history = memory.history(asked, MAYA)
        assert [v.id for v in history.versions] == [cat["id"], merged["id"]]
        assert [v.status for v in history.versions] == ["superseded", "active"]
        assert history.versions[0].superseded_by == merged["id"]
        [change] = history.changes
        assert (change.action, change.target_text, change.new_text, change.reason) == (
            "update",
            "Maya has a cat named Luna.",
            MERGED,
            "breed added",
        )
        assert change.by_ids == [by_text["Maya has a cat named Luna, a grey Persian."]["id"]]
        assert update_call.id == record_id(MAYA, "llm_call", change.llm_call_id)  # the call is on the ledger

    berlin = by_text["Maya lives in Berlin, Germany."]
    history = memory.history(berlin["id"], MAYA)
    assert [v.text for v in history.versions] == ["Maya lives in Berlin, Germany.", "Maya lives in Munich, Germany."]
    assert [c.action for c in history.changes] == ["delete"]
    # Another user cannot read Maya's history.
    with pytest.raises(Exception, match="no memory"):
        memory.history(berlin["id"], Scope("ravi"))


def test_dry_run_reports_and_changes_nothing(memory: Memory, llm_server: FakeLLMServer) -> None:
    before = {p.id: p.payload for p in fact_points(memory)}
    llm_server.script(judge)
    result = memory.consolidate(MAYA, dry_run=True)

    assert result.dry_run and (result.updated, result.superseded) == (1, 1)
    assert {(c.action, c.target_text) for c in result.changes} == {
        ("delete", "Maya lives in Berlin, Germany."),
        ("update", "Maya has a cat named Luna."),
    }
    assert {p.id: p.payload for p in fact_points(memory)} == before

    llm_server.script(judge)  # not consumed by the dry run: the real run still has the work to do
    done = memory.consolidate(MAYA)
    assert done.updated == 1 and done.estimate is None
    # What the dry run spent deciding is what the real run spends again.
    assert result.estimate is not None and result.estimate.llm_calls == done.llm_calls == 1
    [update] = [u for u in memory.stats(MAYA).llm if u.purpose == "update"]
    assert (update.calls, update.prompt_tokens) == (2, 2 * result.estimate.prompt_tokens)


def test_a_second_run_has_nothing_to_do_and_a_time_range_narrows_the_run(
    memory: Memory, llm_server: FakeLLMServer
) -> None:
    assert memory.consolidate(MAYA, until="2024-06-01").llm_calls == 0  # only spring facts: nothing older
    llm_server.script(judge)
    assert memory.consolidate(MAYA, since="2024-06-01").llm_calls == 1
    again = memory.consolidate(MAYA)  # an unscripted call would fail the test
    assert (again.llm_calls, again.checked_facts) == (0, 0)


def test_a_crash_mid_run_leaves_a_consistent_store_and_the_rerun_completes_it(
    memory: Memory, llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = memory.store.set_payload

    def crash_on_supersede(where: RecordFilter, values: dict[str, object]) -> None:
        if values.get("status") == "superseded":
            raise RuntimeError("power cut")
        real(where, values)

    monkeypatch.setattr(memory.store, "set_payload", crash_on_supersede)
    llm_server.script(judge)
    with pytest.raises(RuntimeError, match="power cut"):
        memory.consolidate(MAYA)
    monkeypatch.undo()
    # Whatever was written is whole: every fact is active, the merged version at most once.
    assert all(p.payload["status"] == "active" for p in fact_points(memory))

    llm_server.script(judge)
    result = memory.consolidate(MAYA)
    assert (result.updated, result.superseded) == (1, 1)
    texts = [str(p.payload["text"]) for p in fact_points(memory)]
    assert texts.count(MERGED) == 1
    assert facts(memory)["Maya has a cat named Luna."]["superseded_by"] == facts(memory)[MERGED]["id"]


def test_an_llm_failure_changes_nothing_and_is_reported(memory: Memory, llm_server: FakeLLMServer) -> None:
    before = {p.id: p.payload for p in fact_points(memory)}
    llm_server.script(Reply.error(500))
    result = memory.consolidate(MAYA)
    assert result.error and "500" in result.error
    assert {p.id: p.payload for p in fact_points(memory)} == before
    llm_server.script(judge)  # the facts are still due
    assert memory.consolidate(MAYA).superseded == 1


def test_all_users_runs_each_user_within_their_own_memory(memory: Memory, llm_server: FakeLLMServer) -> None:
    llm_server.script(extract, extract)
    ravi = Scope("ravi")
    memory.add([Message(role="user", content="I live in Berlin.", id="r1", timestamp="2024-01-01")], ravi)
    memory.flush(ravi)
    memory.add([Message(role="user", content="I moved to Munich.", id="r2", timestamp="2024-02-01")], ravi)
    memory.flush(ravi)

    llm_server.script(judge, judge)
    result = memory.consolidate(None)
    assert (result.users, result.superseded) == (2, 2)
    # Each user's targets were judged against that user's newer facts only.
    for request in llm_server.requests[-2:]:
        assert len(targets(request)) == len(set(targets(request)))
    ravi_facts = {
        str(p.payload["text"]): p.payload for p in memory.store.scroll(RecordFilter("ravi", kinds=("fact",)), 100)
    }
    assert ravi_facts["Maya lives in Berlin, Germany."]["status"] == "superseded"
    maya_munich = facts(memory)["Maya lives in Munich, Germany."]["id"]
    assert ravi_facts["Maya lives in Berlin, Germany."]["superseded_by"] != maya_munich


def test_consolidation_without_an_llm_says_how_to_configure_one(
    settings: Settings, embedder: SentenceTransformerEmbedder
) -> None:
    service = open_memory(settings, embedder)
    try:
        with pytest.raises(Exception, match="LIGHTMEM_LLM_PROVIDER"):
            service.consolidate(MAYA)
    finally:
        service.close()


@pytest.mark.anyio
async def test_the_mcp_tools_consolidate_with_progress_and_show_history(
    memory: Memory, llm_server: FakeLLMServer
) -> None:
    settings = memory._settings
    client = Client(build_server(settings, MemoryProvider(settings, lambda _: memory)))
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    llm_server.script(judge)
    async with client:
        dry = await client.call_tool("consolidate", {"user_id": "maya", "dry_run": True})
        assert not dry.is_error and dry.structured_content is not None
        assert dry.structured_content["superseded"] == 1
        llm_server.script(judge)
        done = await client.call_tool("consolidate", {"user_id": "maya"}, progress_callback=on_progress)
        assert not done.is_error and done.structured_content is not None
        assert (done.structured_content["updated"], done.structured_content["superseded"]) == (1, 1)
        done_values = [value for value, _, _ in progress]
        assert done_values and done_values == sorted(set(done_values))  # only ever grows
        assert progress[-1][0] == progress[-1][1]  # and ends at 100 %
        target = done.structured_content["changes"][0]["target_id"]
        history = await client.call_tool("memory_history", {"id": target, "user_id": "maya"})
        assert history.structured_content is not None
        assert [v["status"] for v in history.structured_content["versions"]] == ["superseded", "active"]
        other = await client.call_tool("memory_history", {"id": target, "user_id": "ravi"})
        assert other.is_error and "no memory" in str(other.content[0].text)  # type: ignore[union-attr]
        bad = await client.call_tool("consolidate", {"user_id": "maya", "since": "yesterday-ish"})
        assert bad.is_error and "since" in str(bad.content[0].text)  # type: ignore[union-attr]


def test_a_user_consolidated_elsewhere_is_skipped_not_run_twice(memory: Memory) -> None:
    with memory.leases.hold(f"consolidate:{scope_key(MAYA)}", 30) as held:
        assert held  # as another replica would hold it
        result = memory.consolidate(MAYA)  # an LLM call here would fail the test: none is scripted
    assert (result.busy_users, result.llm_calls, result.checked_facts) == (1, 0, 0)
