"""The LightMem pipeline end to end in the service: buffer, segmentation, one extraction call per batch.

The LLM is the only fake: a local OpenAI-compatible server, scripted per test, driven by the
real `openai` SDK. Everything else is real (Qdrant Edge, MiniLM, the segmenter)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lightmem_mcp.api import Message, SearchFilters
from lightmem_mcp.config import PipelineSettings, Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import RecordFilter, Scope
from lightmem_mcp.store.edge import EdgeStore
from tests.conftest import open_memory
from tests.openai_server import ChatRequest, FakeLLMServer, Reply, facts_per_message, prompt_messages

USER = Scope("maya")
TURNS = [
    ("user", "I adopted a grey cat called Luna from the shelter last Saturday."),
    ("assistant", "How lovely! Cats from shelters are often very affectionate."),
    ("user", "Luna already sleeps on my keyboard while I work from home."),
    ("assistant", "That is a classic cat move."),
    ("user", "Separately, I am planning a two-week trip to Japan next April."),
    ("assistant", "April is cherry blossom season, a great time to go."),
    ("user", "I want to see Kyoto, Osaka and maybe Hiroshima by rail."),
    ("assistant", "A Japan Rail Pass could save you money on that route."),
    ("user", "My budget for the whole trip is about 3000 euros."),
    ("assistant", "That is workable if you book hostels early."),
]


one_fact_per_message = facts_per_message("Maya said")


def messages(turns: list[tuple[str, str]] = TURNS, prefix: str = "m") -> list[Message]:
    return [
        Message(role=role, content=text, id=f"{prefix}{i}", timestamp=f"2024-03-{10 + i // 2:02d}T09:{i:02d}:00Z")
        for i, (role, text) in enumerate(turns)
    ]


def user_ids(turns: list[tuple[str, str]] = TURNS, prefix: str = "m") -> set[str]:
    return {f"{prefix}{i}" for i, (role, _) in enumerate(turns) if role == "user"}


def cited(request: ChatRequest) -> list[str]:
    """The message texts a request sent, in prompt order."""
    return [text for _, text in prompt_messages(request)]


@pytest.fixture
def pipeline_settings(settings: Settings, llm_server: FakeLLMServer) -> Settings:
    return settings.model_copy(update={"llm": llm_server.settings(), "pipeline": PipelineSettings(buffer_tokens=40)})


@pytest.fixture
def memory(pipeline_settings: Settings, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    service = open_memory(pipeline_settings, embedder)
    yield service
    service.close()


def facts(memory: Memory, scope: Scope = USER) -> list[dict[str, Any]]:
    where = RecordFilter(scope.user_id, kinds=("fact",))
    return [dict(p.payload) for p in memory.store.scroll(where, 1000)]


def test_a_full_buffer_is_extracted_in_few_calls_each_covering_many_turns(
    memory: Memory, llm_server: FakeLLMServer
) -> None:
    llm_server.script(*[one_fact_per_message] * 10)

    memory.add(messages(), USER)
    memory.buffer.drain()
    result = memory.flush(USER)

    calls = len(llm_server.requests)
    sent = [text for request in llm_server.requests for text in cited(request)]
    user_texts = [text for role, text in TURNS if role == "user"]
    assert sorted(sent) == sorted(user_texts)  # every user turn sent exactly once, no assistant turn
    assert calls < len(user_texts)  # batched: fewer calls than messages
    assert result.pending_turns == 0
    assert sorted(s for f in facts(memory) for s in f["source_ids"]) == sorted(user_ids())


def test_facts_are_searchable_and_cite_their_messages(memory: Memory, llm_server: FakeLLMServer) -> None:
    llm_server.script(*[one_fact_per_message] * 10)
    memory.add(messages(), USER)
    memory.flush(USER)

    hits = memory.search("what is the trip budget", USER, limit=3, filters=SearchFilters(kinds=["fact"])).hits

    assert hits[0].kind == "fact"
    assert hits[0].text == "Maya said: My budget for the whole trip is about 3000 euros."
    assert hits[0].source_ids == ["m8"]
    both = memory.search("trip budget", USER, limit=10).hits
    assert {"fact", "turn"} <= {hit.kind for hit in both}


def test_the_prompt_carries_each_message_time_and_the_json_contract(memory: Memory, llm_server: FakeLLMServer) -> None:
    llm_server.script(one_fact_per_message)
    memory.add(
        [Message(role="user", content="I start my new job tomorrow.", id="j1", timestamp="2023/05/20 (Sat) 00:44")],
        USER,
    )
    memory.flush(USER)

    (request,) = llm_server.requests
    assert "[1] 2023-05-20 (Sat) 00:44 | user: I start my new job tomorrow." in request.user
    assert "json" in request.system.lower()
    assert request.body["response_format"] == {"type": "json_object"}


def test_an_llm_outage_keeps_the_turns_pending_and_a_later_flush_extracts_them_once(
    memory: Memory, llm_server: FakeLLMServer
) -> None:
    # Three attempts per call (max_retries=2), all failing: the background extraction, then the flush.
    llm_server.script(500, 503, Reply.error(429, retry_after="0"), 500, 500, 502)

    memory.add(messages(), USER)
    memory.buffer.drain()
    failed = memory.flush(USER)

    assert failed.error is not None and "pending" in failed.error
    assert failed.pending_turns == len(user_ids())
    assert facts(memory) == []
    assert memory.count(USER) == len(TURNS)  # every turn kept and searchable

    llm_server.script(*[one_fact_per_message] * 10)
    done = memory.flush(USER)
    assert done.error is None
    assert done.pending_turns == 0
    assert sorted(s for f in facts(memory) for s in f["source_ids"]) == sorted(user_ids())


def test_blank_and_malformed_answers_are_retried(memory: Memory, llm_server: FakeLLMServer) -> None:
    llm_server.script(Reply.blank(), Reply.malformed(), one_fact_per_message)
    memory.add([Message(role="user", content="My passport expires in June 2025.", id="p1")], USER)

    result = memory.flush(USER)

    assert result.llm_calls == 1
    assert [f["source_ids"] for f in facts(memory)] == [["p1"]]


def test_a_crash_between_writing_facts_and_marking_turns_never_duplicates(
    pipeline_settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    # A buffer too large to fill: extraction runs only when flushed, here, in this thread.
    manual = pipeline_settings.model_copy(update={"pipeline": PipelineSettings(buffer_tokens=100_000)})
    first = open_memory(manual, embedder)
    llm_server.script(one_fact_per_message)
    first.add(messages(), USER)

    real_set_payload = EdgeStore.set_payload

    def crash_when_marking(self: EdgeStore, where: RecordFilter, values: dict[str, object]) -> None:
        if values.get("stage") == "extracted":
            raise RuntimeError("power cut")
        real_set_payload(self, where, values)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EdgeStore, "set_payload", crash_when_marking)
        with pytest.raises(RuntimeError, match="power cut"):
            first.flush(USER)
    written_before_crash = len(facts(first))
    first.close()

    # After a restart the same turns are still pending; the LLM words its facts differently now.
    second = open_memory(manual, embedder)
    try:
        second.add(messages(prefix="late"), USER)
        llm_server.script(lambda r: reworded(one_fact_per_message(r)))
        second.flush(USER)
        texts = [f["text"] for f in facts(second)]
        sources = sorted(s for f in facts(second) for s in f["source_ids"])
        assert written_before_crash == len(user_ids())
        assert sources == sorted(user_ids() | user_ids(prefix="late"))  # each turn once, none twice
        assert all(text.startswith("According to Maya") for text in texts)
    finally:
        second.close()


def reworded(answer: dict[str, Any]) -> dict[str, Any]:
    return {"facts": [{**f, "fact": f["fact"].replace("Maya said", "According to Maya")} for f in answer["facts"]]}


def test_concurrent_adds_to_one_scope_extract_every_turn_exactly_once(
    memory: Memory, llm_server: FakeLLMServer
) -> None:
    llm_server.script(*[one_fact_per_message] * 60)
    threads = [threading.Thread(target=memory.add, args=(messages(prefix=f"t{n}-"), USER)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    memory.buffer.drain()
    memory.flush(USER)

    sources = sorted(s for f in facts(memory) for s in f["source_ids"])
    assert sources == sorted(set().union(*(user_ids(prefix=f"t{n}-") for n in range(4))))


def test_without_an_llm_turns_are_the_memories(settings: Settings, embedder: SentenceTransformerEmbedder) -> None:
    memory = open_memory(settings, embedder)
    try:
        memory.add(messages(), USER)
        result = memory.flush(USER)
        hits = memory.search("adopting a cat from the shelter", USER, limit=1).hits
    finally:
        memory.close()

    assert result.llm_calls == 0
    assert result.error is not None and "LIGHTMEM_LLM_PROVIDER" in result.error
    assert hits[0].kind == "turn"
    assert hits[0].source_ids == ["m0"]


def test_flushing_one_scope_leaves_other_scopes_pending(memory: Memory, llm_server: FakeLLMServer) -> None:
    other = Scope("maya", session_id="work")
    llm_server.script(*[one_fact_per_message] * 10)
    memory.add([Message(role="user", content="Remember the quarterly report is due Friday.", id="w1")], other)
    memory.add([Message(role="user", content="I take Luna to the vet on Monday.", id="h1")], USER)

    memory.flush(USER)

    assert [f["source_ids"] for f in facts(memory)] == [["h1"]]
    assert memory.flush(other).pending_turns == 0
    assert sorted(s for f in facts(memory) for s in f["source_ids"]) == ["h1", "w1"]


def test_every_llm_call_is_recorded_with_its_usage_failed_or_not(memory: Memory, llm_server: FakeLLMServer) -> None:
    manual = Scope("maya", session_id="ledger")
    llm_server.script(500, 500, 500, Reply.json({"facts": []}, cached_tokens=7))
    memory.add([Message(role="user", content="Short note.", id="n1")], manual)

    memory.flush(manual)  # fails after three attempts
    memory.flush(manual)  # succeeds

    ledger = [dict(p.payload) for p in memory.store.scroll(RecordFilter("maya", kinds=("llm_call",)), 10)]
    assert sorted((entry["ok"], entry["attempts"]) for entry in ledger) == [(False, 3), (True, 1)]
    succeeded = next(entry for entry in ledger if entry["ok"])
    assert succeeded["purpose"] == "extraction"
    assert succeeded["prompt_tokens"] > 0
    assert succeeded["cached_tokens"] == 7
    assert memory.count(manual) == 1  # ledger entries are not memories


def test_a_restart_resumes_buffers_that_filled_before_it(
    pipeline_settings: Settings, llm_server: FakeLLMServer
) -> None:
    llm_server.script(500, 500, 500)  # the background extraction before the restart fails
    first = Memory.open(pipeline_settings)
    first.add(messages(), USER)
    first.buffer.drain()
    assert facts(first) == []
    first.close()

    llm_server.script(*[one_fact_per_message] * 10)
    second = Memory.open(pipeline_settings)  # no add, no flush: the full buffer alone triggers extraction
    try:
        second.buffer.drain()
        assert facts(second) != []
    finally:
        second.close()
