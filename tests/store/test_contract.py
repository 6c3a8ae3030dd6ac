"""The behaviour every vector store must share: the embedded Edge shard and a Qdrant server alike."""

from __future__ import annotations

import math
import random
import socket
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from qdrant_client import QdrantClient

from lightmem_mcp.config import SearchMode
from lightmem_mcp.errors import BackendUnavailable, SchemaMismatch
from lightmem_mcp.fusion import Fusion, fuse
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.records import (
    GLOBAL,
    FoundPoint,
    MetadataValue,
    RecordFilter,
    Scope,
    StoredPoint,
    caller_fields,
    metadata_pairs,
)
from lightmem_mcp.store import VectorStore
from lightmem_mcp.store.edge import EdgeStore
from lightmem_mcp.store.qdrant_server import QdrantServerStore
from lightmem_mcp.store.schema import SCHEMA_VERSION
from tests.store.conftest import DIMENSION, LAYOUT, StoreFactory

LEXICAL = LexicalEncoder()
ALICE = RecordFilter("alice")

LUNA = "I adopted a grey cat named Luna last week."
NURSE = "I work night shifts as a nurse at Boston General."
SOFA = "My order number for the new sofa is ZX-4471."
HIKE = "We are planning a hiking trip to the Dolomites in July."


def unit(seed: str) -> list[float]:
    """A reproducible random unit vector."""
    rng = random.Random(seed)
    vector = [rng.gauss(0.0, 1.0) for _ in range(DIMENSION)]
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def record_id(name: str, user_id: str = "alice") -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{user_id}/{name}"))


def memory(
    name: str, text: str = "", *, user_id: str = "alice", dense: list[float] | None = None, **fields: Any
) -> StoredPoint:
    """A point shaped like the service's records; `name` is the message id it cites in source_ids."""
    text = text or f"note {name}"
    payload: dict[str, Any] = {
        "user_id": user_id,
        "agent_id": None,
        "session_id": None,
        "kind": "turn",
        "status": "active",
        "text": text,
        "role": "user",
        "speaker": None,
        "source_ids": [name],
        "topic_id": None,
        "event_ts": 1_700_000_000.0,
        "created_ts": 1_700_000_000.0,
        "updated_ts": 1_700_000_000.0,
    } | fields
    payload["event_time"] = datetime.fromtimestamp(payload["event_ts"], UTC).isoformat()
    sparse = LEXICAL.encode_document(text)
    payload["terms"] = sorted(set(sparse.indices))
    return StoredPoint(record_id(name, user_id), dense or unit(text), sparse, payload)


def names(points: list[FoundPoint]) -> list[str]:
    """Each point's name: the message id it cites."""
    return [cast(list[str], p.payload["source_ids"])[0] for p in points]


def event_ts(point: FoundPoint) -> float:
    return cast(float, point.payload["event_ts"])


def search(
    store: VectorStore,
    text: str,
    where: RecordFilter = ALICE,
    mode: SearchMode = "hybrid",
    dense: list[float] | None = None,
    limit: int = 10,
) -> list[FoundPoint]:
    """Dense, lexical (IDF from the user's own records) or both fused, as the service searches."""
    found_dense = store.nearest(dense or unit(text), where, limit) if mode != "sparse" else []
    found_sparse: list[FoundPoint] = []
    if mode != "dense":
        terms = LEXICAL.query_terms(text)
        total, frequencies = store.term_stats(where.user_id, terms)
        found_sparse = store.nearest(LEXICAL.weigh(terms, total, frequencies), where, limit)
    if mode != "hybrid":
        return found_dense or found_sparse
    by_id = {p.id: p for p in [*found_sparse, *found_dense]}
    return [replace(by_id[i], score=score) for i, score in fuse(found_dense, found_sparse, Fusion())[:limit]]


def conversation() -> list[StoredPoint]:
    return [memory(f"m{i}", text) for i, text in enumerate((LUNA, NURSE, SOFA, HIKE))]


# -- upsert and query ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_an_upserted_point_is_found_at_once(store: VectorStore, mode: SearchMode) -> None:
    store.upsert(conversation())

    found = search(store, "grey cat Luna", mode=mode, dense=unit(LUNA))

    assert names(found)[0] == "m0"
    assert found[0].id == record_id("m0")
    assert found[0].payload["text"] == LUNA
    assert found[0].payload["source_ids"] == ["m0"]


def test_hybrid_ranks_a_point_best_on_both_arms_first(store: VectorStore) -> None:
    query = unit("query")
    near = [x + 0.3 * y for x, y in zip(query, unit("noise"), strict=True)]
    store.upsert(
        [
            memory("vector-only", HIKE, dense=near),
            memory("words-only", "Luna is the name of a snack bar", dense=[-x for x in query]),
            memory("both", LUNA, dense=query),
        ]
    )

    found = search(store, "grey cat named Luna", dense=query)

    assert names(found)[0] == "both"
    assert set(names(found)) == {"both", "vector-only", "words-only"}


def test_an_upsert_with_the_same_id_replaces_the_point(store: VectorStore) -> None:
    store.upsert(conversation())
    store.upsert([memory("m0", "I adopted a dog named Rex.", status="superseded")])

    assert store.count(ALICE) == 4
    assert search(store, "Rex", mode="sparse")[0].payload["status"] == "superseded"
    assert search(store, "Luna", mode="sparse") == []


def test_a_query_of_only_stop_words_falls_back_to_dense_in_hybrid_and_finds_nothing_lexically(
    store: VectorStore,
) -> None:
    store.upsert(conversation())
    assert LEXICAL.query_terms("what is it?") == []

    hybrid = search(store, "what is it?", mode="hybrid", dense=unit(SOFA))

    assert names(hybrid) == names(search(store, "what is it?", mode="dense", dense=unit(SOFA)))
    assert names(hybrid)[0] == "m2"
    assert search(store, "what is it?", mode="sparse") == []


def test_term_statistics_are_the_users_own_and_follow_their_writes(store: VectorStore) -> None:
    store.upsert(conversation())
    [cat] = LEXICAL.query_terms("cat")

    assert store.term_stats("alice", [cat]) == (4, [1])
    store.upsert([memory("m9", "Another cat, a tabby.")])  # counted at once, though just read
    store.upsert([memory("b1", "cat cat cat", user_id="bob"), memory("b2", "a cat", user_id="bob")])
    assert store.term_stats("alice", [cat]) == (5, [2])
    store.delete(RecordFilter("alice", ids=(record_id("m0"),)))
    assert store.term_stats("alice", [cat]) == (4, [1])
    assert store.term_stats("bob", [cat]) == (2, [2])
    assert store.term_stats("carol", [cat]) == (0, [0])


# -- filters ---------------------------------------------------------------------------


def filter_set(user_id: str) -> list[StoredPoint]:
    """Five records varying every filtered field; the same for each user, vectors and text included."""
    rows = [
        ("a1", "a", "s1", "turn", "user", "Ann", "active", 100.0),
        ("a2", "a", "s2", "fact", None, None, "superseded", 200.0),
        ("b1", "b", "s1", "turn", "assistant", "Bo", "active", 300.0),
        ("b2", "b", "s3", "turn", "user", "Bo", "deleted", 400.0),
        ("c1", None, None, "summary", None, None, "active", 500.0),
    ]
    return [
        memory(
            name,
            f"the record called {name}",
            user_id=user_id,
            agent_id=agent,
            session_id=session,
            kind=kind,
            role=role,
            speaker=speaker,
            status=status,
            event_ts=ts,
        )
        for name, agent, session, kind, role, speaker, status, ts in rows
    ]


@pytest.fixture
def filtered(store: VectorStore) -> VectorStore:
    store.upsert(filter_set("alice") + filter_set("bob"))
    return store


@pytest.fixture(scope="module")
def filtered_read_only(shared_store: VectorStore) -> VectorStore:
    shared_store.upsert(filter_set("alice") + filter_set("bob"))
    return shared_store


FILTER_CASES = [
    pytest.param(RecordFilter("alice"), ["a1", "a2", "b1", "b2", "c1"], id="user only"),
    pytest.param(RecordFilter("carol"), [], id="unknown user"),
    pytest.param(RecordFilter("alice", agent_id="a"), ["a1", "a2"], id="agent_id"),
    pytest.param(RecordFilter("alice", session_id="s1"), ["a1", "b1"], id="session_id"),
    pytest.param(RecordFilter("alice", kinds=("turn",)), ["a1", "b1", "b2"], id="one kind"),
    pytest.param(RecordFilter("alice", kinds=("fact", "summary")), ["a2", "c1"], id="two kinds"),
    pytest.param(RecordFilter("alice", roles=("user",)), ["a1", "b2"], id="one role"),
    pytest.param(RecordFilter("alice", roles=("assistant", "system")), ["b1"], id="two roles"),
    pytest.param(RecordFilter("alice", speakers=("Bo",)), ["b1", "b2"], id="speakers"),
    pytest.param(RecordFilter("alice", statuses=("active",)), ["a1", "b1", "c1"], id="statuses"),
    pytest.param(RecordFilter("alice", since_ts=200.0), ["a2", "b1", "b2", "c1"], id="since inclusive"),
    pytest.param(RecordFilter("alice", until_ts=300.0), ["a1", "a2", "b1"], id="until inclusive"),
    pytest.param(RecordFilter("alice", since_ts=200.0, until_ts=300.0), ["a2", "b1"], id="since and until"),
    pytest.param(RecordFilter("alice", ids=(record_id("a1"), record_id("b2"))), ["a1", "b2"], id="ids"),
    pytest.param(
        RecordFilter("alice", ids=(record_id("a1"), record_id("a1", "bob"))), ["a1"], id="ids of another user"
    ),
    pytest.param(
        RecordFilter("alice", agent_id="b", kinds=("turn",), roles=("user",)), ["b2"], id="agent and kind and role"
    ),
    pytest.param(
        RecordFilter("alice", session_id="s1", statuses=("active",), speakers=("Ann",)),
        ["a1"],
        id="session and status and speaker",
    ),
    pytest.param(
        RecordFilter("alice", ids=(record_id("a1"), record_id("b1")), since_ts=200.0), ["b1"], id="ids and since"
    ),
    pytest.param(RecordFilter("alice", agent_id="a", speakers=("Bo",)), [], id="nothing matches both"),
]


@pytest.mark.parametrize(("where", "expected"), FILTER_CASES)
def test_a_filter_narrows_query_scroll_and_count_alike(
    filtered_read_only: VectorStore, where: RecordFilter, expected: list[str]
) -> None:
    store = filtered_read_only
    assert sorted(names(search(store, "the record", where, mode="dense", limit=100))) == expected
    assert sorted(names(search(store, "the record", where, mode="sparse", limit=100))) == expected
    assert sorted(names(search(store, "the record", where, mode="hybrid", limit=100))) == expected
    assert sorted(names(store.scroll(where, 100))) == expected
    assert store.count(where) == len(expected)


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_a_user_never_sees_another_users_identical_memories(filtered_read_only: VectorStore, mode: SearchMode) -> None:
    store = filtered_read_only
    found = search(store, "the record called a1", mode=mode, limit=100)

    assert len(found) == 5
    assert {p.payload["user_id"] for p in found} == {"alice"}
    assert {p.payload["user_id"] for p in store.scroll(ALICE, 100)} == {"alice"}


# -- scroll ----------------------------------------------------------------------------


@pytest.fixture
def timeline(store: VectorStore) -> VectorStore:
    store.upsert([memory(f"t{ts}", event_ts=float(ts)) for ts in (300, 100, 500, 200, 400)])
    return store


def test_scroll_returns_the_newest_events_first_up_to_the_limit(timeline: VectorStore) -> None:
    assert names(timeline.scroll(ALICE, 3)) == ["t500", "t400", "t300"]


def test_scroll_starts_at_before_ts_inclusive_and_leaves_out_skipped_ids(timeline: VectorStore) -> None:
    assert names(timeline.scroll(ALICE, 10, before_ts=300.0)) == ["t300", "t200", "t100"]
    assert names(timeline.scroll(ALICE, 10, before_ts=300.0, skip_ids=[record_id("t300")])) == ["t200", "t100"]


def test_paging_by_time_and_seen_ids_visits_every_record_once_when_times_are_shared(store: VectorStore) -> None:
    everything = [f"m{i:02}" for i in range(20)]
    store.upsert([memory(name, event_ts=100.0 + i // 7) for i, name in enumerate(everything)])

    visited: list[FoundPoint] = []
    before_ts: float | None = None
    seen_at_ts: list[str] = []
    for _ in range(len(everything)):
        page = store.scroll(ALICE, 3, before_ts, seen_at_ts)
        if not page:
            break
        visited += page
        last_ts = event_ts(page[-1])
        tied = [p.id for p in page if event_ts(p) == last_ts]
        seen_at_ts = seen_at_ts + tied if last_ts == before_ts else tied
        before_ts = last_ts

    assert sorted(names(visited)) == everything
    times = [event_ts(p) for p in visited]
    assert times == sorted(times, reverse=True)


# -- count and delete ------------------------------------------------------------------


def test_deleting_ids_in_a_scope_removes_only_those_and_never_another_users(filtered: VectorStore) -> None:
    filtered.delete(RecordFilter("alice", ids=(record_id("a1"), record_id("b1", "bob"))))

    assert sorted(names(filtered.scroll(ALICE, 100))) == ["a2", "b1", "b2", "c1"]
    assert filtered.count(RecordFilter("bob")) == 5


def test_deleting_a_scope_removes_that_scope_only(filtered: VectorStore) -> None:
    filtered.delete(RecordFilter("alice", agent_id="a"))

    assert sorted(names(filtered.scroll(ALICE, 100))) == ["b1", "b2", "c1"]
    assert filtered.count(RecordFilter("bob", agent_id="a")) == 2

    filtered.delete(ALICE)

    assert filtered.count(ALICE) == 0
    assert filtered.count(RecordFilter("bob")) == 5


# -- persistence, layout and availability ----------------------------------------------


def test_data_and_filters_survive_a_reopen(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.upsert(filter_set("alice") + filter_set("bob") + conversation())
    store_factory.close(store)

    reopened = store_factory()

    assert reopened.count(ALICE) == 9
    assert reopened.count(RecordFilter("bob")) == 5
    assert names(search(reopened, "grey cat Luna", dense=unit(LUNA)))[0] == "m0"
    assert sorted(names(reopened.scroll(RecordFilter("alice", agent_id="b", kinds=("turn",)), 10))) == ["b1", "b2"]
    assert names(reopened.scroll(RecordFilter("alice", until_ts=300.0), 10)) == ["b1", "a2", "a1"]


def test_reopening_with_another_dimension_is_refused_with_the_fix(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.upsert(conversation())
    store_factory.close(store)

    with pytest.raises(SchemaMismatch) as refused:
        store_factory(replace(LAYOUT, dimension=16))

    message = str(refused.value)
    assert "8-d" in message
    assert "16-d" in message
    assert "LIGHTMEM_EMBEDDING_MODEL" in message
    assert "LIGHTMEM_QDRANT_PATH" in message
    assert "LIGHTMEM_COLLECTION" in message
    assert store_factory().count(ALICE) == 4


def test_a_store_written_by_a_newer_schema_is_refused(store_factory: StoreFactory) -> None:
    store_factory.close(store_factory(replace(LAYOUT, schema_version=SCHEMA_VERSION + 1)))

    with pytest.raises(SchemaMismatch, match="upgrade lightmem-mcp"):
        store_factory()


def test_the_embedded_store_refuses_a_second_concurrent_open(tmp_path: Path) -> None:
    first = EdgeStore(tmp_path, LAYOUT)

    with pytest.raises(BackendUnavailable) as refused:
        EdgeStore(tmp_path, LAYOUT)

    assert str(tmp_path) in str(refused.value)
    first.close()
    EdgeStore(tmp_path, LAYOUT).close()


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
def test_an_unreachable_qdrant_server_is_reported_as_unavailable(prefer_grpc: bool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    client = QdrantClient(
        url=f"http://127.0.0.1:{port}", grpc_port=port, prefer_grpc=prefer_grpc, check_compatibility=False
    )

    with pytest.raises(BackendUnavailable, match="cannot reach the Qdrant server for collection 'memories'"):
        QdrantServerStore(client, "memories", LAYOUT)
    client.close()


# -- the buffer's needs: exact scopes, stages, payload updates, vectors back -----------------


def test_exact_scope_tells_unset_agent_and_session_apart_from_any(store: VectorStore) -> None:
    store.upsert(
        [
            memory("plain"),
            memory("agent", agent_id="coder"),
            memory("session", session_id="s1"),
        ]
    )

    exact = RecordFilter("alice", exact_scope=True)

    assert sorted(names(store.scroll(ALICE, 10))) == ["agent", "plain", "session"]
    assert names(store.scroll(exact, 10)) == ["plain"]
    assert names(store.scroll(replace(exact, agent_id="coder"), 10)) == ["agent"]


def test_set_payload_changes_only_the_matching_points_and_keeps_other_fields(store: VectorStore) -> None:
    store.upsert(
        [memory("a", stage="pending"), memory("b", stage="pending"), memory("b", user_id="bob", stage="pending")]
    )

    store.set_payload(replace(ALICE, ids=(record_id("a"),)), {"stage": "extracted", "topic_id": "t1"})

    assert names(store.scroll(replace(ALICE, stages=("pending",)), 10)) == ["b"]
    (done,) = store.scroll(replace(ALICE, stages=("extracted",)), 10)
    assert (done.payload["topic_id"], done.payload["text"]) == ("t1", "note a")
    assert names(store.scroll(RecordFilter("bob", stages=("pending",)), 10)) == ["b"]


def test_scroll_returns_dense_vectors_on_request(store: VectorStore) -> None:
    store.upsert([memory("a", dense=unit("a-vector"))])

    (without,) = store.scroll(ALICE, 1)
    (with_vector,) = store.scroll(ALICE, 1, with_vectors=True)

    assert without.dense is None
    assert with_vector.dense is not None
    assert max(abs(x - y) for x, y in zip(with_vector.dense, unit("a-vector"), strict=True)) < 1e-5


def test_facts_can_be_found_by_the_batch_turns_they_came_from(store: VectorStore) -> None:
    store.upsert(
        [
            memory("f1", kind="fact", batch_turn_ids=["t1", "t2"]),
            memory("f2", kind="fact", batch_turn_ids=["t3"]),
        ]
    )

    assert names(store.scroll(replace(ALICE, batch_turn_ids=("t2", "t9")), 10)) == ["f1"]


def test_vectorless_ledger_points_are_stored_and_counted_but_never_searched(store: VectorStore) -> None:
    ledger = StoredPoint(record_id("call"), None, None, {**memory("call").payload, "kind": "llm_call"})
    store.upsert([*conversation(), ledger])

    assert store.count(replace(ALICE, kinds=("llm_call",))) == 1
    assert "call" not in names(search(store, "note call"))


def test_pending_scopes_lists_each_scope_with_pending_turns_once(store: VectorStore) -> None:
    store.upsert(
        [
            memory("a1", stage="pending"),
            memory("a2", stage="pending"),
            memory("a3", stage="pending", session_id="s1"),
            memory("b1", user_id="bob", stage="pending", agent_id="coder"),
            memory("done", user_id="carol", stage="extracted"),
        ]
    )

    assert sorted(store.pending_scopes(100), key=str) == sorted(
        [Scope("alice"), Scope("alice", session_id="s1"), Scope("bob", "coder")], key=str
    )


def test_pending_scopes_tell_projects_apart(store: VectorStore) -> None:
    store.upsert(
        [
            memory("g", stage="pending"),
            memory("p", stage="pending", project="web"),
            memory("q", stage="pending", project="cli"),
        ]
    )

    assert sorted(store.pending_scopes(100), key=str) == sorted(
        [Scope("alice"), Scope("alice", project="web"), Scope("alice", project="cli")], key=str
    )


# -- projects: a project reads its own records and the global tier's, never another project's --------


def tiers() -> list[StoredPoint]:
    """Alice's records in the global tier (no project field, as stored before projects), in two
    projects, and Bob's in one of the same name."""
    return [
        memory("global"),
        memory("web1", project="web"),
        memory("web2", project="web", agent_id="coder"),
        memory("cli1", project="cli"),
        memory("bobweb", user_id="bob", project="web"),
    ]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        pytest.param(ALICE, ["cli1", "global", "web1", "web2"], id="no project: every tier"),
        pytest.param(replace(ALICE, project=GLOBAL), ["global"], id="global tier alone"),
        pytest.param(replace(ALICE, project="web"), ["global", "web1", "web2"], id="a project and the global tier"),
        pytest.param(replace(ALICE, project="web", agent_id="coder"), ["web2"], id="with other fields"),
        pytest.param(replace(ALICE, project="web", exact_project=True), ["web1", "web2"], id="a project alone"),
        pytest.param(replace(ALICE, project=GLOBAL, exact_project=True), ["global"], id="global alone, exact"),
        pytest.param(replace(ALICE, exact_project=True), ["cli1", "global", "web1", "web2"], id="no project, exact"),
        pytest.param(replace(ALICE, exact_scope=True), ["global"], id="exact scope: no project is global"),
        pytest.param(replace(ALICE, exact_scope=True, project="web"), ["web1"], id="exact scope in a project"),
        pytest.param(replace(ALICE, project="nowhere"), ["global"], id="an unknown project"),
    ],
)
def test_the_project_filter_follows_the_tier_rule(store: VectorStore, where: RecordFilter, expected: list[str]) -> None:
    store.upsert(tiers())

    assert sorted(names(store.scroll(where, 10))) == expected
    assert store.count(where) == len(expected)
    assert sorted(names(list(store.scan(where)))) == expected
    assert sorted(names(store.nearest(unit("note web1"), where, 10))) == expected


def test_a_delete_by_project_leaves_the_global_tier_and_other_projects(store: VectorStore) -> None:
    store.upsert(tiers())

    store.delete(replace(ALICE, project="web", exact_project=True))

    assert sorted(names(store.scroll(ALICE, 10))) == ["cli1", "global"]
    assert names(store.scroll(RecordFilter("bob"), 10)) == ["bobweb"]


# -- the caller's metadata and expiry --------------------------------------------------------


def tagged() -> list[StoredPoint]:
    """Records with metadata of every value type, one with look-alike strings, and one with none."""
    return [
        memory("red", **caller_fields({"color": "red", "n": 2, "urgent": True}, None)),
        memory("blue", **caller_fields({"color": "blue", "n": 2.5, "urgent": False}, None)),
        memory("strings", **caller_fields({"color": "Red", "n": "2", "urgent": "true"}, None)),
        memory("plain"),
        memory("bob-red", user_id="bob", **caller_fields({"color": "red"}, None)),
    ]


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param({"color": "red"}, ["red"], id="one pair, case kept, another user's left out"),
        pytest.param({"color": "red", "n": 2}, ["red"], id="two pairs"),
        pytest.param({"color": "red", "n": 3}, [], id="every pair must hold"),
        pytest.param({"n": 2.0}, ["red"], id="a whole float matches the integer"),
        pytest.param({"n": 2.5}, ["blue"], id="a float"),
        pytest.param({"urgent": True}, ["red"], id="a boolean matches no string"),
        pytest.param({"urgent": False}, ["blue"], id="false"),
        pytest.param({"urgent": "true"}, ["strings"], id="a string matches no boolean"),
        pytest.param({"n": "2"}, ["strings"], id="a string matches no number"),
        pytest.param({"shape": "round"}, [], id="a key no record has"),
    ],
)
def test_metadata_filters_by_equality_on_every_pair(
    store: VectorStore, metadata: dict[str, MetadataValue], expected: list[str]
) -> None:
    store.upsert(tagged())
    where = replace(ALICE, metadata_pairs=metadata_pairs(metadata))

    assert sorted(names(store.scroll(where, 10))) == expected
    assert store.count(where) == len(expected)
    assert sorted(names(store.nearest(unit("note red"), where, 10))) == expected
    assert sorted(names(search(store, "note", where, mode="sparse"))) == expected


def expiring() -> list[StoredPoint]:
    """Alice's records that never expire, expire at 1000 and at 2000; Bob's and a session's expiring at 1000."""
    return [
        memory("forever"),
        memory("soon", **caller_fields({}, 1000.0)),
        memory("later", **caller_fields({}, 2000.0)),
        memory("session-soon", session_id="s1", **caller_fields({}, 1000.0)),
        memory("bob-soon", user_id="bob", **caller_fields({}, 1000.0)),
    ]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        pytest.param(replace(ALICE, live_at=999.0), ["forever", "later", "session-soon", "soon"], id="before"),
        pytest.param(replace(ALICE, live_at=1000.0), ["forever", "later"], id="expired at its expiry"),
        pytest.param(replace(ALICE, live_at=5000.0), ["forever"], id="no expiry never expires"),
        pytest.param(replace(ALICE, expired_at=999.0), [], id="nothing expired yet"),
        pytest.param(replace(ALICE, expired_at=1000.0), ["session-soon", "soon"], id="the expired"),
        pytest.param(replace(ALICE, live_at=1000.0, session_id="s1"), [], id="with other fields"),
    ],
)
def test_expiry_hides_records_from_live_reads_and_finds_them_for_the_purge(
    store: VectorStore, where: RecordFilter, expected: list[str]
) -> None:
    store.upsert(expiring())

    assert sorted(names(store.scroll(where, 10))) == expected
    assert store.count(where) == len(expected)
    assert sorted(names(store.nearest(unit("note soon"), where, 10))) == expected
    assert sorted(names(list(store.scan(where)))) == expected


def test_expired_scopes_lists_each_scope_holding_expired_records_across_users(store: VectorStore) -> None:
    store.upsert(expiring())

    assert store.expired_scopes(999.0, 100) == []
    assert sorted(store.expired_scopes(1000.0, 100), key=str) == sorted(
        [Scope("alice"), Scope("alice", session_id="s1"), Scope("bob")], key=str
    )

    store.delete(replace(ALICE, expired_at=1000.0))

    assert sorted(names(store.scroll(ALICE, 10))) == ["forever", "later"]
    assert store.expired_scopes(1000.0, 100) == [Scope("bob")]


# -- scan: every point, for export and accounting --------------------------------------------


def test_scan_pages_through_every_point_of_every_user_in_id_order(store: VectorStore) -> None:
    ledger = StoredPoint(record_id("call"), None, None, {**memory("call").payload, "kind": "llm_call"})
    points = [*conversation(), *filter_set("bob"), ledger]
    store.upsert(points)

    everything = list(store.scan(page_size=2))

    assert [p.id for p in everything] == sorted(p.id for p in points)
    assert {p.id: p.payload for p in everything} == {p.id: p.payload for p in points}
    assert sorted(names(list(store.scan(ALICE, page_size=3)))) == ["call", "m0", "m1", "m2", "m3"]
    assert list(store.scan(RecordFilter("nobody"))) == []


def test_scan_after_an_id_resumes_past_it_whether_or_not_it_is_stored(store: VectorStore) -> None:
    points = [*conversation(), *filter_set("bob")]
    store.upsert(points)
    ordered = sorted(p.id for p in points)
    absent = str(uuid.UUID(int=uuid.UUID(ordered[2]).int + 1))  # between the third id and the fourth

    assert [p.id for p in store.scan(after=ordered[2], page_size=2)] == ordered[3:]
    assert [p.id for p in store.scan(after=absent, page_size=1)] == ordered[3:]
    assert [p.id for p in store.scan(after=ordered[-1])] == []
    alice = sorted(p.id for p in store.scan(ALICE))
    assert [p.id for p in store.scan(ALICE, after=alice[0], page_size=1)] == alice[1:]


def test_scan_returns_dense_vectors_on_request_and_none_for_vectorless_points(store: VectorStore) -> None:
    ledger = StoredPoint(record_id("call"), None, None, {**memory("call").payload, "kind": "llm_call"})
    store.upsert([memory("a", dense=unit("a-vector")), ledger])

    found = {names([p])[0]: p for p in store.scan(with_vectors=True)}

    assert found["call"].dense is None
    assert found["a"].dense is not None
    assert max(abs(x - y) for x, y in zip(found["a"].dense, unit("a-vector"), strict=True)) < 1e-5
    assert all(p.dense is None for p in store.scan())


def test_written_changes_with_every_write_update_and_delete_of_that_user_only(store: VectorStore) -> None:
    before, bob = store.written("alice"), store.written("bob")
    store.upsert(conversation())
    after_upsert = store.written("alice")
    store.set_payload(ALICE, {"stage": "extracted"})
    after_update = store.written("alice")
    store.delete(ALICE)

    assert len({before, after_upsert, after_update, store.written("alice")}) == 4
    assert store.written("bob") == bob
