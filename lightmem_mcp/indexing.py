"""What stands for a record in search: the texts that are embedded and lexically indexed, and the
stored point made from them.

Questions name people ("When did Caroline ..."), so a turn's index carries who said it: the
speaker's name in both vectors, the role too in the lexical one. A short turn means little on its
own ("Yes, last week!"), so its lexical index also holds the turns just before it in the same
session, clipped; its dense vector keeps to its own words, so the turn that said something still
ranks above the turns after it. Facts and summaries are standalone sentences that already name
people. What search returns is always the record's own text. The choices are measured in
docs/benchmarks.md (section 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from lightmem_mcp.embedder import Embedder
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.records import StoredPoint

# How many earlier turns of the session a short turn is lexically indexed with, how many words of
# each, and up to how many words a turn counts as short.
CONTEXT_TURNS = 2
CONTEXT_WORDS = 40
SHORT_TURN_WORDS = 50
# The earlier turns' terms count this much against the turn's own: the turn that said something
# still outranks the replies that carry it as context.
CONTEXT_WEIGHT = 0.5


def speaker_label(payload: Mapping[str, object]) -> str:
    """Who said it: the speaker's name when given, else the role."""
    return str(payload.get("speaker") or payload.get("role") or "")


def said(payload: Mapping[str, object]) -> str:
    """A turn's words as the person wrote them (before any compression)."""
    return str(payload.get("original_text") or payload["text"])


def context_line(payload: Mapping[str, object]) -> str:
    """A turn as it appears in the index text of the turns after it: who, and its first words."""
    words = said(payload).split()
    clipped = " ".join(words[:CONTEXT_WORDS]) + (" …" if len(words) > CONTEXT_WORDS else "")
    label = speaker_label(payload)
    return f"{label}: {clipped}" if label else clipped


def dense_text(payload: Mapping[str, object]) -> str:
    """What is embedded: a turn's words, after its speaker's name when one was given."""
    if payload.get("kind") != "turn":
        return str(payload["text"])
    name = payload.get("speaker")
    return f"{name}: {said(payload)}" if name else said(payload)


def lexical_parts(payload: Mapping[str, object]) -> tuple[str, str]:
    """What is BM25-indexed: a turn's words after who said them, and, for a short turn, the turns
    said just before it (`context`, kept in the payload), weighted `CONTEXT_WEIGHT`."""
    if payload.get("kind") != "turn":
        return str(payload["text"]), ""
    label = speaker_label(payload)
    own = f"{label}: {said(payload)}" if label else said(payload)
    if len(said(payload).split()) > SHORT_TURN_WORDS:
        return own, ""
    return own, "\n".join(cast(list[str], payload.get("context") or []))


class Indexer:
    """Makes stored points: embeds and lexically encodes each record's index texts, and keeps its
    term ids in the payload so the lexical statistics of one user can be counted."""

    def __init__(self, embedder: Embedder, lexical: LexicalEncoder) -> None:
        self._embedder = embedder
        self._lexical = lexical

    def points(
        self, records: Sequence[tuple[str, Mapping[str, object]]], dense: Sequence[list[float] | None] | None = None
    ) -> list[StoredPoint]:
        """One point per (id, payload); `dense` vectors, where given, are kept instead of embedding again."""
        given: list[list[float] | None] = list(dense) if dense is not None else [None] * len(records)
        missing = [i for i, vector in enumerate(given) if vector is None]
        if missing:
            texts = [dense_text(records[i][1]) for i in missing]
            for i, embedded in zip(missing, self._embedder.embed_documents(texts), strict=True):
                given[i] = embedded
        points = []
        for (point_id, payload), vector in zip(records, given, strict=True):
            own, context = lexical_parts(payload)
            sparse = self._lexical.encode_document(own)
            if context:
                sparse = sparse.plus(self._lexical.encode_document(context), CONTEXT_WEIGHT)
            points.append(StoredPoint(point_id, vector, sparse, {**payload, "terms": sorted(set(sparse.indices))}))
        return points
