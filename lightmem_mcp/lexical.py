"""The sparse lexical encoder for hybrid search: BM25 with term weights from the caller's own records.

Documents carry BM25's term-frequency part (saturation and length normalisation); the query carries
each term's inverse document frequency, computed from the records of the user who searches and no
one else. IDF taken from the whole collection (Qdrant's `Modifier.Idf`) would let one tenant's
writes reorder and rescore another tenant's results: a side channel on which words they stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import qdrant_edge as qe

from lightmem_mcp.records import SparseVector

# Recorded in the store layout: changing tokenizer, stemmer or weighting makes old sparse vectors incomparable.
LEXICAL_ID = "bm25-english-snowball-v2-scoped-idf"


class LexicalEncoder:
    """English BM25 with stemming and stop words (Qdrant's own tokenizer, so server and edge agree)."""

    id = LEXICAL_ID

    def __init__(self) -> None:
        self._bm25 = qe.Bm25(qe.Bm25Config(language="english"))

    def encode_document(self, text: str) -> SparseVector:
        """Term-frequency weights, length-normalised."""
        vector = self._bm25.embed_document(text)
        return SparseVector(list(vector.indices), list(vector.values))

    def query_terms(self, text: str) -> list[int]:
        """The distinct term ids of a query, in a stable order."""
        return sorted(set(self._bm25.embed_query(text).indices))

    @staticmethod
    def weigh(terms: Sequence[int], documents: int, frequencies: Sequence[int]) -> SparseVector:
        """The query vector: each term weighted by its BM25 IDF among `documents` records, of which
        `frequencies[i]` hold `terms[i]`. Terms no record holds are left out: they cannot match."""
        indices: list[int] = []
        values: list[float] = []
        for term, df in zip(terms, frequencies, strict=True):
            if df > 0:
                indices.append(term)
                values.append(math.log(1.0 + (documents - df + 0.5) / (df + 0.5)))
        return SparseVector(indices, values)
