"""The Memory service on the embedded store with the real MiniLM model."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lightmem_mcp.api import Message, SearchFilters
from lightmem_mcp.config import LimitSettings, Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope
from tests.conftest import open_memory

ALICE = Scope("alice")
BOB = Scope("bob")

CONVERSATION = [
    Message(
        role="user", content="I adopted a grey cat named Luna last week.", id="m1", timestamp="2023/05/20 (Sat) 00:44"
    ),
    Message(role="assistant", content="Congratulations! How is Luna settling in?", id="m2"),
    Message(role="user", content="I work night shifts as a nurse at Boston General.", id="m3"),
    Message(role="user", content="My order number for the new sofa is ZX-4471.", id="m4"),
    Message(role="user", content="We are planning a hiking trip to the Dolomites in July.", id="m5"),
]


def texts(memory: Memory, query: str, scope: Scope = ALICE, **kwargs: object) -> list[str]:
    return [hit.text for hit in memory.search(query, scope, **kwargs).hits]  # type: ignore[arg-type]


def test_added_messages_are_searchable_at_once_with_their_source_ids(memory: Memory) -> None:
    result = memory.add(CONVERSATION, ALICE)

    assert result.source_ids == ["m1", "m2", "m3", "m4", "m5"]
    hits = memory.search("What pet do I have?", ALICE, limit=3).hits
    assert hits[0].source_ids == ["m1"]
    assert hits[0].kind == "turn"
    assert hits[0].role == "user"
    assert hits[0].event_time == datetime(2023, 5, 20, 0, 44, tzinfo=UTC)


def test_generated_message_ids_are_returned_and_cited(memory: Memory) -> None:
    result = memory.add([Message(role="user", content="I am allergic to peanuts.")], ALICE)

    (generated,) = result.source_ids
    assert generated
    assert memory.search("food allergy", ALICE).hits[0].source_ids == [generated]


def test_a_rare_identifier_is_found_by_its_exact_token(memory: Memory) -> None:
    memory.add(CONVERSATION, ALICE)

    assert texts(memory, "ZX-4471", limit=1) == ["My order number for the new sofa is ZX-4471."]


def test_the_original_words_are_kept(memory: Memory) -> None:
    content = "  Line one.\n\tLine two, with   odd spacing.  "
    (record_id,) = memory.add([Message(role="user", content=content)], ALICE).ids

    (record,) = memory.get([record_id], ALICE).records
    assert record.original_text == content
    assert record.status == "active"


def test_search_never_crosses_users(memory: Memory) -> None:
    memory.add(CONVERSATION, ALICE)
    memory.add([Message(role="user", content="My dog Rex loves the beach.")], BOB)

    assert texts(memory, "cat named Luna", BOB) == ["My dog Rex loves the beach."]
    assert "My dog Rex loves the beach." not in texts(memory, "dog at the beach", ALICE)


def test_other_users_cannot_read_or_delete_by_id(memory: Memory) -> None:
    ids = memory.add(CONVERSATION, ALICE).ids

    assert memory.get(ids[:2], BOB).missing == ids[:2]
    assert memory.delete(ids[:2], BOB).deleted == []
    assert len(memory.get(ids[:2], ALICE).records) == 2


def test_agent_and_session_narrow_the_scope(memory: Memory) -> None:
    memory.add([Message(role="user", content="Deploy the billing service on Friday.")], Scope("alice", "coder", "s1"))
    memory.add([Message(role="user", content="Book a table for Friday dinner.")], Scope("alice", "planner", "s2"))

    assert texts(memory, "Friday", Scope("alice", agent_id="coder")) == ["Deploy the billing service on Friday."]
    assert texts(memory, "Friday", Scope("alice", session_id="s2")) == ["Book a table for Friday dinner."]
    assert len(texts(memory, "Friday", ALICE)) == 2


def test_filters_narrow_by_role_speaker_kind_and_time(memory: Memory) -> None:
    memory.add(
        [
            Message(
                role="user", content="Dinner at Nonna's on Saturday.", name="Ann", timestamp="2024-03-01T19:00:00Z"
            ),
            Message(
                role="user", content="Dinner with the team on Monday.", name="Ben", timestamp="2024-04-01T19:00:00Z"
            ),
            Message(role="assistant", content="Dinner reservations are confirmed.", timestamp="2024-05-01T19:00:00Z"),
        ],
        ALICE,
    )

    assert texts(memory, "dinner", filters=SearchFilters(roles=["assistant"])) == ["Dinner reservations are confirmed."]
    assert texts(memory, "dinner", filters=SearchFilters(speakers=["Ben"])) == ["Dinner with the team on Monday."]
    assert texts(memory, "dinner", filters=SearchFilters(since="2024-03-15", until="2024-04-15")) == [
        "Dinner with the team on Monday."
    ]
    assert texts(memory, "dinner", filters=SearchFilters(kinds=["fact", "summary"])) == []


def test_resending_a_message_id_replaces_it(memory: Memory) -> None:
    first = memory.add([Message(role="user", content="I live in Lyon.", id="home")], ALICE)
    second = memory.add([Message(role="user", content="I live in Porto.", id="home")], ALICE)

    assert first.ids == second.ids
    assert memory.count(ALICE) == 1
    assert texts(memory, "where do I live") == ["I live in Porto."]


def test_list_pages_newest_first_and_visits_every_record_once(memory: Memory) -> None:
    # Eight messages share one timestamp: paging must neither repeat nor skip ties.
    same_time = [Message(role="user", content=f"note {i}", timestamp="2024-01-01T00:00:00Z") for i in range(8)]
    memory.add(same_time, ALICE)
    memory.add([Message(role="user", content="latest", timestamp="2024-06-01T00:00:00Z")], ALICE)
    memory.add([Message(role="user", content="oldest", timestamp="2023-01-01T00:00:00Z")], ALICE)

    seen, cursor = [], None
    while True:
        page = memory.list(ALICE, limit=3, cursor=cursor)
        seen += [r.text for r in page.records]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen[0] == "latest"
    assert seen[-1] == "oldest"
    assert sorted(seen[1:-1]) == [f"note {i}" for i in range(8)]


def test_delete_removes_only_the_given_records(memory: Memory) -> None:
    ids = memory.add(CONVERSATION, ALICE).ids

    result = memory.delete([ids[0], ids[0]], ALICE)

    assert result.deleted == [ids[0]]
    assert memory.count(ALICE) == 4
    assert "I adopted a grey cat named Luna last week." not in texts(memory, "cat")


def test_forget_needs_confirmation_then_clears_only_that_scope(memory: Memory) -> None:
    memory.add(CONVERSATION, ALICE)
    memory.add([Message(role="user", content="Bob's note.")], BOB)

    with pytest.raises(InvalidInput, match="confirm"):
        memory.forget(ALICE, confirm=False)
    assert memory.count(ALICE) == 5

    assert memory.forget(ALICE, confirm=True) == 5
    assert memory.count(ALICE) == 0
    assert memory.count(BOB) == 1


def test_memories_survive_a_restart(settings: Settings, embedder: SentenceTransformerEmbedder) -> None:
    first = open_memory(settings, embedder)
    first.add(CONVERSATION, ALICE)
    first.close()

    second = open_memory(settings, embedder)
    try:
        assert second.count(ALICE) == 5
        assert second.search("nurse", ALICE, limit=1).hits[0].source_ids == ["m3"]
    finally:
        second.close()


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([Message(role="user", content="ok"), Message(role="user", content="   ")], "messages[1].content"),
        ([Message(role="user", content="ok", timestamp="last tuesday")], "messages[0].timestamp"),
        ([Message(role="user", content="a", id="x"), Message(role="user", content="b", id="x")], "messages[1].id"),
        ([Message(role="user", content="x" * 101)], "messages[0].content"),
        ([Message(role="user", content="x")] * 6, "messages"),
        ([], "messages"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    tmp_path: object, embedder: SentenceTransformerEmbedder, settings: Settings, messages: list[Message], field: str
) -> None:
    strict = settings.model_copy(update={"limits": LimitSettings(max_message_chars=100, max_messages_per_call=5)})
    memory = open_memory(strict, embedder)
    try:
        with pytest.raises(InvalidInput) as raised:
            memory.add(messages, ALICE)
        assert raised.value.field == field
        assert memory.count(ALICE) == 0
    finally:
        memory.close()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: m.search("x", ALICE, limit=0), "limit"),
        (lambda m: m.search("x", ALICE, limit=101), "limit"),
        (lambda m: m.search("  ", ALICE), "query"),
        (lambda m: m.search("x", ALICE, filters=SearchFilters(since="soon")), "filters.since"),
        (
            lambda m: m.search("x", ALICE, filters=SearchFilters(since="2024-02-01", until="2024-01-01")),
            "filters.since",
        ),
        (lambda m: m.search("x", Scope("")), "user_id"),
        (lambda m: m.get(["not-an-id"], ALICE), "ids[0]"),
        (lambda m: m.delete([], ALICE), "ids"),
        (lambda m: m.list(ALICE, cursor="garbage"), "cursor"),
    ],
)
def test_bad_arguments_name_the_field(memory: Memory, call: object, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        call(memory)  # type: ignore[operator]
    assert raised.value.field == field
