"""The sleep-time schedule: after enough new facts, consolidation then summaries run in the background."""

from __future__ import annotations

import time
from typing import Any

from lightmem_mcp.config import ConsolidationSettings, PipelineSettings, Settings, SleepSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import PROGRESS_KIND, RecordFilter, SummaryMark
from tests.conftest import open_memory
from tests.openai_server import ChatRequest, FakeLLMServer
from tests.test_summarize import MAYA, MONDAY, TUESDAY, extract, messages, summarize_answer


def scheduled(settings: Settings, llm_server: FakeLLMServer, sleep: SleepSettings) -> Settings:
    return settings.model_copy(
        update={
            "llm": llm_server.settings(max_retries=0),
            "pipeline": PipelineSettings(buffer_tokens=10_000),
            "sleep": sleep,
            # No fact here is like another: consolidation checks them all and calls no LLM.
            "consolidation": ConsolidationSettings(score_threshold=0.99),
        }
    )


def summarized(service: Memory, user_id: str) -> bool:
    """Whether a scheduled run finished for the user: its summary mark, written last, is stored."""
    mark = RecordFilter(user_id, kinds=(PROGRESS_KIND,), ids=(SummaryMark.id_of(user_id),))
    return service.store.count(mark) == 1


def test_the_schedule_consolidates_and_summarizes_after_enough_new_facts(
    settings: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder
) -> None:
    service = open_memory(scheduled(settings, llm_server, SleepSettings(after_facts=2)), embedder)
    service.sleep.start()
    try:

        def route(request: ChatRequest) -> dict[str, Any]:
            if "keep a long-term memory" in request.system:
                return {"decisions": []}
            return summarize_answer(request)

        llm_server.script(extract, route, route)
        service.add(messages(MONDAY + TUESDAY), MAYA)
        service.flush(MAYA)  # 4 facts: the schedule wakes up
        deadline = time.monotonic() + 60
        while not summarized(service, "maya") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert summarized(service, "maya")
        waiting = RecordFilter("maya", kinds=("fact",), stages=("extracted",))
        assert service.store.count(waiting) == 0  # every new fact was checked
        days = sorted(
            str(p.payload["window_key"]) for p in service.store.scroll(RecordFilter("maya", kinds=("summary",)), 10)
        )
        assert days == ["2024-05-06", "2024-05-07"]
        # The progress mark is in the store: a second run finds nothing new and calls no LLM.
        service.sleep.run_once(["maya"])
        assert llm_server.pending == 0
    finally:
        service.close()


def test_the_interval_runs_on_its_own(
    settings: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder
) -> None:
    service = open_memory(
        scheduled(settings, llm_server, SleepSettings(interval_minutes=0.01, summarize=False)), embedder
    )
    try:
        llm_server.script(extract)
        service.add(messages(MONDAY), MAYA)
        service.flush(MAYA)
        waiting = RecordFilter("maya", kinds=("fact",), stages=("extracted",))
        assert service.store.count(waiting) == 2  # nothing runs until the schedule starts
        service.sleep.start()
        deadline = time.monotonic() + 60
        while service.store.count(waiting) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.store.count(waiting) == 0
    finally:
        service.close()  # wakes the worker: it does not wait out the interval


def test_expired_memories_are_deleted_on_their_own_cadence_without_an_llm(
    settings: Settings, embedder: SentenceTransformerEmbedder
) -> None:
    # No LLM and no consolidation schedule: only the purge runs, every 0.6 s here.
    service = open_memory(settings.model_copy(update={"sleep": SleepSettings(purge_interval_minutes=0.01)}), embedder)
    service.sleep.start()
    try:
        kept = service.add(messages(MONDAY[:1]), MAYA)
        service.add(messages(TUESDAY[:1]), MAYA, ttl=1)
        deadline = time.monotonic() + 60
        while service.stats(MAYA).expired_purged == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = service.stats(MAYA)
        stored = [p.id for p in service.store.scroll(RecordFilter("maya", kinds=("turn",)), 10)]
    finally:
        service.close()

    assert (stats.expired_purged, stats.expired_pending) == (1, 0)
    assert stored == kept.ids  # deleted from the store, not only hidden
