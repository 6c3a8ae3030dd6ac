"""Shared fixtures: the real MiniLM embedder (loaded once) and a Memory over a fresh embedded store."""

from __future__ import annotations

import os

# Tests never reach a model hub: models come from the bundled package or are built locally.
os.environ["HF_HUB_OFFLINE"] = "1"

from collections.abc import Iterator
from pathlib import Path

import pytest

from lightmem_mcp.config import EmbeddingSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.store.edge import EdgeStore
from tests.openai_server import llm_server_fixture  # noqa: F401  (the `llm_server` fixture)
from tests.tiny_models import build_tiny_llmlingua2


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(EmbeddingSettings(device="cpu"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised LLMLingua-2-shaped model: real loading and compression, meaningless output."""
    return build_tiny_llmlingua2(tmp_path_factory.mktemp("models"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store=StoreSettings(data_dir=tmp_path / "data"))


def open_memory(settings: Settings, embedder: SentenceTransformerEmbedder) -> Memory:
    """A Memory on the embedded store of `settings`, sharing the session's embedder."""
    lexical = LexicalEncoder()
    layout = store_layout(embedder, lexical)
    return Memory(settings, embedder, EdgeStore(settings.store.embedded_path, layout), lexical)


@pytest.fixture
def memory(settings: Settings, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    service = open_memory(settings, embedder)
    yield service
    service.close()
