"""Bringing a store written by an older lightmem-mcp to the current layout: every record's vectors
are made again from its index text (indexing.py), page by page, resumable (store.reindex)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from lightmem_mcp.conversation import preceding
from lightmem_mcp.indexing import CONTEXT_TURNS, RecordWriter, context_line
from lightmem_mcp.records import FoundPoint, Record, StoredPoint, Turn, view
from lightmem_mcp.store import VectorStore

log = logging.getLogger(__name__)


def reindex_store(store: VectorStore, writer: RecordWriter, session_gap_s: float, batch: int = 64) -> int:
    """Re-index a stale store in place; returns how many points were rewritten (0 if it was current)."""
    if not store.stale:
        return 0
    log.warning("re-indexing the store for this version of lightmem-mcp (once; resumes if interrupted)")
    began = time.monotonic()
    done = 0

    def rewrite(page: Sequence[FoundPoint]) -> list[StoredPoint]:
        return _rewrite(store, writer, page, session_gap_s)

    def progress(count: int) -> None:
        nonlocal done
        done = count
        log.warning("re-indexed %d records (%.0f s)", count, time.monotonic() - began)

    store.reindex(rewrite, progress, batch)
    log.warning("re-index complete: %d records in %.0f s", done, time.monotonic() - began)
    return done


def _rewrite(store: VectorStore, writer: RecordWriter, page: Sequence[FoundPoint], gap_s: float) -> list[StoredPoint]:
    """Fresh vectors for the records of one page; turns get the context of the turns before them."""
    plain = [StoredPoint(p.id, None, None, dict(p.payload)) for p in page if p.dense is None]
    records: list[Record] = []
    for point in page:
        if point.dense is None:
            continue
        record = view(point)
        if isinstance(record, Turn):
            before = preceding(store, record.scope, record.order, CONTEXT_TURNS, gap_s, exclude={record.id})
            # A turn's index text changed: embed it again.
            record = replace(record.with_context([context_line(t) for t in before]), dense=None)
        # Facts and summaries are indexed by their own text, as before: their dense vector is kept.
        records.append(record)
    return plain + writer.points(records, keep_dense=True)
