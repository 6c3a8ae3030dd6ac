"""Cancelling the long calls (flush, consolidate, summarize, import): each stops at the next batch
boundary, keeps every batch it finished whole, says what it did, and a later call finishes the rest.

Real components throughout (Qdrant Edge, MiniLM); the LLM is the scripted local server. A caller
cancels through `stop`, asked before each batch; here it turns True once the first batch is done."""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lightmem_mcp import cli
from lightmem_mcp.api import Message
from lightmem_mcp.config import (
    CompressionSettings,
    ConsolidationSettings,
    PipelineSettings,
    Settings,
    StoreSettings,
)
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import RecordFilter, Scope
from lightmem_mcp.shared import SharedMemory
from tests.conftest import open_memory
from tests.openai_server import FakeLLMServer, facts_per_message, prompt_messages
from tests.test_consolidate import MAYA, MERGED, SPRING, SUMMER, extract, judge, said, targets
from tests.test_pipeline import TURNS, messages
from tests.test_shared import shared_settings, start
from tests.test_summarize import MONDAY, TUESDAY, summarize_answer
from tests.test_summarize import messages as dated

USER = Scope("maya")
USER_TEXTS = [text for role, text in TURNS if role == "user"]
one_fact_per_message = facts_per_message("Maya said")


class Caller:
    """What a client sees of a call: its progress reports; and its cancel button, pressed once `after`
    says so (by default: once the first batch has been reported)."""

    def __init__(self, after: Callable[[], bool] | None = None) -> None:
        self.reports: list[tuple[float, float, str]] = []
        self._after = after or (lambda: bool(self.reports))

    def progress(self, done: float, total: float, message: str) -> None:
        self.reports.append((done, total, message))

    def cancelled(self) -> bool:
        return self._after()


def payloads(memory: Memory, user: str, kind: str) -> list[dict[str, Any]]:
    return [dict(p.payload) | {"id": p.id} for p in memory.store.scroll(RecordFilter(user, kinds=(kind,)), 1000)]


# -- flush ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backlog", [False, True], ids=["pending", "backlog"])
def test_a_cancelled_flush_keeps_its_first_batch_whole_and_a_later_flush_extracts_the_rest_once(
    settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer, backlog: bool
) -> None:
    # Turns stored while no LLM was configured (the backlog), or pending below a large buffer.
    storing = settings.model_copy(
        update={"pipeline": PipelineSettings(buffer_tokens=100_000)}
        | ({} if backlog else {"llm": llm_server.settings()})
    )
    first = open_memory(storing, embedder)
    first.add(messages(), USER)
    first.close()
    memory = open_memory(
        settings.model_copy(update={"llm": llm_server.settings(), "pipeline": PipelineSettings(buffer_tokens=16)}),
        embedder,
    )
    llm_server.script(*[one_fact_per_message] * 10)
    caller = Caller(after=lambda: len(llm_server.requests) >= 1)
    try:
        stopped = memory.flush(USER, backlog=backlog, progress=caller.progress, stop=caller.cancelled)

        (request,) = llm_server.requests  # nothing after the first batch went to the LLM
        sent = [text for _, text in prompt_messages(request)]
        turns = {p["text"]: p for p in payloads(memory, "maya", "turn")}
        facts = payloads(memory, "maya", "fact")
        assert 0 < len(sent) < len(USER_TEXTS)
        assert (stopped.cancelled, stopped.error, stopped.llm_calls) == (True, None, 1)
        assert (stopped.extracted_turns, stopped.facts) == (len(sent), len(sent))
        assert stopped.pending_turns == len(USER_TEXTS) - len(sent)
        # The first batch is whole: its facts stored, its turns marked extracted; the rest wait, untouched.
        assert sorted(f["text"] for f in facts) == sorted(f"Maya said: {text}" for text in sent)
        assert {turns[text]["stage"] for text in sent} == {"extracted"}
        assert {turns[text]["stage"] for text in USER_TEXTS if text not in sent} == {"pending"}
        done, total, message = caller.reports[-1]
        assert done < total and f"extracted {len(sent)} of {len(USER_TEXTS)} turns" in message

        resumed = Caller(after=lambda: False)
        finished = memory.flush(USER, backlog=backlog, progress=resumed.progress)
        later = llm_server.requests[1:]
        facts = payloads(memory, "maya", "fact")
    finally:
        memory.close()

    assert not finished.cancelled and finished.error is None and finished.pending_turns == 0
    assert finished.llm_calls == len(later) >= 1
    # Every user turn was sent exactly once over the two flushes, and has exactly one fact.
    resent = [text for request in later for _, text in prompt_messages(request)]
    assert sorted(sent + resent) == sorted(USER_TEXTS)
    assert sorted(f["text"] for f in facts) == sorted(f"Maya said: {text}" for text in USER_TEXTS)
    # A report per batch (and per compression pass), growing to the total.
    extracted = [report for report in resumed.reports if report[2].startswith("extracted")]
    assert len(extracted) == finished.llm_calls
    assert [done for done, _, _ in resumed.reports] == sorted({done for done, _, _ in resumed.reports})
    assert resumed.reports[-1][0] == resumed.reports[-1][1]


def test_a_flush_cancelled_between_compression_chunks_keeps_the_compressed_words_and_calls_nothing(
    settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer, tiny_model: Path
) -> None:
    configured = settings.model_copy(
        update={
            "compression": CompressionSettings(path=tiny_model, device="cpu", rate=0.5, min_tokens=4),
            "llm": llm_server.settings(),
            "pipeline": PipelineSettings(buffer_tokens=100_000),
        }
    )
    memory = open_memory(configured, embedder)
    llm_server.script(one_fact_per_message)
    caller = Caller()
    count = 70  # the buffer compresses 64 turns per model pass
    try:
        notes = [
            Message(role="user", content=f"Note {n}: the quarterly report for the Lisbon office is due soon.")
            for n in range(count)
        ]
        memory.add(notes, USER)

        stopped = memory.flush(USER, progress=caller.progress, stop=caller.cancelled)

        turns = payloads(memory, "maya", "turn")
        assert (stopped.cancelled, stopped.llm_calls, stopped.pending_turns) == (True, 0, count)
        assert llm_server.requests == []
        assert {turn["stage"] for turn in turns} == {"pending"}
        compressions = [turn["compression"] for turn in turns]
        assert (compressions.count("applied"), compressions.count("deferred")) == (64, count - 64)
        assert [(done, total) for done, total, _ in caller.reports] == [(64, 2 * count)]

        resumed = Caller(after=lambda: False)
        finished = memory.flush(USER, progress=resumed.progress)
        turns = payloads(memory, "maya", "turn")
    finally:
        memory.close()

    # The compressed turns are not compressed again: the second flush compresses the rest only.
    assert resumed.reports[0] == (count - 64, count - 64 + count, f"compressed {count - 64} of {count - 64} turns")

    assert (finished.cancelled, finished.llm_calls, finished.extracted_turns, finished.facts) == (
        False,
        1,
        count,
        count,
    )
    assert {turn["stage"] for turn in turns} == {"extracted"}
    assert "deferred" not in {turn["compression"] for turn in turns}


# -- consolidate ------------------------------------------------------------------------------------


@pytest.fixture
def facts_to_consolidate(
    settings: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder
) -> Iterator[Memory]:
    """Maya's spring facts and the summer facts that update them; one target decided per LLM call."""
    configured = settings.model_copy(
        update={
            "llm": llm_server.settings(max_retries=0),
            "pipeline": PipelineSettings(buffer_tokens=10_000),
            "consolidation": ConsolidationSettings(score_threshold=0.7, targets_per_call=1),
        }
    )
    memory = open_memory(configured, embedder)
    llm_server.script(extract, extract)
    for session, rows in (("spring", SPRING), ("summer", SUMMER)):
        memory.add(said(rows, session), Scope("maya", session_id=session))
        memory.flush(Scope("maya", session_id=session))
    yield memory
    memory.close()


def test_a_cancelled_consolidation_applies_its_first_batch_and_a_later_run_decides_only_the_rest(
    facts_to_consolidate: Memory, llm_server: FakeLLMServer
) -> None:
    memory = facts_to_consolidate
    extraction_calls = len(llm_server.requests)
    # Cancelled before it starts, a run over every user reaches none of them and calls nothing.
    nothing = memory.consolidate(None, stop=lambda: True)
    assert (nothing.cancelled, nothing.users, nothing.users_left, nothing.llm_calls) == (True, 1, 1, 0)
    llm_server.script(judge, judge, judge)
    caller = Caller()

    stopped = memory.consolidate(MAYA, progress=caller.progress, stop=caller.cancelled)

    decided = llm_server.requests[extraction_calls:]
    assert [targets(request) for request in decided] == [["Maya lives in Berlin, Germany."]]
    assert (stopped.cancelled, stopped.error, stopped.llm_calls) == (True, None, 1)
    assert (stopped.targets, stopped.undecided_targets, stopped.users_left) == (2, 1, 0)
    assert (stopped.superseded, stopped.updated) == (1, 0)
    assert [change.target_text for change in stopped.changes] == ["Maya lives in Berlin, Germany."]
    assert [(done, total) for done, total, _ in caller.reports] == [(1, 2)]
    by_text = {f["text"]: f for f in payloads(memory, "maya", "fact")}
    # The first decision is applied; the cat, decided by no call, is untouched.
    assert by_text["Maya lives in Berlin, Germany."]["status"] == "superseded"
    assert by_text["Maya has a cat named Luna."]["status"] == "active"
    assert MERGED not in by_text

    finished = memory.consolidate(MAYA)

    (request,) = llm_server.requests[extraction_calls + 1 :]
    assert targets(request) == ["Maya has a cat named Luna."]  # Berlin is not decided again
    assert (finished.cancelled, finished.updated, finished.superseded) == (False, 1, 0)
    by_text = {f["text"]: f for f in payloads(memory, "maya", "fact")}
    berlin, cat, merged = (
        by_text["Maya lives in Berlin, Germany."],
        by_text["Maya has a cat named Luna."],
        by_text[MERGED],
    )
    assert (berlin["superseded_by"], cat["superseded_by"]) == (
        by_text["Maya lives in Munich, Germany."]["id"],
        merged["id"],
    )
    assert len(berlin["history"]) == len(cat["history"]) == 1
    assert len(payloads(memory, "maya", "fact")) == len(SPRING) + len(SUMMER) + 1
    assert memory.consolidate(MAYA).llm_calls == 0  # nothing left undecided


# -- summarize --------------------------------------------------------------------------------------


@pytest.fixture
def two_sessions(
    settings: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder
) -> Iterator[Memory]:
    configured = settings.model_copy(
        update={"llm": llm_server.settings(max_retries=0), "pipeline": PipelineSettings(buffer_tokens=10_000)}
    )
    memory = open_memory(configured, embedder)
    llm_server.script(one_fact_per_message, one_fact_per_message)
    for session, rows in (("monday", MONDAY), ("tuesday", TUESDAY)):
        memory.add(dated(rows), Scope("maya", session_id=session))
        memory.flush(Scope("maya", session_id=session))
    yield memory
    memory.close()


def test_a_cancelled_summary_run_stores_its_first_window_and_a_later_run_writes_every_window_once(
    two_sessions: Memory, llm_server: FakeLLMServer
) -> None:
    memory = two_sessions
    extraction_calls = len(llm_server.requests)
    llm_server.script(summarize_answer, summarize_answer, summarize_answer)
    caller = Caller()

    stopped = memory.summarize(MAYA, window="session", progress=caller.progress, stop=caller.cancelled)

    assert len(llm_server.requests) == extraction_calls + 1
    assert (stopped.cancelled, stopped.error, stopped.llm_calls, stopped.windows_left) == (True, None, 1, 1)
    (monday,) = stopped.summaries
    assert monday.window_key == "monday" and "Dr. Weber" in monday.text
    assert [p["id"] for p in payloads(memory, "maya", "summary")] == [monday.id]
    assert [(done, total) for done, total, _ in caller.reports] == [(1, 2)]

    finished = memory.summarize(MAYA, window="session")

    assert (finished.cancelled, finished.windows_left) == (False, 0)
    assert [s.window_key for s in finished.summaries] == ["monday", "tuesday"]
    assert finished.summaries[0].id == monday.id  # written again in place, not beside it
    assert sorted(p["id"] for p in payloads(memory, "maya", "summary")) == sorted(s.id for s in finished.summaries)


def test_a_summary_run_cancelled_before_it_starts_writes_and_calls_nothing(
    two_sessions: Memory, llm_server: FakeLLMServer
) -> None:
    calls = len(llm_server.requests)

    result = two_sessions.summarize(MAYA, window="session", stop=lambda: True)

    assert (result.cancelled, result.summaries, result.windows_left) == (True, [], 2)
    assert len(llm_server.requests) == calls and payloads(two_sessions, "maya", "summary") == []


def test_a_front_door_stops_a_call_that_runs_in_the_owner(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    settings = shared_settings(tmp_path / "data")
    servers: list[SharedMemory] = []
    try:
        owner = start(settings, embedder, servers)
        door = start(settings, embedder, servers)
        for session, rows in (("monday", MONDAY), ("tuesday", TUESDAY)):
            owner.add(dated(rows), Scope("maya", session_id=session))

        stopped = owner.summarize(MAYA, window="session", stop=lambda: True)
        # The front door's caller cancels: the door tells the owner, whose run stops before a window.
        forwarded = door.summarize(MAYA, window="session", stop=lambda: True)
        finished = door.summarize(MAYA, window="session")
    finally:
        for server in reversed(servers):
            server.close()

    assert (stopped.cancelled, stopped.summaries) == (True, [])
    assert (forwarded.cancelled, forwarded.summaries) == (True, [])
    assert not finished.cancelled and len(finished.summaries) == 2


# -- import -----------------------------------------------------------------------------------------

NOTES = 300  # more than one write batch (256 points)


@pytest.fixture(scope="module")
def long_export(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> str:
    """An export (with vectors) of 300 turns."""
    memory = open_memory(Settings(store=StoreSettings(data_dir=tmp_path_factory.mktemp("notes"))), embedder)
    try:
        for start_at in range(0, NOTES, 150):
            notes = [
                Message(role="user", content=f"Note {n}: the meeting room is booked for {n} minutes.", id=f"note-{n}")
                for n in range(start_at, start_at + 150)
            ]
            memory.add(notes, USER)
        out = io.StringIO()
        memory.export_records(out, vectors=True)
        return out.getvalue()
    finally:
        memory.close()


@pytest.fixture
def empty(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    memory = open_memory(Settings(store=StoreSettings(data_dir=tmp_path / "restored")), embedder)
    yield memory
    memory.close()


def point_ids(export: str) -> list[str]:
    return [json.loads(line)["id"] for line in export.splitlines()[1:]]


def test_a_cancelled_import_writes_whole_batches_says_how_many_and_importing_again_finishes_it(
    long_export: str, empty: Memory
) -> None:
    caller = Caller()

    stopped = empty.import_records(io.StringIO(long_export), progress=caller.progress, stop=caller.cancelled)

    in_file = point_ids(long_export)
    written = {point.id for point in empty.store.scan()}
    assert (stopped.cancelled, stopped.points, stopped.points_left) == (True, 256, len(in_file) - 256)
    assert written == set(in_file[:256])  # the first batch, and nothing of the next
    assert [(done, total) for done, total, _ in caller.reports] == [(256, len(in_file))]

    finished = empty.import_records(io.StringIO(long_export))

    assert (finished.cancelled, finished.points, finished.points_left) == (False, len(in_file), 0)
    assert sorted(point.id for point in empty.store.scan()) == sorted(in_file)
    assert empty.count(USER) == NOTES
    hit = empty.search("how long is the meeting room booked, note 299", USER, limit=1).hits[0]
    assert hit.source_ids == ["note-299"]


def test_an_import_cancelled_before_writing_writes_nothing_and_a_bad_file_is_refused_first(
    long_export: str, empty: Memory
) -> None:
    nothing = empty.import_records(io.StringIO(long_export), stop=lambda: True)
    assert (nothing.cancelled, nothing.points, nothing.points_left) == (True, 0, len(point_ids(long_export)))
    assert list(empty.store.scan()) == []

    with pytest.raises(InvalidInput, match="not JSON"):  # checked whole before the first batch, as ever
        empty.import_records(io.StringIO(long_export + "{oops\n"), stop=lambda: True)
    assert list(empty.store.scan()) == []


def test_ctrl_c_during_a_command_line_import_stops_it_after_the_batch_being_written(
    long_export: str, empty: Memory
) -> None:
    def press_ctrl_c(done: float, total: float, message: str) -> None:
        signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with cli._interrupt_stops() as interrupted:  # what `lightmem-mcp import` runs the import under
        result = empty.import_records(io.StringIO(long_export), progress=press_ctrl_c, stop=interrupted.is_set)

    assert (result.cancelled, result.points) == (True, 256)
    assert signal.getsignal(signal.SIGINT) == before  # Ctrl-C interrupts again afterwards
