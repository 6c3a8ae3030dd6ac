"""The store implementations the contract suite runs against, each opened at one place per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from lightmem_mcp.lexical import LEXICAL_ID
from lightmem_mcp.store import VectorStore
from lightmem_mcp.store.edge import EdgeStore
from lightmem_mcp.store.qdrant_server import QdrantServerStore
from lightmem_mcp.store.schema import SCHEMA_VERSION, StoreLayout

DIMENSION = 8
LAYOUT = StoreLayout(SCHEMA_VERSION, DIMENSION, "test-embedder", LEXICAL_ID)

Opener = Callable[[StoreLayout], VectorStore]


class StoreFactory:
    """Opens stores of one implementation at one place; closes whatever a test leaves open."""

    def __init__(self, opener: Opener) -> None:
        self._opener = opener
        self._open: list[VectorStore] = []

    def __call__(self, layout: StoreLayout = LAYOUT) -> VectorStore:
        store = self._opener(layout)
        self._open.append(store)
        return store

    def close(self, store: VectorStore) -> None:
        """Close `store`, as a server shutting down would."""
        self._open.remove(store)
        store.close()

    def close_all(self) -> None:
        while self._open:
            self.close(self._open[-1])


def _client_opener(connect: Callable[[], QdrantClient], collection: str) -> Opener:
    def open_store(layout: StoreLayout) -> VectorStore:
        client = connect()
        try:
            return QdrantServerStore(client, collection, layout)
        except Exception:
            client.close()
            raise

    return open_store


def _server_url() -> str | None:
    return os.environ.get("QDRANT_URL") or None


IMPLEMENTATIONS = [
    "edge",
    "qdrant-local",
    pytest.param("qdrant-server", marks=pytest.mark.skipif(_server_url() is None, reason="set QDRANT_URL to run")),
]


@contextmanager
def _opener(implementation: str, place: Path) -> Iterator[Opener]:
    if implementation == "edge":
        yield lambda layout: EdgeStore(place / "edge", layout)
    elif implementation == "qdrant-local":
        yield _client_opener(lambda: QdrantClient(path=str(place / "qdrant")), "memories")
    else:
        url, api_key = _server_url(), os.environ.get("QDRANT_API_KEY")
        collection = f"lightmem-test-{uuid.uuid4().hex[:12]}"
        try:
            yield _client_opener(lambda: QdrantClient(url=url, api_key=api_key), collection)
        finally:
            client = QdrantClient(url=url, api_key=api_key)
            try:
                client.delete_collection(collection)
            finally:
                client.close()


@contextmanager
def stores_at(implementation: str, place: Path) -> Iterator[StoreFactory]:
    """A factory opening `implementation` at `place`; a real server gets a fresh collection, dropped after."""
    with _opener(implementation, place) as opener:
        factory = StoreFactory(opener)
        try:
            yield factory
        finally:
            factory.close_all()


@pytest.fixture(params=IMPLEMENTATIONS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the store under test at the same place on every call, so a test can close and reopen it."""
    with stores_at(request.param, tmp_path) as factory:
        yield factory


@pytest.fixture
def store(store_factory: StoreFactory) -> VectorStore:
    return store_factory()


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def shared_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorStore]:
    """One store per implementation for a module's read-only tests (opening a store builds its payload indexes)."""
    with stores_at(request.param, tmp_path_factory.mktemp("shared")) as factory:
        yield factory()
