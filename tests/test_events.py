"""Observers hear what the memory did; one that fails never fails the work, nor keeps the others uninformed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lightmem_mcp.api import Message
from lightmem_mcp.config import Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.events import MemoryObserver
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import LLMCall, Scope, Turn
from lightmem_mcp.store.edge import EdgeStore
from tests.openai_server import FakeLLMServer, facts_per_message


class Broken(MemoryObserver):
    """An observer whose every handler raises (an exporter that lost its backend)."""

    def turns_stored(self, turns: Sequence[Turn]) -> None:
        raise RuntimeError("exporter down")

    def facts_stored(self, scope: Scope, count: int) -> None:
        raise RuntimeError("exporter down")

    def llm_called(self, call: LLMCall) -> None:
        raise RuntimeError("exporter down")


class Recorder(MemoryObserver):
    """Remembers what it was told."""

    def __init__(self) -> None:
        self.turns: list[str] = []
        self.facts: list[tuple[Scope, int]] = []
        self.calls: list[LLMCall] = []

    def turns_stored(self, turns: Sequence[Turn]) -> None:
        self.turns += [turn.message_id for turn in turns]

    def facts_stored(self, scope: Scope, count: int) -> None:
        self.facts.append((scope, count))

    def llm_called(self, call: LLMCall) -> None:
        self.calls.append(call)


def test_a_failing_observer_loses_no_memory_and_the_others_still_hear(
    settings: Settings,
    embedder: SentenceTransformerEmbedder,
    llm_server: FakeLLMServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    configured = settings.model_copy(update={"llm": llm_server.settings()})
    lexical = LexicalEncoder()
    store = EdgeStore(configured.store.embedded_path, store_layout(embedder, lexical))
    recorder = Recorder()
    memory = Memory(configured, embedder, store, lexical, observers=[Broken(), recorder])
    scope = Scope("maya")
    llm_server.script(facts_per_message("Maya said"))
    try:
        added = memory.add([Message(role="user", content="I moved to Lisbon in May.", id="m1")], scope)
        flushed = memory.flush(scope)
        found = memory.search("Where did Maya move?", scope)
        stats = memory.stats(scope)
    finally:
        memory.close()

    assert added.source_ids == ["m1"]
    assert (flushed.facts, flushed.error) == (1, None)
    assert {hit.kind for hit in found.hits} == {"turn", "fact"}
    assert recorder.turns == ["m1"]
    assert recorder.facts == [(scope, 1)]
    assert [(call.purpose, call.scope, call.turns, call.ok) for call in recorder.calls] == [
        ("extraction", scope, 1, True)
    ]
    # The usage ledger, an observer too, recorded the call in the user's scope.
    assert (stats.llm_total.calls, stats.llm_total.ok) == (1, 1)
    assert "exporter down" in caplog.text
