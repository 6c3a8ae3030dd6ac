"""The collection layout both stores share, and the check that a store matches the configuration."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from lightmem_mcp.errors import SchemaMismatch
from lightmem_mcp.records import EXPIRES_FIELD, METADATA_PAIRS_FIELD, PROJECT_FIELD

# 2: contextual indexing (who said it, the turns before it) and lexical IDF from the caller's own
# records (no collection-wide modifier, a `terms` index to count them). Older stores are re-indexed.
SCHEMA_VERSION = 2
DENSE = "dense"
SPARSE = "lexical"

TENANT_FIELD = "user_id"
KEYWORD_FIELDS = (
    "agent_id",
    "session_id",
    "kind",
    "status",
    "role",
    "speaker",
    "source_ids",
    "stage",
    "batch_turn_ids",
    "superseded_by",
    # Added within schema 2: a store opened without it gets the index at open (no re-index: records
    # written before hold no project, and the tier filter reads a missing field as the global tier).
    PROJECT_FIELD,
    # Added within schema 2 as well, the same way: records written before hold no metadata and never
    # expire, which is how the filters read a missing field.
    METADATA_PAIRS_FIELD,
)
FLOAT_FIELDS = ("event_ts", "created_ts", EXPIRES_FIELD)
# The lexical term ids of each record: counted per user for the query's IDF.
INTEGER_FIELDS = ("terms",)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreLayout:
    """What a store records about itself, so a mismatched configuration is caught at open."""

    schema_version: int
    dimension: int
    embedder: str
    lexical: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def check_layout(found: dict[str, Any], wanted: StoreLayout, where: str) -> bool:
    """Raise `SchemaMismatch` when the stored layout cannot serve the configured one; True when it
    can once re-indexed (written by an older lightmem-mcp with the same embedding size)."""
    version = int(found.get("schema_version", 0))
    if version > wanted.schema_version:
        raise SchemaMismatch(
            f"{where} was written by a newer lightmem-mcp (schema {version}, this one reads "
            f"{wanted.schema_version}): upgrade lightmem-mcp"
        )
    dimension = int(found.get("dimension", wanted.dimension))
    if dimension != wanted.dimension:
        raise SchemaMismatch(
            f"{where} holds {dimension}-d vectors from embedder {found.get('embedder')!r}, but the "
            f"configured embedder {wanted.embedder!r} makes {wanted.dimension}-d vectors: configure "
            "the same embedding model (LIGHTMEM_EMBEDDING_MODEL / LIGHTMEM_EMBEDDING_PATH), or point "
            "LIGHTMEM_QDRANT_PATH / LIGHTMEM_COLLECTION at a new store"
        )
    if version < wanted.schema_version:
        return True
    if found.get("lexical", wanted.lexical) != wanted.lexical:
        raise SchemaMismatch(
            f"{where} was indexed with lexical encoder {found.get('lexical')!r}, this lightmem-mcp "
            f"uses {wanted.lexical!r}: use a new store"
        )
    if found.get("embedder") != wanted.embedder:
        # Same size, different name: often the same model loaded from a local copy.
        log.warning(
            "%s was embedded with %r, now configured %r; same dimension, so search runs, "
            "but results are only meaningful if both are the same model",
            where,
            found.get("embedder"),
            wanted.embedder,
        )
    return False
