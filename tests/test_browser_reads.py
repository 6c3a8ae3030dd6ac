"""The reads a memory browser makes: records by speaker, the LLM call behind a fact or summary, activity
per day or week, and the export a page at a time.

The store is Qdrant Edge and the embedder the real MiniLM; the LLM is the scripted local server; the
clock the service reads is injected, so that a test can move past an expiry."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from lightmem_mcp.api import ExportPage, Message, SearchFilters
from lightmem_mcp.config import CompressionSettings, PipelineSettings, PriceSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.memory import MAX_ACTIVITY_BUCKETS, Memory
from lightmem_mcp.records import GLOBAL, LLMCall, Scope, Usage
from tests.conftest import open_memory
from tests.openai_server import FakeLLMServer, Reply, facts_per_message, usage
from tests.test_metadata import Clock, open_with_clock
from tests.test_transfer import exported, fill, snapshot

MAYA = Scope("maya", session_id="garden")
PRICE = {"input_cache_miss": 2.0, "input_cache_hit": 0.5, "output": 8.0}
HOUR = 3600


def said(message_id: str, text: str, at: str, name: str | None = None) -> Message:
    return Message(role="user", content=text, id=message_id, timestamp=at, name=name)


def dollars(miss: int, hit: int, output: int) -> float:
    """What stats would bill these tokens at PRICE."""
    rate = {key: Decimal(str(value)) for key, value in PRICE.items()}
    cost = miss * rate["input_cache_miss"] + hit * rate["input_cache_hit"] + output * rate["output"]
    return float(cost / Decimal(1_000_000))


def ledger_call(scope: Scope, model: str = "fake-model", prompt: int = 300, completion: int = 30) -> LLMCall:
    """A call as the LLM client hands it to the usage ledger."""
    return LLMCall(
        call_id=uuid.uuid4().hex,
        purpose="update",
        provider="openai-compatible",
        model=model,
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=0),
        attempts=2,
        seconds=0.1,
        started_at=datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
        ok=True,
        scope=scope,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def quiet(settings: Settings) -> Settings:
    """No LLM; turns and extractive summaries are the memories."""
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
    """Extraction through the scripted LLM, only when flushed, with a price for its model."""
    configured = quiet.model_copy(
        update={
            "llm": llm_server.settings(max_retries=0),
            "pipeline": PipelineSettings(buffer_tokens=100_000),
            "price": PriceSettings(table={"openai-compatible/fake-model": PRICE}),
        }
    )
    service = open_with_clock(configured, embedder, clock)
    yield service
    service.close()


# -- list by speaker ---------------------------------------------------------------------------


def test_list_by_speaker_keeps_what_a_search_by_speaker_keeps(memory: Memory) -> None:
    memory.add(
        [
            said("a1", "Ann grows tomatoes on the balcony.", "2026-11-01T09:00:00Z", "Ann"),
            said("b1", "Bo keeps bees behind the shed.", "2026-11-01T09:01:00Z", "Bo"),
            said("a2", "Ann waters the tomatoes at dawn.", "2026-11-01T09:02:00Z", "Ann"),
            said("n1", "Someone mentioned the compost heap.", "2026-11-01T09:03:00Z"),
        ],
        MAYA,
    )

    def listed(speakers: list[str] | None) -> list[str]:
        return [r.source_ids[0] for r in memory.list(MAYA, limit=100, speakers=speakers).records]

    def searched(speakers: list[str]) -> set[str]:
        hits = memory.search("garden", MAYA, limit=100, filters=SearchFilters(speakers=speakers)).hits
        return {h.source_ids[0] for h in hits}

    assert listed(["Ann"]) == ["a2", "a1"]  # newest first, as ever
    assert sorted(listed(["Ann", "Bo"])) == ["a1", "a2", "b1"]
    assert sorted(listed(None)) == sorted(listed([])) == ["a1", "a2", "b1", "n1"]
    for speakers in (["Ann"], ["Bo"], ["Ann", "Bo"], ["ann"], ["Nobody"]):
        assert set(listed(speakers)) == searched(speakers)
    assert listed(["ann"]) == []  # names match exactly, as in search
    with pytest.raises(InvalidInput) as refused:
        memory.list(MAYA, speakers=[f"s{i}" for i in range(101)])
    assert refused.value.field == "speakers"


# -- the LLM call behind a record ---------------------------------------------------------------


def test_facts_name_their_llm_call_and_llm_calls_reads_it_with_its_cost(
    extracting: Memory, llm_server: FakeLLMServer
) -> None:
    llm_server.script(Reply.computed(facts_per_message("Maya said"), usage=usage(1000, 120, cached=400)))
    extracting.add(
        [
            said("t1", "I planted three fig trees this spring.", "2026-11-30T08:00:00Z"),
            said("t2", "The plot rent is due every March.", "2026-11-30T08:01:00Z"),
        ],
        MAYA,
    )
    extracting.flush(MAYA)

    facts = extracting.list(MAYA, kinds=["fact"]).records
    turns = extracting.list(MAYA, kinds=["turn"]).records
    (call_id,) = {f.llm_call_id for f in facts}
    assert call_id is not None and len(facts) == 2
    assert [t.llm_call_id for t in turns] == [None, None]
    assert extracting.get([facts[0].id], MAYA).records[0].llm_call_id == call_id

    (call,) = extracting.llm_calls(Scope("maya"), [call_id, "no-such-call", call_id])

    assert (call.id, call.purpose, call.model, call.ok, call.attempts) == (call_id, "extraction", "fake-model", True, 1)
    assert (call.prompt_tokens, call.cached_tokens, call.completion_tokens) == (1000, 400, 120)
    assert call.cost == {"USD": dollars(600, 400, 120)}
    assert call.time.tzinfo is not None and call.time.utcoffset() == timedelta(0)
    assert abs((call.time - datetime.now(UTC)).total_seconds()) < 60
    # The user's calls, whatever session or project the browser looks at.
    assert extracting.llm_calls(Scope("maya", session_id="elsewhere", project="p"), [call_id]) == [call]


def test_a_summary_names_its_llm_call(extracting: Memory, llm_server: FakeLLMServer) -> None:
    extracting.add([said("t1", "The figs ripened in August.", "2026-08-20T08:00:00Z")], MAYA)
    llm_server.script({"summary": "Maya's figs ripened in August."})

    (summary,) = extracting.summarize(MAYA, window="all").summaries
    record = extracting.get([summary.id], MAYA).records[0]

    assert record.llm_call_id is not None
    (call,) = extracting.llm_calls(MAYA, [record.llm_call_id])
    assert call.purpose == "summary"


def test_llm_calls_never_reveal_another_users_calls_and_keep_the_order_asked(extracting: Memory) -> None:
    ben = ledger_call(Scope("ben"), model="mystery")
    first, second = ledger_call(MAYA), ledger_call(Scope("maya", project="p"))
    for call in (ben, first, second):
        extracting.ledger.llm_called(call)

    assert extracting.llm_calls(Scope("maya"), [ben.call_id]) == []
    assert [c.id for c in extracting.llm_calls(Scope("maya"), [second.call_id, ben.call_id, first.call_id])] == [
        second.call_id,
        first.call_id,
    ]
    (theirs,) = extracting.llm_calls(Scope("ben"), [ben.call_id, first.call_id])
    assert (theirs.id, theirs.purpose, theirs.attempts, theirs.cost) == (ben.call_id, "update", 2, {})  # unpriced
    assert theirs.time == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert extracting.llm_calls(Scope("maya"), []) == []
    with pytest.raises(InvalidInput) as refused:
        extracting.llm_calls(Scope("maya"), [f"c{i}" for i in range(1001)])
    assert refused.value.field == "ids"


# -- activity --------------------------------------------------------------------------------


def test_activity_counts_each_kind_per_day_and_week_a_boundary_record_once(memory: Memory) -> None:
    memory.add(
        [
            said("fri", "Turned the compost.", "2026-11-27T12:00:00Z"),
            said("sat", "Late watering.", "2026-11-28T23:59:59.999Z"),
            said("sun", "Midnight frost check.", "2026-11-29T00:00:00Z"),
            said("mon0", "Monday starts with pruning.", "2026-11-30T00:00:00Z"),
            said("mon", "Planted garlic.", "2026-11-30T09:00:00Z"),
        ],
        MAYA,
    )

    days = memory.activity(MAYA, "day", 3)
    weeks = memory.activity(MAYA, "week", 2)

    assert days.bucket == "day"
    assert [b.label for b in days.buckets] == ["2026-11-28", "2026-11-29", "2026-11-30"]
    assert [b.start for b in days.buckets] == [datetime(2026, 11, d, tzinfo=UTC) for d in (28, 29, 30)]
    assert [b.counts for b in days.buckets] == [
        {"turn": 1, "fact": 0, "summary": 0},
        {"turn": 1, "fact": 0, "summary": 0},
        {"turn": 2, "fact": 0, "summary": 0},
    ]
    assert days.total == 4  # Friday is before the first bucket
    assert [(b.label, b.start, b.counts["turn"]) for b in weeks.buckets] == [
        ("2026-W48", datetime(2026, 11, 23, tzinfo=UTC), 3),
        ("2026-W49", datetime(2026, 11, 30, tzinfo=UTC), 2),
    ]
    assert weeks.total == 5 == memory.count(MAYA)
    assert [b.label for b in memory.activity(MAYA).buckets][-3:] == ["2026-W47", "2026-W48", "2026-W49"]
    assert len(memory.activity(MAYA).buckets) == 12
    quiet_days = memory.activity(MAYA, "day", 10).buckets
    assert (quiet_days[0].label, quiet_days[0].counts) == ("2026-11-21", {"turn": 0, "fact": 0, "summary": 0})


def test_activity_reads_the_scopes_tiers_and_kinds_and_never_another_user(memory: Memory) -> None:
    memory.add([said("g1", "The allotment opens at eight.", "2026-11-02T08:00:00Z")], Scope("maya"))
    memory.add([said("p1", "Project fig: order the netting.", "2026-11-03T08:00:00Z")], Scope("maya", project="p"))
    memory.add([said("b1", "Ben's note about his roses.", "2026-11-04T08:00:00Z")], Scope("ben"))
    memory.summarize(Scope("maya", project="p"), window="all")  # extractive: no LLM

    for scope, (turns, summaries) in {
        Scope("maya"): (2, 1),
        Scope("maya", project="p"): (2, 1),
        Scope("maya", project=GLOBAL): (1, 0),
    }.items():
        activity = memory.activity(scope, "week", 4)
        assert sum(b.counts["turn"] for b in activity.buckets) == turns
        assert sum(b.counts["summary"] for b in activity.buckets) == summaries
        assert activity.total == turns + summaries == memory.count(scope)
    assert memory.activity(Scope("maya"), "week", 1).buckets[0].label == "2026-W45"  # not Ben's week
    assert memory.activity(Scope("nobody")).model_dump() == {"bucket": "week", "buckets": [], "total": 0}


def test_activity_leaves_expired_records_out(memory: Memory, clock: Clock) -> None:
    memory.add([said("old", "Sowed broad beans.", "2026-11-02T08:00:00Z")], MAYA)
    memory.add([said("brief", "The gate code is 4471 this week.", "2026-11-20T08:00:00Z")], MAYA, ttl=HOUR)

    before = memory.activity(MAYA, "day", 30)
    clock.at += timedelta(seconds=2 * HOUR)
    after = memory.activity(MAYA, "day", 30)

    assert (before.total, before.buckets[-1].label) == (2, "2026-11-20")
    assert (after.total, after.buckets[-1].label) == (1, "2026-11-02")  # the newest live record anchors it


@pytest.mark.parametrize("buckets", [0, -1, MAX_ACTIVITY_BUCKETS + 1])
def test_activity_refuses_a_bucket_count_out_of_range(memory: Memory, buckets: int) -> None:
    with pytest.raises(InvalidInput) as refused:
        memory.activity(MAYA, "day", buckets)
    assert refused.value.field == "buckets"
    assert "1 to 366" in str(refused.value)


def test_activity_refuses_an_unknown_bucket(memory: Memory) -> None:
    with pytest.raises(InvalidInput) as refused:
        memory.activity(MAYA, "month", 3)  # type: ignore[arg-type]
    assert refused.value.field == "bucket"


# -- export pages ------------------------------------------------------------------------------


@pytest.fixture
def filled(quiet: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer) -> Iterator[Memory]:
    """Two users' turns, facts, ledger entries and a progress point (see test_transfer.fill)."""
    configured = quiet.model_copy(
        update={"llm": llm_server.settings(), "pipeline": PipelineSettings(buffer_tokens=100_000)}
    )
    service = open_with_clock(configured, embedder, Clock())
    fill(service, llm_server)
    yield service
    service.close()


def pages(memory: Memory, scope: Scope, limit: int, after: str | None = None) -> list[ExportPage]:
    found = [memory.export_page(scope, after, limit)]
    while found[-1].next is not None:
        found.append(memory.export_page(scope, found[-1].next, limit))
    return found


def joined(found: list[ExportPage]) -> str:
    head = [found[0].header] if found[0].header is not None else []
    return "".join(f"{line}\n" for line in [*head, *(line for page in found for line in page.lines)])


def without_time(export: str) -> list[object]:
    """The export's lines as JSON, the header's exported_at left out."""
    header, *points = export.splitlines()
    return [{k: v for k, v in json.loads(header).items() if k != "exported_at"}, *points]


def test_export_pages_together_are_the_export(filled: Memory) -> None:
    alice = Scope("alice")
    whole = exported(filled, alice)
    points = len(whole.splitlines()) - 1
    assert points >= 5  # turns, facts, the ledger entry, the progress point

    for limit in (1, 2, points - 1, points, 500):
        found = pages(filled, alice, limit)
        assert found[0].header is not None and all(page.header is None for page in found[1:])
        assert all(len(page.lines) == limit for page in found[:-1]) and 0 < len(found[-1].lines) <= limit
        assert found[-1].next is None
        assert without_time(joined(found)) == without_time(whole)
    assert all(json.loads(line)["payload"]["user_id"] == "alice" for line in whole.splitlines()[1:])


def test_an_export_page_resumes_where_the_previous_one_ended(filled: Memory) -> None:
    alice = Scope("alice")
    first, second, *rest = pages(filled, alice, 2)

    again = pages(filled, alice, 2, after=first.next)

    assert [p.lines for p in again] == [second.lines, *(p.lines for p in rest)]
    assert again[0].header is None
    assert first.next == json.loads(first.lines[-1])["id"]
    assert filled.export_page(alice, str(uuid.UUID(int=2**128 - 1))).model_dump() == {
        "header": None,
        "lines": [],
        "next": None,
    }


def test_export_pages_import_back(filled: Memory, empty_memory: Memory) -> None:
    alice = Scope("alice")

    result = empty_memory.import_records(io.StringIO(joined(pages(filled, alice, 3))))

    restored = {i: payload for i, (payload, _) in snapshot(empty_memory.store).items()}
    original = {i: payload for i, (payload, _) in snapshot(filled.store).items() if payload["user_id"] == "alice"}
    assert restored == original
    assert result.points == len(original)


@pytest.fixture
def empty_memory(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    service = open_memory(Settings(store=StoreSettings(data_dir=tmp_path / "restored")), embedder)
    yield service
    service.close()


def test_an_export_page_refuses_a_bad_cursor_or_limit(memory: Memory) -> None:
    with pytest.raises(InvalidInput) as refused:
        memory.export_page(MAYA, after="not-an-id")
    assert refused.value.field == "after"
    for limit in (0, 5_001):
        with pytest.raises(InvalidInput) as refused:
            memory.export_page(MAYA, limit=limit)
        assert refused.value.field == "limit"


# -- the choices of a filter, and stats kept between writes -------------------------------------------


def test_known_lists_a_users_speakers_and_sessions_most_frequent_first(memory: Memory) -> None:
    memory.add(
        [
            said("k1", "Morning, Caroline here.", "2026-11-01T09:00:00Z", "Caroline"),
            said("k2", "Melanie: the kids painted today.", "2026-11-01T09:01:00Z", "Melanie"),
            said("k3", "Caroline again: I signed up for the run.", "2026-11-01T09:02:00Z", "Caroline"),
        ],
        MAYA,
    )
    memory.add([said("k4", "A note in another session.", "2026-11-02T09:00:00Z")], Scope("maya", session_id="notes"))
    memory.add([said("k5", "Bob's own words.", "2026-11-02T09:00:00Z", "Bob")], Scope("bob", session_id="vault"))

    assert memory.known(Scope("maya"), "speaker") == ["Caroline", "Melanie"]
    assert memory.known(Scope("maya"), "session_id") == ["garden", "notes"]
    assert memory.known(Scope("maya"), "session_id", limit=1) == ["garden"]
    assert "vault" not in memory.known(Scope("maya"), "session_id")
    with pytest.raises(InvalidInput, match="limit"):
        memory.known(Scope("maya"), "speaker", limit=0)


def test_stats_are_counted_again_after_a_write_a_delete_or_an_expiry(memory: Memory, clock: Clock) -> None:
    first = memory.add([said("s1", "I keep bees.", "2026-11-01T09:00:00Z")], MAYA)
    assert turns_in(memory.stats(MAYA)) == 1
    assert memory.stats(MAYA) == memory.stats(MAYA)  # nothing changed: the same figures

    memory.add([said("s2", "Just for today.", "2026-11-01T09:05:00Z")], MAYA, ttl=HOUR)
    assert turns_in(memory.stats(MAYA)) == 2  # a write is seen at once

    clock.at += timedelta(hours=2)
    expired = memory.stats(MAYA)
    assert (turns_in(expired), expired.expired_pending) == (1, 1)  # an expiry is seen with no write

    memory.delete(first.ids, MAYA)
    assert turns_in(memory.stats(MAYA)) == 0


def turns_in(stats: object) -> int:
    return next(r.active for r in stats.records if r.kind == "turn")  # type: ignore[attr-defined]
