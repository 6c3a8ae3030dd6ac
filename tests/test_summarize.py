"""Summaries (LLM and extractive) and the sleep-time schedule, over the real store and embedder."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from lightmem_mcp.api import Message, SearchFilters
from lightmem_mcp.config import PipelineSettings, Settings, SummarySettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import RecordFilter, Scope
from tests.conftest import open_memory
from tests.openai_server import ChatRequest, FakeLLMServer, facts_per_message

MAYA = Scope("maya")
MONDAY = [
    ("m1", "2024-05-06T09:00:00Z", "I started a new job at the Munich observatory today."),
    ("m2", "2024-05-06T09:10:00Z", "My manager is called Dr. Weber and she studies comets."),
]
TUESDAY = [
    ("t1", "2024-05-07T18:00:00Z", "I booked a trip to Lisbon for June with my sister."),
    ("t2", "2024-05-07T18:05:00Z", "We will stay in Alfama for five nights."),
]
PERIOD_LINE = re.compile(r"^\[(\d+)\] \(([\d-]+) [\d:]+\) (.*)$")

extract = facts_per_message("Maya said")


def period(request: ChatRequest) -> list[str]:
    """The memories of the period a summary request sent."""
    return [m.group(3) for m in map(PERIOD_LINE.match, request.user.splitlines()) if m]


def summarize_answer(request: ChatRequest) -> dict[str, Any]:
    return {"summary": "Summary of: " + " | ".join(period(request))}


def messages(rows: list[tuple[str, str, str]]) -> list[Message]:
    return [Message(role="user", content=text, id=mid, timestamp=ts) for mid, ts, text in rows]


@pytest.fixture
def memory(settings: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    configured = settings.model_copy(
        update={"llm": llm_server.settings(max_retries=0), "pipeline": PipelineSettings(buffer_tokens=10_000)}
    )
    service = open_memory(configured, embedder)
    llm_server.script(extract, extract)
    for session, rows in (("monday", MONDAY), ("tuesday", TUESDAY)):
        scope = Scope("maya", session_id=session)
        service.add(messages(rows), scope)
        service.flush(scope)
    yield service
    service.close()


def fact_ids(memory: Memory, *message_ids: str) -> list[str]:
    found = memory.store.scroll(RecordFilter("maya", kinds=("fact",)), 100)
    by_source = {p.payload["source_ids"][0]: p.id for p in found}  # type: ignore[index]
    return sorted(by_source[m] for m in message_ids)


def test_one_call_per_session_and_summaries_cover_the_right_records(memory: Memory, llm_server: FakeLLMServer) -> None:
    llm_server.script(summarize_answer, summarize_answer)
    result = memory.summarize(MAYA, window="session")

    assert result.llm_calls == 2 and result.error is None
    monday, tuesday = result.summaries
    assert (monday.window_key, tuesday.window_key) == ("monday", "tuesday")
    assert sorted(monday.covered_ids) == fact_ids(memory, "m1", "m2")
    assert sorted(tuesday.covered_ids) == fact_ids(memory, "t1", "t2")
    assert (monday.source_ids, tuesday.source_ids) == (["m1", "m2"], ["t1", "t2"])
    assert "Dr. Weber" in monday.text and "Lisbon" not in monday.text
    assert monday.method == "llm"
    # The second window's prompt carries related earlier facts as context (cross-event seeds).
    assert "EARLIER memories" not in llm_server.requests[-2].user
    assert "EARLIER memories" in llm_server.requests[-1].user

    # Summaries are records: searchable, in their session, citing their sources.
    hits = memory.search("trip to Portugal", MAYA, 5, SearchFilters(kinds=["summary"])).hits
    assert hits[0].id == tuesday.id and hits[0].source_ids == ["t1", "t2"]
    [record] = memory.get([tuesday.id], Scope("maya", session_id="tuesday")).records
    assert record.kind == "summary"


def test_summarizing_a_window_again_replaces_it_and_keeps_the_old_text(
    memory: Memory, llm_server: FakeLLMServer
) -> None:
    llm_server.script({"summary": "First take."}, {"summary": "Second take."})
    first = memory.summarize(MAYA, since="2024-05-06", until="2024-05-06T23:59:59Z").summaries[0]
    second = memory.summarize(MAYA, since="2024-05-06", until="2024-05-06T23:59:59Z").summaries[0]
    assert first.id == second.id
    stored = memory.store.scroll(RecordFilter("maya", kinds=("summary",)), 10)
    assert [p.payload["text"] for p in stored] == ["Second take."]
    assert stored[0].payload["history"][0]["old_text"] == "First take."  # type: ignore[index]


def test_a_topic_summary_reads_only_the_memories_on_that_topic(memory: Memory, llm_server: FakeLLMServer) -> None:
    llm_server.script(summarize_answer)
    [summary] = memory.summarize(MAYA, topic="holiday travel to Lisbon").summaries
    assert summary.topic == "holiday travel to Lisbon"
    assert set(summary.source_ids) <= {"t1", "t2"} and "t1" in summary.source_ids


def test_bad_input_names_the_field(memory: Memory) -> None:
    with pytest.raises(InvalidInput, match="since"):
        memory.summarize(MAYA, since="last tuesday")
    with pytest.raises(InvalidInput, match="nothing to summarize"):
        memory.summarize(MAYA, since="2030-01-01")


def test_without_an_llm_the_summary_is_extractive_central_and_in_time_order(
    settings: Settings, embedder: SentenceTransformerEmbedder
) -> None:
    budgeted = settings.model_copy(update={"summary": SummarySettings(max_tokens=40)})
    service = open_memory(budgeted, embedder)
    try:
        rows = [
            ("a", "2024-05-01T08:00:00Z", "We planned the garden. Tomatoes go along the south wall."),
            ("b", "2024-05-01T08:05:00Z", "The garden needs new soil. Basil grows next to the tomatoes."),
            ("c", "2024-05-01T08:10:00Z", "Unrelated: my bicycle has a flat tyre."),
            ("d", "2024-05-01T08:15:00Z", "For the garden we also bought tomato cages."),
        ]
        service.add(messages(rows), MAYA)
        [summary] = service.summarize(MAYA).summaries
        assert summary.method == "extractive"
        assert service.compressor.counter.count(summary.text) <= 40
        assert "bicycle" not in summary.text and "garden" in summary.text
        sentences = [s for _, _, text in rows for s in re.split(r"(?<=[.!?])\s+", text)]
        picked = [s for s in sentences if s in summary.text]
        assert len(picked) >= 2 and " ".join(picked) == summary.text  # whole sentences, in time order
    finally:
        service.close()


def test_a_dry_run_writes_and_calls_nothing_and_estimates_the_real_run(
    memory: Memory, llm_server: FakeLLMServer
) -> None:
    before = len(llm_server.requests)
    planned = memory.summarize(MAYA, window="session", dry_run=True)
    assert planned.dry_run and planned.windows == 2 and planned.summaries == []
    assert len(llm_server.requests) == before
    assert memory.store.count(RecordFilter("maya", kinds=("summary",))) == 0

    llm_server.script(summarize_answer, summarize_answer)
    done = memory.summarize(MAYA, window="session")
    sent = llm_server.requests[before:]
    assert planned.estimate is not None and planned.estimate.llm_calls == done.llm_calls == 2
    # The prompts it counted are the ones the run sent (~4 characters a token at the scripted server).
    sent_chars = sum(len(r.system) + len(r.user) for r in sent)
    assert planned.estimate.prompt_tokens == pytest.approx(sent_chars / 4, rel=0.25)
