"""The budgeted recall: the best hits and the turns around them, packed into at most N tokens.

This is the context an agent puts in its prompt before answering. Hits are taken in rank order,
each with its window of neighbouring turns (or alone, when the window does not fit), until the
budget is spent; what was taken is then laid out in time order, one block per session (turns that
are not consecutive separated by "…"; a fact or summary is a block of its own), each block headed
by its time and each line citing its message id. The budget is checked on exactly the text returned.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lightmem_mcp.api import RecallBlock, RecallResult
from lightmem_mcp.conversation import same_session
from lightmem_mcp.records import Record, Scope, Turn

DEFAULT_RECALL_TOKENS = 1000
# Neighbouring turns taken on each side of a hit, when they are short (see Memory.recall).
DEFAULT_RECALL_CONTEXT = 2
MIN_RECALL_TOKENS = 50
MAX_RECALL_TOKENS = 32_000
# Hits considered for one recall, best first.
RECALL_CANDIDATES = 50


@dataclass
class _Packing:
    """What has been taken so far, and which taken turns sit next to each other in their session."""

    taken: dict[str, Record] = field(default_factory=dict)
    adjacent: set[tuple[str, str]] = field(default_factory=set)

    def with_run(self, run: Sequence[Record]) -> _Packing:
        taken = dict(self.taken)
        taken.update((r.id, r) for r in run)
        pairs = {(a.id, b.id) for a, b in itertools.pairwise(run)}
        return _Packing(taken, self.adjacent | pairs)


def pack(
    hits: Sequence[Record],
    window: Callable[[Record], Sequence[Record]],
    max_tokens: int,
    count: Callable[[str], int],
    session_gap_s: float,
    shrink: Callable[[Sequence[str]], list[str]] | None = None,
) -> RecallResult:
    """Take hits best first, each with its window if it fits, else alone, until `max_tokens`."""
    packing = _Packing()
    texts: dict[str, str] = {}
    best: tuple[str, list[RecallBlock]] = ("", [])
    used = left_out = 0
    for hit in hits:
        if hit.id in packing.taken:
            used += 1
            continue
        run = window(hit)
        fresh = [r for r in run if r.id not in texts]
        if shrink is not None and fresh:
            texts.update(zip((r.id for r in fresh), shrink([r.text for r in fresh]), strict=True))
        texts.update((r.id, r.text) for r in fresh if r.id not in texts)
        for option in (run, [hit]) if len(run) > 1 else ([hit],):
            trial = packing.with_run(option)
            blocks = _blocks(trial, texts, session_gap_s)
            context = "\n\n".join(b.text for b in blocks)
            if count(context) <= max_tokens:
                packing, best = trial, (context, blocks)
                used += 1
                break
        else:
            left_out += 1
    context, blocks = best
    return RecallResult(
        context=context,
        tokens=count(context),
        max_tokens=max_tokens,
        blocks=blocks,
        hits_used=used,
        hits_left_out=left_out,
        compressed=shrink is not None,
    )


def _blocks(packing: _Packing, texts: dict[str, str], gap_s: float) -> list[RecallBlock]:
    """The turns taken from each session, and single facts / summaries, in time order."""
    groups: list[list[Record]] = []
    open_sessions: dict[Scope, list[Record]] = {}
    for record in sorted(packing.taken.values(), key=lambda r: r.order):
        if not isinstance(record, Turn):
            groups.append([record])
            continue
        session = open_sessions.get(record.scope)
        if session is None or not same_session(session[-1].event_ts, record.event_ts, gap_s):
            session = open_sessions[record.scope] = []
            groups.append(session)
        session.append(record)
    return [_block(group, texts, packing.adjacent) for group in groups]


def _block(group: list[Record], texts: dict[str, str], adjacent: set[tuple[str, str]]) -> RecallBlock:
    first = group[0]
    sources = list(dict.fromkeys(s for r in group for s in r.source_ids))
    start = datetime.fromisoformat(first.event_time)
    end = datetime.fromisoformat(group[-1].event_time)
    when = start.strftime("%Y-%m-%d %H:%M")
    if first.kind == "turn":
        session = f" | session {first.scope.session_id}" if first.scope.session_id else ""
        lines = [f"[{when}{session}]"]
        for previous, record in zip([None, *group], group, strict=False):
            if previous is not None and (previous.id, record.id) not in adjacent:
                lines.append("…")
            lines.append(f"{' '.join(record.source_ids)} {record.label}: {texts[record.id]}")
    else:
        lines = [f"[{first.kind} {when} | sources: {', '.join(sources)}]", *(texts[r.id] for r in group)]
    return RecallBlock(
        kind=first.kind,
        session_id=first.scope.session_id,
        project=first.scope.project,
        tier=first.tier,
        start_time=start,
        end_time=end,
        ids=[r.id for r in group],
        source_ids=sources,
        text="\n".join(lines),
    )
