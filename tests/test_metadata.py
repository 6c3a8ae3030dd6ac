"""The caller's metadata and expiry on memories: given at add_memory, returned, filtered on, handed down
to facts, versions and summaries, hidden once expired, purged by the sleep-time job, exported and imported.

The store is Qdrant Edge and the embedder the real MiniLM; the LLM is the scripted local server; the
clock the service reads is injected, so that a test can move past an expiry."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lightmem_mcp.api import Message, SearchFilters
from lightmem_mcp.config import (
    CompressionSettings,
    ConsolidationSettings,
    PipelineSettings,
    Settings,
    StoreSettings,
)
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import KINDS, MAX_TTL_S, RecordFilter, Scope
from lightmem_mcp.store.edge import EdgeStore
from tests.openai_server import ChatRequest, FakeLLMServer, prompt_messages

MAYA = Scope("maya", session_id="garden")
HOUR = 3600


class Clock:
    """A settable UTC clock, starting now."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


def open_with_clock(settings: Settings, embedder: SentenceTransformerEmbedder, clock: Clock) -> Memory:
    lexical = LexicalEncoder()
    store = EdgeStore(settings.store.embedded_path, store_layout(embedder, lexical))
    return Memory(settings, embedder, store, lexical, clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def quiet(settings: Settings) -> Settings:
    """No LLM and no compression model: turns are the memories."""
    return settings.model_copy(update={"compression": CompressionSettings(enabled=False)})


@pytest.fixture
def memory(quiet: Settings, embedder: SentenceTransformerEmbedder, clock: Clock) -> Iterator[Memory]:
    service = open_with_clock(quiet, embedder, clock)
    yield service
    service.close()


@pytest.fixture
def extracting(
    quiet: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder, clock: Clock
) -> Iterator[Memory]:
    """Extraction through the scripted LLM, only when flushed."""
    configured = quiet.model_copy(
        update={
            "llm": llm_server.settings(max_retries=0),
            "pipeline": PipelineSettings(buffer_tokens=100_000),
            "consolidation": ConsolidationSettings(score_threshold=0.7),
        }
    )
    service = open_with_clock(configured, embedder, clock)
    yield service
    service.close()


def said(message_id: str, text: str, timestamp: str = "2024-03-01T10:00:00Z") -> Message:
    return Message(role="user", content=text, id=message_id, timestamp=timestamp)


def everything(memory: Memory, user_id: str = "maya") -> int:
    """Every memory stored for the user, expired or not: what is on disk."""
    return memory.store.count(RecordFilter(user_id, kinds=KINDS))


def texts(records: Any) -> list[str]:
    return sorted(record.text for record in records)


def extraction(facts: dict[str, list[str]]) -> Callable[[ChatRequest], dict[str, Any]]:
    """An extraction LLM writing each fact from the messages (by their words) it names."""

    def answer(request: ChatRequest) -> dict[str, Any]:
        numbers = {text: number for number, text in prompt_messages(request)}
        return {"facts": [{"fact": fact, "sources": [numbers[t] for t in words]} for fact, words in facts.items()]}

    return answer


def fact(memory: Memory, text: str) -> Any:
    """The fact with these words, as list_memories returns it."""
    (found,) = [r for r in memory.list(MAYA, kinds=["fact"], limit=100).records if r.text == text]
    return found


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field", "fix"),
    [
        pytest.param({"metadata": {"team.name": "red"}}, "metadata.team.name", "no dots", id="a dotted key"),
        pytest.param({"metadata": {"9lives": 1}}, "metadata.9lives", "starting with a letter", id="a digit first"),
        pytest.param({"metadata": {"k" * 65: 1}}, "metadata." + "k" * 64 + "…", "1 to 64", id="a long key"),
        pytest.param({"metadata": {"bed\n": 1}}, "metadata.bed\n", "letters, digits", id="a line break"),
        pytest.param({"metadata": {"color": None}}, "metadata.color", "leave the key out", id="null"),
        pytest.param({"metadata": {"seeds": 2**63}}, "metadata.seeds", "64-bit", id="a huge integer"),
        pytest.param({"metadata": {"color": ["red"]}}, "metadata.color", "no lists", id="a list"),
        pytest.param({"metadata": {"color": {"hue": 1}}}, "metadata.color", "nesting", id="nesting"),
        pytest.param({"metadata": {"note": "x" * 257}}, "metadata.note", "at most 256", id="a long value"),
        pytest.param({"metadata": {"score": float("nan")}}, "metadata.score", "finite", id="NaN"),
        pytest.param({"metadata": {f"k{i}": i for i in range(17)}}, "metadata", "at most 16", id="17 keys"),
        pytest.param({"metadata": {f"k{i}": "x" * 250 for i in range(16)}}, "metadata", "at most 4096", id="too big"),
        pytest.param({"metadata": "red"}, "metadata", "key: value pairs", id="not a mapping"),
        pytest.param({"ttl": 0}, "ttl", "from 1 to", id="ttl zero"),
        pytest.param({"ttl": MAX_TTL_S + 1}, "ttl", "100 years", id="ttl over 100 years"),
        pytest.param({"ttl": True}, "ttl", "whole seconds", id="ttl a boolean"),
        pytest.param({"expires_at": "next tuesday"}, "expires_at", "ISO 8601", id="not a time"),
        pytest.param({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "not in the future", id="in the past"),
        pytest.param({"expires_at": "2999-01-01", "ttl": 60}, "ttl", "one of the two", id="both"),
    ],
)
def test_bad_metadata_or_expiry_is_refused_naming_the_field_and_nothing_is_written(
    memory: Memory, arguments: dict[str, Any], field: str, fix: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        memory.add([said("m1", "My tomatoes are ripening.")], MAYA, **arguments)

    assert refused.value.field == field
    assert fix in str(refused.value)
    assert everything(memory) == 0


def test_a_bad_metadata_filter_is_refused_naming_the_field(memory: Memory) -> None:
    memory.add([said("m1", "My tomatoes are ripening.")], MAYA, metadata={"bed": "north"})

    with pytest.raises(InvalidInput) as listing:
        memory.list(MAYA, metadata={"bed": None})  # type: ignore[dict-item]
    with pytest.raises(InvalidInput) as searching:
        memory.search("tomatoes", MAYA, filters=SearchFilters(metadata={"bed.row": 1}))

    assert listing.value.field == "metadata.bed"
    assert searching.value.field == "filters.metadata.bed.row"


# -- metadata returned and filtered on ---------------------------------------------------


@pytest.fixture
def garden(memory: Memory) -> Memory:
    """Two calls tagged differently, and one stored without metadata (as every earlier version did)."""
    memory.add(
        [said("n1", "The tomatoes in the north bed are ripening."), said("n2", "The basil there needs water.")],
        MAYA,
        metadata={"bed": "north", "row": 2, "organic": True},
    )
    memory.add([said("s1", "The south bed has strawberries.")], MAYA, metadata={"bed": "south", "row": 2.5})
    memory.add([said("x1", "I bought a new watering can.")], MAYA)
    return memory


def test_metadata_comes_back_from_get_search_and_list(garden: Memory) -> None:
    listed = {r.source_ids[0]: r for r in garden.list(MAYA).records}
    hits = {h.source_ids[0]: h for h in garden.search("tomatoes ripening", MAYA, limit=4).hits}
    got = {r.source_ids[0]: r for r in garden.get([listed["n1"].id, listed["x1"].id], MAYA).records}

    assert listed["n1"].metadata == {"bed": "north", "row": 2, "organic": True}
    assert listed["n2"].metadata == listed["n1"].metadata  # every message of the call
    assert listed["s1"].metadata == {"bed": "south", "row": 2.5}
    assert listed["x1"].metadata == {} and listed["x1"].expires_at is None
    assert hits["n1"].metadata == listed["n1"].metadata
    assert hits["x1"].metadata == {}
    assert got["n1"].metadata == listed["n1"].metadata
    assert got["x1"].metadata == {}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param({"bed": "north"}, ["n1", "n2"], id="one pair"),
        pytest.param({"bed": "north", "organic": True}, ["n1", "n2"], id="every pair"),
        pytest.param({"bed": "north", "organic": False}, [], id="one pair differs"),
        pytest.param({"row": 2.0}, ["n1", "n2"], id="a whole number"),
        pytest.param({"row": "2"}, [], id="a string is no number"),
        pytest.param({"bed": "North"}, [], id="case counts"),
        pytest.param({}, ["n1", "n2", "s1", "x1"], id="an empty filter"),
    ],
)
def test_search_list_and_recall_keep_only_memories_with_every_pair(
    garden: Memory, metadata: dict[str, Any], expected: list[str]
) -> None:
    filters = SearchFilters(metadata=metadata)

    listed = garden.list(MAYA, metadata=metadata).records
    hits = garden.search("what grows in the garden beds", MAYA, limit=10, filters=filters).hits
    recalled = garden.recall("what grows in the garden beds", MAYA, filters=filters)

    assert sorted(r.source_ids[0] for r in listed) == expected
    assert sorted(h.source_ids[0] for h in hits) == expected
    assert sorted(s for block in recalled.blocks for s in block.source_ids) == expected


def test_the_turns_around_a_hit_hold_the_metadata_asked_for(memory: Memory) -> None:
    memory.add([said("a1", "Did you water it?", "2024-03-01T10:00:00Z")], MAYA, metadata={"bed": "south"})
    memory.add([said("a2", "Yes, the basil got a can this morning.", "2024-03-01T10:01:00Z")], MAYA)
    memory.add([said("a3", "Good.", "2024-03-01T10:02:00Z")], MAYA, metadata={"bed": "south"})

    plain = memory.search("basil watered", MAYA, limit=1, context=2)
    south = memory.search("basil watered", MAYA, limit=1, context=2, filters=SearchFilters(metadata={"bed": "south"}))

    assert [t.source_ids[0] for t in plain.windows[0].turns] == ["a1", "a2", "a3"]
    assert all(t.source_ids[0] != "a2" for window in south.windows for t in window.turns)


def test_sending_a_message_again_replaces_its_metadata_and_expiry(memory: Memory) -> None:
    memory.add([said("m1", "The fig tree has fruit.")], MAYA, metadata={"bed": "east"}, ttl=HOUR)
    memory.add([said("m1", "The fig tree has fruit.")], MAYA, metadata={"tree": "fig"})

    (record,) = memory.list(MAYA).records
    assert (record.metadata, record.expires_at) == ({"tree": "fig"}, None)
    assert memory.list(MAYA, metadata={"bed": "east"}).records == []


# -- expiry ------------------------------------------------------------------------------


def test_an_expired_memory_is_hidden_everywhere_then_purged_and_counted(memory: Memory, clock: Clock) -> None:
    added = memory.add(
        [said("t1", "The seed order arrives on Friday."), said("t2", "The order number is GS-2291.")],
        MAYA,
        metadata={"topic": "seeds"},
        ttl=HOUR,
    )
    memory.add([said("k1", "The greenhouse key is under the blue pot.")], MAYA)
    expires = clock.at + timedelta(seconds=HOUR)
    query = "seed order number"

    (listed,) = [r for r in memory.list(MAYA).records if r.source_ids == ["t1"]]
    assert listed.expires_at is not None
    assert abs((listed.expires_at - expires).total_seconds()) < 1e-3
    assert "t2" in {h.source_ids[0] for h in memory.search(query, MAYA).hits}

    clock.at += timedelta(seconds=HOUR)  # the moment it expires

    assert texts(memory.list(MAYA).records) == ["The greenhouse key is under the blue pot."]
    assert [h.source_ids for h in memory.search(query, MAYA).hits] == [["k1"]]
    assert memory.get(added.ids, MAYA).missing == added.ids
    assert "GS-2291" not in memory.recall(query, MAYA).context
    assert memory.count(MAYA) == 1
    stats = memory.stats(MAYA)
    assert next(r for r in stats.records if r.kind == "turn").total == 1
    assert (stats.expired_pending, stats.expired_purged) == (2, 0)
    assert everything(memory) == 3  # hidden, not yet deleted

    memory.sleep.run_once()

    assert everything(memory) == 1
    stats = memory.stats(MAYA)
    assert (stats.expired_pending, stats.expired_purged) == (0, 2)
    assert memory.stats(Scope("maya")).expired_purged == 2
    assert memory.stats(Scope("maya", session_id="elsewhere")).expired_purged == 0


def test_a_memory_is_visible_until_its_expiry_given_as_a_time(memory: Memory, clock: Clock) -> None:
    at = (clock.at + timedelta(days=2)).replace(microsecond=0)
    memory.add([said("t1", "The plot rent is due.")], MAYA, expires_at=at.isoformat())

    clock.at = at - timedelta(seconds=1)
    (record,) = memory.list(MAYA).records
    assert record.expires_at == at
    clock.at = at
    assert memory.list(MAYA).records == []


# -- what facts, versions and summaries inherit -------------------------------------------


def test_a_fact_gets_the_union_of_its_turns_metadata_and_expires_with_the_last_of_them(
    extracting: Memory, llm_server: FakeLLMServer, clock: Clock
) -> None:
    start = clock.at
    # Added first but said later: the newest source by event time wins a key they disagree on.
    extracting.add(
        [said("late", "Luna now sleeps in the shed.", "2024-03-01T10:05:00Z")],
        MAYA,
        metadata={"pet": "luna", "place": "shed"},
        ttl=2 * HOUR,
    )
    extracting.add(
        [said("early", "My cat Luna used to sleep in the house.", "2024-03-01T10:00:00Z")],
        MAYA,
        metadata={"place": "house", "source": "chat"},
        ttl=HOUR,
    )
    extracting.add([said("kept", "Luna is eight years old.", "2024-03-01T10:10:00Z")], MAYA)
    llm_server.script(
        extraction(
            {
                "Maya's cat Luna moved from the house to the shed.": [
                    "My cat Luna used to sleep in the house.",
                    "Luna now sleeps in the shed.",
                ],
                "Maya's cat Luna used to sleep in the house.": ["My cat Luna used to sleep in the house."],
                "Maya's cat Luna is eight and lives in the house.": [
                    "My cat Luna used to sleep in the house.",
                    "Luna is eight years old.",
                ],
            }
        )
    )

    assert extracting.flush(MAYA).facts == 3

    both = fact(extracting, "Maya's cat Luna moved from the house to the shed.")
    one = fact(extracting, "Maya's cat Luna used to sleep in the house.")
    lasting = fact(extracting, "Maya's cat Luna is eight and lives in the house.")
    assert both.metadata == {"pet": "luna", "place": "shed", "source": "chat"}
    assert one.metadata == {"place": "house", "source": "chat"}
    assert lasting.metadata == {"place": "house", "source": "chat"}
    assert both.expires_at is not None and one.expires_at is not None
    assert abs((both.expires_at - (start + timedelta(seconds=2 * HOUR))).total_seconds()) < 1e-3
    assert abs((one.expires_at - (start + timedelta(seconds=HOUR))).total_seconds()) < 1e-3
    assert lasting.expires_at is None  # one source never expires

    clock.at = start + timedelta(seconds=HOUR)  # the earlier turn has expired, the later not yet
    facts = texts(extracting.list(MAYA, kinds=["fact"]).records)
    assert facts == [
        "Maya's cat Luna is eight and lives in the house.",
        "Maya's cat Luna moved from the house to the shed.",
    ]
    clock.at = start + timedelta(seconds=2 * HOUR)
    assert texts(extracting.list(MAYA, kinds=["fact"]).records) == ["Maya's cat Luna is eight and lives in the house."]


def test_an_expired_turn_is_no_extraction_input(extracting: Memory, llm_server: FakeLLMServer, clock: Clock) -> None:
    extracting.add([said("gone", "The hose has a leak.")], MAYA, ttl=HOUR)
    extracting.add([said("here", "The shed door squeaks.", "2024-03-01T10:01:00Z")], MAYA)
    clock.at += timedelta(seconds=HOUR)
    llm_server.script(extraction({"The shed door squeaks.": ["The shed door squeaks."]}))

    assert extracting.flush(MAYA).extracted_turns == 1
    assert "The hose has a leak." not in llm_server.requests[-1].user


def test_a_consolidated_version_and_a_summary_inherit_by_the_same_rule(
    extracting: Memory, llm_server: FakeLLMServer, clock: Clock
) -> None:
    start = clock.at
    extracting.add(
        [said("s1", "I have a cat called Luna.", "2024-03-01T10:00:00Z")],
        MAYA,
        metadata={"pet": "luna", "source": "chat"},
        ttl=HOUR,
    )
    llm_server.script(extraction({"Maya has a cat named Luna.": ["I have a cat called Luna."]}))
    extracting.flush(MAYA)
    extracting.add(
        [said("u1", "Luna is a grey Persian.", "2024-07-01T10:00:00Z")],
        MAYA,
        metadata={"source": "vet", "breed": "persian"},
        ttl=3 * HOUR,
    )
    llm_server.script(extraction({"Maya has a cat named Luna, a grey Persian.": ["Luna is a grey Persian."]}))
    extracting.flush(MAYA)
    merged = "Maya has a grey Persian cat named Luna."
    llm_server.script(
        {"decisions": [{"target": 1, "action": "update", "text": merged, "reason": "breed", "sources": [1]}]}
    )

    assert extracting.consolidate(MAYA).updated == 1

    version = fact(extracting, merged)
    union = {"pet": "luna", "source": "vet", "breed": "persian"}
    assert version.metadata == union
    assert version.expires_at is not None
    assert abs((version.expires_at - (start + timedelta(seconds=3 * HOUR))).total_seconds()) < 1e-3

    llm_server.script({"summary": "Maya has a grey Persian cat named Luna."})
    (summary,) = extracting.summarize(MAYA).summaries
    (stored,) = extracting.get([summary.id], MAYA).records
    assert stored.metadata == union
    assert stored.expires_at == version.expires_at


# -- export and import -------------------------------------------------------------------


def test_export_then_import_keeps_metadata_and_expiry_and_their_filters(
    garden: Memory, tmp_path: Any, embedder: SentenceTransformerEmbedder, clock: Clock, quiet: Settings
) -> None:
    garden.add([said("e1", "The compost is ready in May.")], MAYA, metadata={"bed": "north"}, ttl=HOUR)
    exported = io.StringIO()
    garden.export_records(exported, Scope("maya"))
    fresh_settings = quiet.model_copy(update={"store": StoreSettings(data_dir=tmp_path / "fresh")})
    fresh = open_with_clock(fresh_settings, embedder, clock)
    try:
        fresh.import_records(io.StringIO(exported.getvalue()))

        assert fresh.list(MAYA).records == garden.list(MAYA).records
        assert sorted(r.source_ids[0] for r in fresh.list(MAYA, metadata={"bed": "north"}).records) == [
            "e1",
            "n1",
            "n2",
        ]
        clock.at += timedelta(seconds=HOUR)
        assert sorted(r.source_ids[0] for r in fresh.list(MAYA, metadata={"bed": "north"}).records) == ["n1", "n2"]
    finally:
        fresh.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"metadata": {"bed.row": 1}}, "payload.metadata.bed.row", id="a dotted key"),
        pytest.param({"metadata": {"bed": ["north"]}}, "payload.metadata.bed", id="a list value"),
        pytest.param({"expires_at": "someday"}, "payload.expires_at", id="not a time"),
    ],
)
def test_an_import_with_bad_metadata_or_expiry_is_refused_whole_naming_the_line(
    garden: Memory,
    tmp_path: Any,
    embedder: SentenceTransformerEmbedder,
    clock: Clock,
    quiet: Settings,
    change: dict[str, Any],
    field: str,
) -> None:
    exported = io.StringIO()
    garden.export_records(exported, Scope("maya"))
    lines = exported.getvalue().splitlines()
    edited = json.loads(lines[2])
    edited["payload"].update(change)
    lines[2] = json.dumps(edited)
    fresh_settings = quiet.model_copy(update={"store": StoreSettings(data_dir=tmp_path / "fresh")})
    fresh = open_with_clock(fresh_settings, embedder, clock)
    try:
        with pytest.raises(InvalidInput) as refused:
            fresh.import_records(io.StringIO("\n".join(lines) + "\n"))

        assert refused.value.field == f"line 3: {field}"
        assert everything(fresh) == 0
    finally:
        fresh.close()
