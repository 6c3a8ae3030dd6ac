"""Compression off the write path: add_memory stores and indexes the words as sent, and the buffer
compresses them in the background when it flushes, right before segmentation and extraction.

Real components throughout (Qdrant Edge, MiniLM, a tiny LLMLingua-2-shaped model); the LLM is the
scripted local server."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lightmem_mcp.api import Message
from lightmem_mcp.compressor import Compression, Compressor
from lightmem_mcp.config import CompressionSettings, PipelineSettings, Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.extractor import FactExtractor
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import RecordFilter, Scope
from lightmem_mcp.store.edge import EdgeStore
from tests.openai_server import FakeLLMServer, facts_per_message

USER = Scope("nadia")
LONG = (
    "I am planning a two week trip to Japan next spring with my sister to see the cherry blossoms, "
    "and we want to stay in small family run inns near Kyoto rather than big hotels. "
)
one_fact_per_message = facts_per_message("Nadia said")


class CountingCompressor(Compressor):
    """The real compressor, counting the texts it is asked to compress, and able to hold them back."""

    def __init__(self, settings: CompressionSettings) -> None:
        super().__init__(settings)
        self.texts: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def compress_many(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> list[Compression]:
        self.texts += texts
        self.started.set()
        assert self.release.wait(timeout=60), "the test never released the compressor"
        return super().compress_many(texts, *args, **kwargs)


@pytest.fixture
def compressing(settings: Settings, tiny_model: Path, llm_server: FakeLLMServer) -> Settings:
    return settings.model_copy(
        update={
            "compression": CompressionSettings(path=tiny_model, device="cpu", rate=0.5, min_tokens=4),
            "llm": llm_server.settings(),
            "pipeline": PipelineSettings(buffer_tokens=40),
        }
    )


def open_with(settings: Settings, embedder: SentenceTransformerEmbedder, compressor: Compressor) -> Memory:
    lexical = LexicalEncoder()
    store = EdgeStore(settings.store.embedded_path, store_layout(embedder, lexical))
    return Memory(settings, embedder, store, lexical, compressor)


def turn_payloads(memory: Memory, ids: Sequence[str]) -> list[dict[str, Any]]:
    found = {p.id: dict(p.payload) for p in memory.store.scroll(RecordFilter(USER.user_id, ids=tuple(ids)), len(ids))}
    return [found[i] for i in ids]


def messages(count: int, prefix: str = "m") -> list[Message]:
    return [
        Message(role="user", content=f"{LONG}Note {n}: the {prefix} trip matters.", id=f"{prefix}{n}")
        for n in range(count)
    ]


def test_add_returns_before_the_compressor_runs_and_keeps_the_words_as_sent(
    compressing: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    compressor = CountingCompressor(compressing.compression)
    compressor.release.clear()  # a compressor that never finishes until the test lets it
    memory = open_with(compressing, embedder, compressor)
    llm_server.script(*[one_fact_per_message] * 4)
    try:
        ids = memory.add(messages(3), USER).ids  # fills the buffer: a background flush starts

        # add_memory has returned although the compressor is stuck in the background flush.
        assert compressor.started.wait(timeout=30)
        stored = turn_payloads(memory, ids)
        assert [p["text"] for p in stored] == [m.content for m in messages(3)]
        assert {p["compression"] for p in stored} == {"deferred"}
        assert all(p["tokens_compressed"] == p["tokens_original"] for p in stored)
        # Searchable by the words as sent, at once.
        hit = memory.search("small family run inns near Kyoto", USER, limit=3).hits[0]
        assert hit.text.startswith(LONG)

        compressor.release.set()
        memory.buffer.drain(timeout=60)
        done = turn_payloads(memory, ids)
    finally:
        compressor.release.set()
        memory.close()

    assert {p["compression"] for p in done} == {"applied"}
    assert {p["stage"] for p in done} == {"extracted"}
    assert all(p["tokens_compressed"] < p["tokens_original"] * 0.7 for p in done)
    # The record keeps the person's words; extraction was sent the compressed ones.
    assert [p["text"] for p in done] == [m.content for m in messages(3)]
    prompt = llm_server.requests[0].user
    assert all(p["compressed_text"] in prompt for p in done)
    assert LONG.strip() not in prompt


def test_a_crash_between_compression_and_extraction_loses_nothing_and_compresses_once(
    compressing: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    manual = compressing.model_copy(update={"pipeline": PipelineSettings(buffer_tokens=100_000)})
    first_compressor = CountingCompressor(manual.compression)
    first = open_with(manual, embedder, first_compressor)
    ids = first.add(messages(4), USER).ids

    def power_cut(*args: object, **kwargs: object) -> object:
        raise RuntimeError("power cut")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FactExtractor, "extract", power_cut)
        with pytest.raises(RuntimeError, match="power cut"):
            first.flush(USER)
    compressed = turn_payloads(first, ids)
    first.close()
    assert len(first_compressor.texts) == 4
    assert {(p["stage"], p["compression"]) for p in compressed} == {("pending", "applied")}

    second_compressor = CountingCompressor(manual.compression)
    second = open_with(manual, embedder, second_compressor)
    llm_server.script(one_fact_per_message)
    try:
        assert second.count(USER) == 4  # every turn kept and searchable across the crash
        result = second.flush(USER)
        done = turn_payloads(second, ids)
    finally:
        second.close()

    assert result.error is None and result.extracted_turns == 4 and result.pending_turns == 0
    assert second_compressor.texts == []  # the compressed words were kept, not computed again
    assert {p["stage"] for p in done} == {"extracted"}
    assert [p["compressed_text"] for p in done] == [p["compressed_text"] for p in compressed]
    assert all(p["compressed_text"] in llm_server.requests[0].user for p in done)


def test_roles_that_feed_no_extraction_are_never_compressed(
    compressing: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    manual = compressing.model_copy(update={"pipeline": PipelineSettings(buffer_tokens=100_000)})
    compressor = CountingCompressor(manual.compression)
    memory = open_with(manual, embedder, compressor)
    llm_server.script(one_fact_per_message)
    try:
        ids = memory.add([Message(role="user", content=LONG), Message(role="assistant", content=LONG)], USER).ids
        memory.flush(USER)
        user, assistant = turn_payloads(memory, ids)
    finally:
        memory.close()

    assert compressor.texts == [LONG]
    assert (user["compression"], user["stage"]) == ("applied", "extracted")
    # messages_use=user_only: the assistant's words feed nothing and are kept as they are.
    assert (assistant["compression"], assistant["stage"], assistant["text"]) == ("not_extracted", "skipped", LONG)
    assert "compressed_text" not in assistant


def test_without_the_compression_model_turns_reach_extraction_whole_and_say_why(
    settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    configured = settings.model_copy(
        update={"llm": llm_server.settings(), "pipeline": PipelineSettings(buffer_tokens=100_000)}
    )
    memory = open_with(configured, embedder, Compressor(configured.compression))
    llm_server.script(one_fact_per_message)
    try:
        (record_id,) = memory.add([Message(role="user", content=LONG)], USER).ids
        memory.flush(USER)
        (turn,) = turn_payloads(memory, [record_id])
    finally:
        memory.close()

    assert memory.compressor.status == "unavailable"  # no model in this environment's hub cache
    assert (turn["compression"], turn["stage"]) == ("unavailable", "extracted")
    assert "compressed_text" not in turn
    assert LONG.strip() in llm_server.requests[0].user
