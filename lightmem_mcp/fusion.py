"""How a hybrid search turns a dense and a lexical ranking into one: the fusion methods, and which
one a query gets.

Fusion runs here rather than in the store, so both stores rank the same way and every method
(reciprocal rank, distribution-based or min-max score sums) is one function, measured on the same
footing (bench/retrieval_quality.py, docs/benchmarks.md, section 1).

A query that names someone who speaks in the memories being searched ("When did Caroline ...")
gets its own fusion: a name is matched exactly by the lexical ranking and barely moves a
MiniLM vector, so the lexical ranking should weigh more there than for "what did I buy last week".
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from lightmem_mcp.config import FusionMethod, SearchMode, SearchSettings
from lightmem_mcp.records import FoundPoint


@dataclass(frozen=True)
class Fusion:
    """One way to fuse: the method, its constant and the weight of each ranking."""

    method: FusionMethod = "rrf"
    rrf_k: int = 30
    dense_weight: float = 1.0
    sparse_weight: float = 1.0

    def label(self) -> str:
        """`rrf k=30 1:0.5`, `minmax 1:1.5`: method and dense:lexical weights."""
        k = f" k={self.rrf_k}" if self.method == "rrf" else ""
        return f"{self.method}{k} {self.dense_weight:g}:{self.sparse_weight:g}"


@dataclass(frozen=True)
class Ranking:
    """How a query ranks: which arms, how deep, and the fusion for each kind of query."""

    mode: SearchMode = "hybrid"
    plain: Fusion = Fusion()
    named: Fusion = Fusion()
    candidates: int = 100

    @classmethod
    def from_settings(cls, search: SearchSettings) -> Ranking:
        """The configured ranking."""
        return cls(
            mode=search.mode,
            plain=Fusion(search.fusion, search.rrf_k, search.dense_weight, search.sparse_weight),
            named=Fusion(search.named_fusion, search.rrf_k, search.dense_weight, search.named_sparse_weight),
            candidates=search.candidates,
        )


def fuse(dense: Sequence[FoundPoint], sparse: Sequence[FoundPoint], fusion: Fusion) -> list[tuple[str, float]]:
    """(id, fused score), best first; ties keep the dense arm's order, then the lexical one's."""
    arms = ((dense, fusion.dense_weight), (sparse, fusion.sparse_weight))
    scores: dict[str, float] = {}
    for found, weight in arms:
        for point_id, part in _contributions(found, fusion).items():
            scores[point_id] = scores.get(point_id, 0.0) + weight * part
    first_seen = {point_id: i for i, point_id in enumerate(dict.fromkeys(p.id for found, _ in arms for p in found))}
    return sorted(scores.items(), key=lambda item: (-item[1], first_seen[item[0]]))


def _contributions(found: Sequence[FoundPoint], fusion: Fusion) -> dict[str, float]:
    """What one arm adds to each of its candidates' fused score, before its weight."""
    if not found:
        return {}
    if fusion.method == "rrf":
        return {p.id: 1.0 / (fusion.rrf_k + rank) for rank, p in enumerate(found, start=1)}
    values = [p.score for p in found]
    if fusion.method == "dbsf":
        # Qdrant's distribution-based score fusion: mean ± 3 standard deviations mapped to 0..1.
        mean = statistics.fmean(values)
        spread = 3 * statistics.pstdev(values)
        low, high = mean - spread, mean + spread
    else:  # minmax: the arm's best candidate scores 1, its last 0
        low, high = min(values), max(values)
    if high <= low:
        return {p.id: 1.0 for p in found}
    return {p.id: min(max((p.score - low) / (high - low), 0.0), 1.0) for p in found}
