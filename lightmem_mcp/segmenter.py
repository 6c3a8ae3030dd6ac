"""Topic segmentation of buffered turns: encoder attention proposes, embedding similarity confirms.

Coarse boundaries come from the attention of a BERT-style encoder run over the buffered messages
as one sequence: a message that opens a new topic gives its predecessor a smaller share of its
attention than its neighbours do (a local minimum). Fine boundaries come from the cosine
similarity of adjacent turn embeddings, with a threshold raised from `similarity_start` to
`similarity_stop` until some fall within `boundary_window` turns of a coarse boundary.
Nothing here assumes user/assistant alternation: any sequence of speakers works.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightmem_mcp.compressor import Compressor
from lightmem_mcp.config import PipelineSettings
from lightmem_mcp.embedder import Embedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoder:
    """A transformers encoder that returns attentions (eager attention), with its tokenizer."""

    model: Any
    tokenizer: Any


EncoderSource = Callable[[], Encoder | None]


class TopicSegmenter:
    """Splits a run of turns into topic segments."""

    def __init__(self, settings: PipelineSettings, encoder_source: EncoderSource) -> None:
        self._settings = settings
        self._encoder_source = encoder_source
        self._lock = threading.Lock()

    def segment(self, texts: Sequence[str], embeddings: Sequence[Sequence[float]]) -> list[list[int]]:
        """Groups of consecutive indices, one per topic, covering every index in order."""
        if not texts:
            return []
        cuts = self.boundaries(texts, embeddings)
        starts = [0, *cuts, len(texts)]
        return [list(range(a, b)) for a, b in itertools.pairwise(starts) if b > a]

    def boundaries(self, texts: Sequence[str], embeddings: Sequence[Sequence[float]]) -> list[int]:
        """Indices where a new topic starts (never 0)."""
        if len(texts) < 2:
            return []
        similarity = adjacent_similarity(embeddings)
        coarse = self.coarse_boundaries(texts)
        return fine_boundaries(similarity, coarse, self._settings)

    def coarse_boundaries(self, texts: Sequence[str]) -> list[int]:
        """Local minima of each message's attention share to its predecessor."""
        share = self.predecessor_attention(texts)
        if share is None:
            return []
        return attention_minima(share)

    def predecessor_attention(self, texts: Sequence[str]) -> list[float] | None:
        """For each message, the share of its attention to earlier messages that goes to the previous one."""
        encoder = self._encoder_source()
        if encoder is None:
            return None
        with self._lock:  # one forward pass at a time: attentions of a 512-token window are large
            matrix = _message_attention(encoder, texts, self._settings.attention_layers)
        share = [1.0]
        for i in range(1, len(texts)):
            total = float(matrix[i, :i].sum())
            share.append(float(matrix[i, i - 1]) / total if total > 0 else 1.0)
        return share


def adjacent_similarity(embeddings: Sequence[Sequence[float]]) -> list[float]:
    """Cosine similarity of each turn with the one before it; element 0 is the pair (0, 1)."""
    vectors = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    return [float(x) for x in (unit[1:] * unit[:-1]).sum(axis=1)]


def attention_minima(share: Sequence[float]) -> list[int]:
    """Messages whose predecessor share is lower than both neighbours' (the last one: than its left)."""
    cuts = []
    for i in range(2, len(share)):
        right = share[i + 1] if i + 1 < len(share) else float("inf")
        if share[i] < share[i - 1] and share[i] <= right:
            cuts.append(i)
    return cuts


def fine_boundaries(similarity: Sequence[float], coarse: Sequence[int], settings: PipelineSettings) -> list[int]:
    """Low-similarity cuts near a coarse boundary, at the lowest threshold that yields any."""
    window = settings.boundary_window
    if not coarse:
        # Without attention evidence only clear breaks count.
        return [i + 1 for i, s in enumerate(similarity) if s < settings.similarity_start]
    threshold = settings.similarity_start
    while threshold <= settings.similarity_stop + 1e-9:
        kept = [
            i + 1 for i, s in enumerate(similarity) if s < threshold and any(abs(i + 1 - c) <= window for c in coarse)
        ]
        if kept:
            return kept
        threshold += settings.similarity_step
    return []


def _message_attention(encoder: Encoder, texts: Sequence[str], layers: Sequence[int]) -> np.ndarray:
    """n-by-n matrix: mean attention from the tokens of message i to all tokens of message j."""
    import torch

    tokenizer, model = encoder.tokenizer, encoder.model
    limit = int(getattr(model.config, "max_position_embeddings", 512)) - 2
    per_text = max(1, limit // len(texts))
    pieces = [tokenizer.encode(text, add_special_tokens=False)[:per_text] or [tokenizer.unk_token_id] for text in texts]
    ids = [tokenizer.cls_token_id]
    spans = []
    for piece in pieces:
        spans.append((len(ids), len(ids) + len(piece)))
        ids.extend(piece)
    ids.append(tokenizer.sep_token_id)
    device = next(model.parameters()).device
    tensor = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.no_grad():
        output = model(input_ids=tensor, attention_mask=torch.ones_like(tensor), output_attentions=True)
    attentions = output.attentions
    chosen = [attentions[layer] for layer in layers if -len(attentions) <= layer < len(attentions)]
    # (layers, batch, heads, seq, seq) -> (seq, seq)
    mean = torch.stack(chosen or list(attentions)).mean(dim=(0, 2))[0].float().cpu().numpy()
    n = len(texts)
    matrix = np.zeros((n, n), dtype=np.float64)
    for i, (a, b) in enumerate(spans):
        for j, (c, d) in enumerate(spans[:i]):
            matrix[i, j] = mean[a:b, c:d].sum(axis=1).mean()
    return matrix


class SegmentationEncoders:
    """The compressor's encoder when it is loaded (as LightMem), else the embedding model's encoder."""

    def __init__(self, compressor: Compressor, embedder: Embedder) -> None:
        self._compressor = compressor
        self._embedder = embedder
        self._lock = threading.Lock()
        self._fallback: Encoder | None = None

    def get(self) -> Encoder | None:
        """An encoder that returns attentions, loading the fallback once; None when neither exists."""
        pair = self._compressor.encoder()  # already switched to attention-returning kernels
        if pair is not None:
            return Encoder(*pair)
        with self._lock:
            if self._fallback is None and self._embedder.location is not None:
                self._fallback = _load_encoder(self._embedder.location, self._embedder.device)
            return self._fallback


def _load_encoder(location: str, device: str) -> Encoder | None:
    from transformers import AutoModel, AutoTokenizer

    try:
        # A second, eager-attention copy: the embedding hot path keeps its faster SDPA kernels.
        model = AutoModel.from_pretrained(location, attn_implementation="eager").eval().to(device)
        return Encoder(model, AutoTokenizer.from_pretrained(location))
    except Exception as exc:  # segmentation then relies on embedding similarity alone
        log.warning("no attention encoder for topic segmentation (%s); using embedding similarity only", exc)
        return None
