"""The `stats` accounting: exact counts and costs against a scripted LLM whose replies carry known usage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from mcp import Client

from bench.pipeline import _turn, exchanges
from lightmem_mcp.api import Message
from lightmem_mcp.config import CompressionSettings, PipelineSettings, PriceSettings, Settings, load_settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import ConfigError, InvalidInput
from lightmem_mcp.extractor import EXTRACTION_PROMPT, render_batch
from lightmem_mcp.memory import Memory
from lightmem_mcp.presets import DEFAULT_PRICES
from lightmem_mcp.records import LLMCall, RecordFilter, Scope, Usage
from lightmem_mcp.server import MemoryProvider, build_server
from tests.conftest import open_memory
from tests.openai_server import FakeLLMServer, Reply, facts_per_message, usage

MAYA = Scope("maya", session_id="trip")
PRICE = {"input_cache_miss": 2.0, "input_cache_hit": 0.5, "output": 8.0}
EXCHANGES = [
    (
        "I am planning a two week trip to Japan next April with my sister, mostly by train, "
        "and we want to see the cherry blossoms in Kyoto and Osaka before heading to Hiroshima.",
        "April is a great time for that.",
    ),
    (
        "Our budget for the whole trip is about three thousand euros each, including the flights "
        "from Lisbon, the hostels, the rail passes and the food, which we expect to be the best part.",
        "That is workable if you book early.",
    ),
    (
        "My sister is vegetarian and I am allergic to shellfish, so we will need restaurants in "
        "Kyoto that can handle both, ideally small family places rather than the big tourist chains.",
        "Many temples serve shojin ryori, which is vegetarian.",
    ),
]
LATE = "By the way, I also need to renew my passport before the trip, it expires in March next year."


def conversation() -> list[Message]:
    """The exchanges as messages, a user turn then the reply, one minute apart."""
    turns = [turn for user, reply in EXCHANGES for turn in (("user", user), ("assistant", reply))]
    return [
        Message(role=role, content=text, id=f"m{i}", timestamp=f"2024-03-10T09:{i:02d}:00Z")  # type: ignore[arg-type]
        for i, (role, text) in enumerate(turns)
    ]


def dollars(miss: int, hit: int, output: int) -> Decimal:
    return (
        miss * Decimal(str(PRICE["input_cache_miss"]))
        + hit * Decimal(str(PRICE["input_cache_hit"]))
        + output * Decimal(str(PRICE["output"]))
    ) / Decimal(1_000_000)


def ledger_call(
    scope: Scope, purpose: str, prompt: int, completion: int, cached: int, model: str = "fake-model"
) -> LLMCall:
    return LLMCall(
        call_id=uuid.uuid4().hex,
        purpose=purpose,
        provider="openai-compatible",
        model=model,
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached),
        attempts=1,
        seconds=0.1,
        started_at=datetime(2024, 3, 11, tzinfo=UTC),
        ok=True,
        scope=scope,
    )


def stored_turns(memory: Memory) -> dict[str, dict[str, Any]]:
    """Each stored turn's payload, by message id."""
    found = memory.store.scroll(RecordFilter("maya", kinds=("turn",)), 100)
    return {cast(list[str], p.payload["source_ids"])[0]: dict(p.payload) for p in found}


@pytest.fixture
def priced(settings: Settings, llm_server: FakeLLMServer, tiny_model: Path) -> Settings:
    return settings.model_copy(
        update={
            "llm": llm_server.settings(),
            # Extraction runs only when flushed, here, so every call is the test's.
            "pipeline": PipelineSettings(buffer_tokens=100_000),
            "compression": CompressionSettings(path=tiny_model, device="cpu", rate=0.5, min_tokens=4),
            "price": PriceSettings(table={"openai-compatible/fake-model": PRICE}),
        }
    )


@pytest.fixture
def memory(priced: Settings, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    service = open_memory(priced, embedder)
    assert service.compressor.load() == "ready"
    yield service
    service.close()


def test_counts_tokens_and_costs_are_exact(memory: Memory, llm_server: FakeLLMServer) -> None:
    messages = conversation()
    adds = exchanges(messages)
    for add in adds:
        memory.add(add, MAYA)
    # Extraction: a blank answer (its tokens still billed), then the facts; later an outage, three attempts.
    llm_server.script(
        Reply(content="", usage=usage(700, 5)),
        Reply.computed(facts_per_message("Maya said"), usage=usage(1000, 120, cached=400)),
    )
    assert memory.flush(MAYA).facts == 3
    memory.add([Message(role="user", content=LATE, id="late", timestamp="2024-03-11T08:00:00Z")], MAYA)
    llm_server.script(500, 500, 500)
    assert memory.flush(MAYA).pending_turns == 1
    memory.ledger.llm_called(ledger_call(MAYA, "update", 500, 50, 100))
    memory.ledger.llm_called(ledger_call(MAYA, "summary", 200, 80, 0))
    memory.ledger.llm_called(ledger_call(MAYA, "summary", 9_000, 900, 0, model="mystery"))

    stats = memory.stats(MAYA)

    counter = memory.compressor.counter
    turns = stored_turns(memory)
    extracted = [turns[str(m.id)] for m in messages if m.role == "user"]
    saved = sum(counter.count(t["original_text"]) - t["tokens_compressed"] for t in extracted)
    assert saved > 0  # the tiny compressor did shorten the extracted turns

    assert [(r.kind, r.total, r.active) for r in stats.records] == [("turn", 7, 7), ("fact", 3, 3), ("summary", 0, 0)]
    assert (stats.turns.pending, stats.turns.extracted, stats.turns.skipped) == (1, 3, 3)
    assert stats.turns.tokens_original == sum(counter.count(m.content) for m in messages) + counter.count(LATE)
    assert stats.turns.tokens_compressed == sum(t["tokens_compressed"] for t in turns.values())

    by_purpose = {u.purpose: u for u in stats.llm}
    assert list(by_purpose) == ["extraction", "update", "summary"]
    extraction = by_purpose["extraction"]
    assert (extraction.calls, extraction.ok, extraction.failed, extraction.attempts) == (2, 1, 1, 5)
    assert (extraction.prompt_tokens, extraction.cached_tokens, extraction.completion_tokens) == (1700, 400, 125)
    assert extraction.cost == {"USD": float(dollars(1300, 400, 125))}
    summary = by_purpose["summary"]
    assert (summary.calls, summary.prompt_tokens, summary.completion_tokens) == (2, 9_200, 980)
    assert summary.cost == {"USD": float(dollars(200, 0, 80))}  # the unpriced model is left out
    total = stats.llm_total
    assert (total.calls, total.ok, total.failed, total.prompt_tokens, total.completion_tokens) == (
        5,
        4,
        1,
        11_400,
        1_155,
    )

    cost = stats.cost
    actual = dollars(1300, 400, 125) + dollars(400, 100, 50) + dollars(200, 0, 80)
    assert cost.actual == {"USD": float(actual)}
    assert cost.unpriced_models == ["openai-compatible/mystery"]
    assert [p.model for p in cost.prices] == ["openai-compatible/fake-model"]

    assert cost.without_compression.llm_calls == 5
    assert cost.without_compression.prompt_tokens == 11_400 + saved
    assert cost.without_compression.cost == {"USD": float(actual + dollars(saved, 0, 0))}

    # bench/pipeline.py's "one call per add": the system prompt and the whole exchange, uncompressed.
    per_add = sum(
        counter.count(EXTRACTION_PROMPT) + counter.count(render_batch([[_turn(m) for m in add]])) for add in adds
    )
    assert cost.one_call_per_add.llm_calls == len(adds) + 3
    assert cost.one_call_per_add.prompt_tokens == per_add + 500 + 200 + 9_000
    assert cost.one_call_per_add.completion_tokens == 1_155
    assert cost.one_call_per_add.cost == {
        "USD": float(dollars(per_add, 0, 125) + dollars(400, 100, 50) + dollars(200, 0, 80))
    }


def test_stats_cover_only_the_scope_asked_for(memory: Memory, llm_server: FakeLLMServer) -> None:
    memory.add([Message(role="user", content="Work note: the report is due Friday.")], Scope("maya", session_id="w"))
    memory.add([Message(role="user", content="Home note: water the plants.")], MAYA)
    memory.add([Message(role="user", content="Someone else's note.")], Scope("ben"))
    memory.ledger.llm_called(ledger_call(Scope("maya", session_id="w"), "extraction", 100, 10, 0))

    work = memory.stats(Scope("maya", session_id="w"))
    home = memory.stats(MAYA)
    everything = memory.stats(Scope("maya"))

    assert (work.records[0].total, work.llm_total.calls) == (1, 1)
    assert (home.records[0].total, home.llm_total.calls, home.cost.actual) == (1, 0, {})
    assert (everything.records[0].total, everything.llm_total.calls) == (2, 1)


def test_without_an_llm_the_stats_show_no_calls_and_no_cost(
    settings: Settings, embedder: SentenceTransformerEmbedder
) -> None:
    memory = open_memory(settings, embedder)
    try:
        memory.add(conversation(), MAYA)
        stats = memory.stats(MAYA)
        with pytest.raises(InvalidInput, match="user_id"):
            memory.stats(Scope(" "))
    finally:
        memory.close()

    assert stats.records[0].total == 6
    assert (stats.turns.pending, stats.turns.skipped) == (0, 6)
    assert stats.turns.tokens_original == stats.turns.tokens_compressed
    assert stats.llm_total.calls == 0
    assert (stats.cost.actual, stats.cost.one_call_per_add.llm_calls) == ({}, 0)


@pytest.mark.anyio
async def test_the_stats_tool_is_read_only_and_returns_the_report(
    settings: Settings, embedder: SentenceTransformerEmbedder
) -> None:
    memory = open_memory(settings, embedder)
    try:
        memory.add(conversation(), MAYA)
        async with Client(build_server(settings, MemoryProvider(settings, lambda _: memory))) as client:
            tool = next(t for t in (await client.list_tools()).tools if t.name == "stats")
            result = await client.call_tool("stats", {"user_id": "maya", "session_id": "trip"})
    finally:
        memory.close()

    assert tool.annotations is not None
    assert (tool.annotations.read_only_hint, tool.annotations.idempotent_hint) == (True, True)
    assert tool.output_schema is not None
    assert not result.is_error
    content = result.structured_content
    assert content is not None
    assert content["records"][0] == {"kind": "turn", "total": 6, "active": 6, "superseded": 0, "deleted": 0}
    assert content["llm_total"]["calls"] == 0


# -- the price table -----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("LIGHTMEM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_a_price_table_from_the_environment_adds_to_the_built_in_one(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(
        "LIGHTMEM_PRICE_TABLE", '{"My-Model": {"input_cache_miss": 1, "input_cache_hit": 0.1, "output": 4}}'
    )
    clean_env.setenv("LIGHTMEM_PRICE_CURRENCY", "CNY")

    prices = load_settings().price

    mine = prices.price_of("openai-compatible", "my-model")
    assert mine is not None and mine[1] == "CNY" and mine[0].output == 4
    builtin = prices.price_of("deepseek", "deepseek-flash")
    assert builtin is not None and builtin[1] == "USD"
    assert prices.price_of("huawei-maas", "deepseek-flash") is None  # a provider's price is its own


def test_a_price_table_in_the_config_file_wins_over_the_built_in_price(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "lightmem.toml"
    config.write_text(
        '[price.table."deepseek/deepseek-flash"]\ninput_cache_miss = 0.15\ninput_cache_hit = 0.003\noutput = 0.6\n'
    )

    found = load_settings(config).price.price_of("deepseek", "deepseek-flash")

    assert found is not None and found[0].input_cache_miss == 0.15


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{not json", "not JSON"),
        ('{"m": {"input_cache_miss": -1, "input_cache_hit": 0, "output": 1}}', "greater than or equal to 0"),
        ('{"m": {"input_cache_miss": 1, "output": 1}}', "input_cache_hit"),
        ('{"m": {"input_cache_miss": 1, "input_cache_hit": 0, "output": 1, "currency": "dollars"}}', "pattern"),
        (
            '{"m": {"input_cache_miss": 1, "input_cache_hit": 0, "output": 1}, '
            '"M": {"input_cache_miss": 1, "input_cache_hit": 0, "output": 1}}',
            "differ only in case",
        ),
    ],
)
def test_a_bad_price_table_is_refused_naming_the_variable(
    clean_env: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    clean_env.setenv("LIGHTMEM_PRICE_TABLE", value)

    with pytest.raises(ConfigError) as refused:
        load_settings()

    assert "LIGHTMEM_PRICE_TABLE" in str(refused.value)
    assert problem in str(refused.value)


def test_the_readme_states_every_built_in_price() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")

    for key, price in DEFAULT_PRICES.items():
        row = next((line for line in readme.splitlines() if f"`{key}`" in line), "")
        assert row, key
        for value in (price.input_cache_miss, price.input_cache_hit, price.output):
            assert f"{value:g}" in row, (key, value)
