"""The sparse lexical encoder for hybrid search: BM25 term weights, IDF applied by the store."""

from __future__ import annotations

import qdrant_edge as qe

from lightmem_mcp.records import SparseVector

# Recorded in the store layout: changing tokenizer or stemmer makes old sparse vectors incomparable.
LEXICAL_ID = "bm25-english-snowball-v1"


class LexicalEncoder:
    """English BM25 with stemming and stop words (Qdrant's own BM25, so server and edge agree)."""

    id = LEXICAL_ID

    def __init__(self) -> None:
        self._bm25 = qe.Bm25(qe.Bm25Config(language="english"))

    def encode_document(self, text: str) -> SparseVector:
        """Term-frequency weights, length-normalised."""
        vector = self._bm25.embed_document(text)
        return SparseVector(list(vector.indices), list(vector.values))

    def encode_query(self, text: str) -> SparseVector:
        """One weight per distinct query term."""
        vector = self._bm25.embed_query(text)
        return SparseVector(list(vector.indices), list(vector.values))
