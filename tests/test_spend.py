"""Spend guardrails and the backlog: daily token budgets that make LLM work wait (nothing lost), and
the turns stored while no LLM was configured, extracted only when asked, with a dry run first.

Real store, MiniLM and segmenter; the LLM is the scripted local server, the clock is injected."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mcp import Client

from lightmem_mcp.api import Message
from lightmem_mcp.cli import main
from lightmem_mcp.config import BudgetSettings, PipelineSettings, PriceSettings, Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.presets import ModelPrice
from lightmem_mcp.records import RecordFilter, Scope
from lightmem_mcp.server import MemoryProvider, build_server
from lightmem_mcp.store.edge import EdgeStore
from tests.conftest import open_memory
from tests.openai_server import FakeLLMServer, Reply, facts_per_message, usage

LENA = Scope("lena")
OMAR = Scope("omar")
one_fact_per_message = facts_per_message("Lena said")
PRICE = PriceSettings(table={"fake-model": ModelPrice(input_cache_miss=2.0, input_cache_hit=0.5, output=8.0)})


class Clock:
    """A settable UTC clock, starting now (LLM calls are stamped with the real time)."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


def talk(prefix: str, count: int = 4) -> list[Message]:
    return [
        Message(
            role="user" if n % 2 == 0 else "assistant",
            content=f"{prefix} message {n}: Lena booked the ferry to Hydra for the third of June, cabin {n}.",
            id=f"{prefix}{n}",
            timestamp=f"2024-05-{1 + n:02d}T10:00:00Z",
        )
        for n in range(count)
    ]


def open_with_clock(settings: Settings, embedder: SentenceTransformerEmbedder, clock: Callable[[], datetime]) -> Memory:
    lexical = LexicalEncoder()
    store = EdgeStore(settings.store.embedded_path, store_layout(embedder, lexical))
    return Memory(settings, embedder, store, lexical, clock=clock)


@pytest.fixture
def budgeted(settings: Settings, llm_server: FakeLLMServer) -> Settings:
    return settings.model_copy(
        update={
            "llm": llm_server.settings(),
            "pipeline": PipelineSettings(buffer_tokens=100_000),  # extraction only when flushed
            "budget": BudgetSettings(user_tokens_per_day=500),
        }
    )


def stages(memory: Memory, scope: Scope) -> list[str]:
    where = RecordFilter(scope.user_id, kinds=("turn",), roles=("user",))
    return sorted(str(p.payload["stage"]) for p in memory.store.scroll(where, 100))


def test_a_spent_budget_keeps_turns_pending_and_searchable_until_the_next_day(
    budgeted: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    clock = Clock()
    memory = open_with_clock(budgeted, embedder, clock)
    llm_server.script(Reply.computed(one_fact_per_message, usage=usage(450, 100)))
    try:
        memory.add(talk("a"), LENA)
        first = memory.flush(LENA)
        assert (first.error, first.llm_calls) == (None, 1)  # 550 tokens: the day's 500 are spent

        memory.add(talk("b"), LENA)
        waiting = memory.flush(LENA)
        stats = memory.stats(LENA)
        found = memory.search("ferry to Hydra cabin 2", LENA, limit=10).hits

        assert waiting.llm_calls == 0 and len(llm_server.requests) == 1  # refused before any request
        assert waiting.error is not None and "LIGHTMEM_BUDGET_USER_TOKENS_PER_DAY" in waiting.error
        assert waiting.pending_turns == 2 and stages(memory, LENA).count("pending") == 2
        assert any(hit.text.startswith("b message 2") for hit in found)  # searchable while it waits
        assert stats.budget is not None and stats.budget.waiting
        assert (stats.budget.user_tokens, stats.budget.user_limit) == (550, 500)
        tomorrow = (clock.at + timedelta(days=1)).date().isoformat()
        assert stats.budget.resumes_at is not None and stats.budget.resumes_at.startswith(tomorrow)
        assert stats.budget.reason is not None and "pending and searchable" in stats.budget.reason
        assert [u.calls for u in stats.llm if u.purpose == "extraction"] == [1]  # the refusal is no call

        clock.at += timedelta(days=1)
        llm_server.script(one_fact_per_message)
        resumed = memory.flush(LENA)
        after = memory.stats(LENA)
        final = stages(memory, LENA)
    finally:
        memory.close()

    assert (resumed.error, resumed.llm_calls, resumed.pending_turns) == (None, 1, 0)
    assert final == ["extracted"] * 4
    assert after.budget is not None and not after.budget.waiting and after.budget.day == tomorrow


def test_the_server_wide_budget_holds_every_user_and_sleep_time_work(
    settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    capped = settings.model_copy(
        update={
            "llm": llm_server.settings(),
            "pipeline": PipelineSettings(buffer_tokens=100_000),
            "budget": BudgetSettings(tokens_per_day=300),
        }
    )
    memory = open_memory(capped, embedder)
    llm_server.script(Reply.computed(one_fact_per_message, usage=usage(250, 60)))
    try:
        memory.add(talk("a"), LENA)
        assert memory.flush(LENA).llm_calls == 1
        memory.add(talk("o"), OMAR)
        other = memory.flush(OMAR)
        consolidated = memory.consolidate(LENA)
        summarized = memory.summarize(LENA)
    finally:
        memory.close()

    assert other.error is not None and "LIGHTMEM_BUDGET_TOKENS_PER_DAY" in other.error
    assert other.pending_turns == 2
    assert consolidated.error is not None and "budget" in consolidated.error
    assert summarized.error is not None and "budget" in summarized.error
    assert len(llm_server.requests) == 1


def test_background_extraction_waits_for_the_budget_without_asking_the_llm(
    settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    eager = settings.model_copy(
        update={
            "llm": llm_server.settings(),
            # Two user turns fill it, counted at what compression is expected to leave of them.
            "pipeline": PipelineSettings(buffer_tokens=30),
            "budget": BudgetSettings(user_tokens_per_day=500),
        }
    )
    clock = Clock()
    memory = open_with_clock(eager, embedder, clock)
    llm_server.script(*[Reply.computed(one_fact_per_message, usage=usage(450, 100))] * 2)
    try:
        memory.add(talk("a"), LENA)
        memory.buffer.drain(timeout=60)
        assert len(llm_server.requests) == 1
        for prefix in "bcd":
            memory.add(talk(prefix), LENA)  # each fills the buffer again
            memory.buffer.drain(timeout=60)
        assert len(llm_server.requests) == 1
        assert stages(memory, LENA).count("pending") == 6

        clock.at += timedelta(days=1)
        memory.buffer.resume()  # what the renewal timer does at midnight
        memory.buffer.drain(timeout=60)
        final = stages(memory, LENA)
    finally:
        memory.close()
    # Resumed: the background flush takes whole batches (a partial one waits for more turns, as ever).
    assert len(llm_server.requests) == 2
    assert final.count("extracted") >= 6 and final.count("pending") <= 2


# -- the backlog ---------------------------------------------------------------------------


def store_without_llm(settings: Settings, embedder: SentenceTransformerEmbedder) -> None:
    memory = open_memory(settings, embedder)
    try:
        memory.add(talk("early", 6), LENA)
        memory.add(talk("later", 4), LENA)
    finally:
        memory.close()


def everything(memory: Memory) -> dict[str, dict[str, object]]:
    return {p.id: dict(p.payload) for p in memory.store.scan(None)}


def test_the_backlog_dry_run_changes_nothing_then_the_run_spends_what_it_said(
    settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    store_without_llm(settings, embedder)
    enabled = settings.model_copy(
        update={"llm": llm_server.settings(), "pipeline": PipelineSettings(buffer_tokens=100_000), "price": PRICE}
    )
    memory = open_memory(enabled, embedder)
    try:
        before = everything(memory)
        plan = memory.flush(LENA, backlog=True, dry_run=True)
        assert everything(memory) == before and llm_server.requests == []
        # Without being asked, the backlog stays where it is.
        assert memory.flush(LENA).extracted_turns == 0 and llm_server.requests == []

        llm_server.script(*[one_fact_per_message] * 5)
        done = memory.flush(LENA, backlog=True)
        spent = memory.stats(LENA).llm_total
        assistant = RecordFilter(LENA.user_id, kinds=("turn",), roles=("assistant",))
        assistant_stages = {p.payload["stage"] for p in memory.store.scroll(assistant, 100)}
        final = stages(memory, LENA)
    finally:
        memory.close()

    assert plan.dry_run and plan.backlog_turns == 5 and plan.extracted_turns == 5  # the user's turns
    assert plan.estimate is not None and plan.estimate.priced_as == "openai-compatible/fake-model"
    expected_cost = (plan.estimate.prompt_tokens * 2.0 + plan.estimate.completion_tokens * 8.0) / 1e6
    assert plan.estimate.cost == {"USD": pytest.approx(expected_cost)}
    assert (done.error, done.backlog_turns, done.extracted_turns, done.pending_turns) == (None, 5, 5, 0)
    assert final == ["extracted"] * 5
    assert assistant_stages == {"skipped"}  # messages_use=user_only: the assistant's turns feed nothing
    assert done.llm_calls == plan.estimate.llm_calls == spent.calls
    # The scripted server counts ~4 characters a token; the estimate counts with the tokenizer.
    assert spent.prompt_tokens == pytest.approx(plan.estimate.prompt_tokens, rel=0.15)
    # The first facts of the backlog are the oldest turns'.
    assert "early message 0" in llm_server.requests[0].user


def test_the_backlog_command_estimates_then_extracts(
    settings: Settings,
    embedder: SentenceTransformerEmbedder,
    llm_server: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    store_without_llm(settings, embedder)
    monkeypatch.setenv("LIGHTMEM_DATA_DIR", str(settings.store.data_dir))
    monkeypatch.setenv("LIGHTMEM_EMBEDDING_DEVICE", "cpu")

    assert main(["backlog", "--dry-run"]) == 0
    dry = capsys.readouterr()
    assert "lena/-/-/-\t5\t1\t" in dry.out and "nothing was changed" in dry.err
    assert main(["backlog"]) == 2  # no LLM configured: refused, with the fix
    assert "LIGHTMEM_LLM_PROVIDER" in capsys.readouterr().err

    for name, value in {
        "LIGHTMEM_LLM_PROVIDER": "openai-compatible",
        "LIGHTMEM_LLM_BASE_URL": llm_server.base_url,
        "LIGHTMEM_LLM_MODEL": "fake-model",
        "LIGHTMEM_LLM_API_KEY": "sk-test",
    }.items():
        monkeypatch.setenv(name, value)
    llm_server.script(one_fact_per_message)
    assert main(["backlog"]) == 0
    ran = capsys.readouterr()
    assert "lena/-/-/-\t5\t" in ran.out and "5 turns extracted" in ran.err
    assert main(["backlog", "--dry-run"]) == 0  # nothing left
    assert "0 turns" in capsys.readouterr().err


@pytest.mark.anyio
async def test_flush_memory_takes_the_backlog_through_the_tool_after_a_dry_run(
    settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    store_without_llm(settings, embedder)
    enabled = settings.model_copy(
        update={
            "llm": llm_server.settings(),
            "pipeline": PipelineSettings(buffer_tokens=100_000),
            "price": PRICE,
            "budget": BudgetSettings(user_tokens_per_day=1_000_000),
        }
    )
    memory = open_memory(enabled, embedder)
    scope = {"user_id": "lena"}
    try:
        async with Client(build_server(enabled, MemoryProvider(enabled, lambda _: memory))) as client:
            planned = await client.call_tool("flush_memory", {**scope, "backlog": True, "dry_run": True})
            assert llm_server.requests == []
            llm_server.script(one_fact_per_message)
            done = await client.call_tool("flush_memory", {**scope, "backlog": True})
            stats = await client.call_tool("stats", scope)
    finally:
        memory.close()

    plan, result, spent = planned.structured_content, done.structured_content, stats.structured_content
    assert plan is not None and result is not None and spent is not None
    assert plan["dry_run"] and plan["backlog_turns"] == 5 and plan["estimate"]["llm_calls"] == 1
    assert plan["estimate"]["cost"]["USD"] > 0
    assert (result["backlog_turns"], result["extracted_turns"], result["llm_calls"]) == (5, 5, 1)
    assert spent["budget"]["user_limit"] == 1_000_000 and spent["budget"]["user_tokens"] > 0
    assert not spent["budget"]["waiting"]
