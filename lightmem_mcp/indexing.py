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

from collections.abc import Sequence

from lightmem_mcp.embedder import Embedder
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.records import Record, StoredPoint, Turn, with_terms
from lightmem_mcp.store import VectorStore
from lightmem_mcp.store.schema import SCHEMA_VERSION, StoreLayout

# How many earlier turns of the session a short turn is lexically indexed with, how many words of
# each, and up to how many words a turn counts as short.
CONTEXT_TURNS = 2
CONTEXT_WORDS = 40
SHORT_TURN_WORDS = 50
# The earlier turns' terms count this much against the turn's own: the turn that said something
# still outranks the replies that carry it as context.
CONTEXT_WEIGHT = 0.5


def context_line(turn: Turn) -> str:
    """A turn as it appears in the index text of the turns after it: who, and its first words."""
    words = turn.said.split()
    clipped = " ".join(words[:CONTEXT_WORDS]) + (" …" if len(words) > CONTEXT_WORDS else "")
    return f"{turn.label}: {clipped}" if turn.label else clipped


def dense_text(record: Record) -> str:
    """What is embedded: a turn's words, after its speaker's name when one was given."""
    if not isinstance(record, Turn):
        return record.text
    return f"{record.speaker}: {record.said}" if record.speaker else record.said


def lexical_parts(record: Record) -> tuple[str, str]:
    """What is BM25-indexed: a turn's words after who said them, and, for a short turn, the turns
    said just before it (`context`, kept in the payload), weighted `CONTEXT_WEIGHT`."""
    if not isinstance(record, Turn):
        return record.text, ""
    own = f"{record.label}: {record.said}" if record.label else record.said
    if is_long(record):
        return own, ""
    return own, "\n".join(record.context)


def is_long(turn: Turn) -> bool:
    """Whether a turn says enough on its own (more than `SHORT_TURN_WORDS` words)."""
    return len(turn.said.split()) > SHORT_TURN_WORDS


def store_layout(embedder: Embedder, lexical: LexicalEncoder) -> StoreLayout:
    """The layout of a store whose points this embedder and lexical encoder make."""
    return StoreLayout(SCHEMA_VERSION, embedder.dimension, embedder.id, lexical.id)


class RecordWriter:
    """Writes records: embeds and lexically encodes each one's index texts, keeps its term ids in its
    payload (so the lexical statistics of one user can be counted) and upserts them. Every stored
    memory is written here."""

    def __init__(self, store: VectorStore, embedder: Embedder, lexical: LexicalEncoder) -> None:
        self._store = store
        self._embedder = embedder
        self._lexical = lexical

    def write(self, records: Sequence[Record]) -> list[StoredPoint]:
        """Index and upsert the records in one atomic write; returns the points written."""
        points = self.points(records)
        if points:
            self._store.upsert(points)
        return points

    def points(self, records: Sequence[Record], keep_dense: bool = False) -> list[StoredPoint]:
        """One point per record, embedded in one batch; with `keep_dense`, a record's dense vector as
        read is kept instead of embedding it again."""
        given: list[list[float] | None] = [r.dense if keep_dense else None for r in records]
        missing = [i for i, vector in enumerate(given) if vector is None]
        if missing:
            texts = [dense_text(records[i]) for i in missing]
            for i, embedded in zip(missing, self._embedder.embed_documents(texts), strict=True):
                given[i] = embedded
        points = []
        for record, vector in zip(records, given, strict=True):
            own, context = lexical_parts(record)
            sparse = self._lexical.encode_document(own)
            if context:
                sparse = sparse.plus(self._lexical.encode_document(context), CONTEXT_WEIGHT)
            points.append(StoredPoint(record.id, vector, sparse, with_terms(record.payload, sparse)))
        return points
