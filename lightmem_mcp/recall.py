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
from typing import cast

from pydantic import BaseModel, Field

from lightmem_mcp.conversation import order_key, same_session
from lightmem_mcp.indexing import speaker_label
from lightmem_mcp.records import FoundPoint, Kind

DEFAULT_RECALL_TOKENS = 1000
# Neighbouring turns taken on each side of a hit, when they are short (see Memory.recall).
DEFAULT_RECALL_CONTEXT = 2
MIN_RECALL_TOKENS = 50
MAX_RECALL_TOKENS = 32_000
# Hits considered for one recall, best first.
RECALL_CANDIDATES = 50


class RecallBlock(BaseModel):
    """The turns taken from one session (each line citing its message id), or one fact or summary,
    as it appears in `context`."""

    kind: Kind = Field(description="turn for the turns taken from one session, else fact or summary.")
    session_id: str | None = None
    start_time: datetime
    end_time: datetime
    ids: list[str] = Field(description="Record ids of what the block holds, for get_memory.")
    source_ids: list[str] = Field(description="The message ids it cites.")
    text: str


class RecallResult(BaseModel):
    """Packed context for a prompt, within the token budget."""

    context: str = Field(description="The blocks in time order, ready to put in a prompt.")
    tokens: int = Field(description="cl100k_base tokens of `context`; never more than max_tokens.")
    max_tokens: int
    blocks: list[RecallBlock]
    hits_used: int = Field(description="Ranked hits whose record is in the context.")
    hits_left_out: int = Field(description="Ranked hits that did not fit in the budget.")
    compressed: bool = Field(description="Whether turn texts were compressed with LLMLingua-2 to fit more.")


@dataclass
class _Packing:
    """What has been taken so far, and which taken turns sit next to each other in their session."""

    taken: dict[str, FoundPoint] = field(default_factory=dict)
    adjacent: set[tuple[str, str]] = field(default_factory=set)

    def with_run(self, run: Sequence[FoundPoint]) -> _Packing:
        taken = dict(self.taken)
        taken.update((p.id, p) for p in run)
        pairs = {(a.id, b.id) for a, b in itertools.pairwise(run)}
        return _Packing(taken, self.adjacent | pairs)


def pack(
    hits: Sequence[FoundPoint],
    window: Callable[[FoundPoint], list[FoundPoint]],
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
        fresh = [p for p in run if p.id not in texts]
        if shrink is not None and fresh:
            texts.update(zip((p.id for p in fresh), shrink([_text(p) for p in fresh]), strict=True))
        texts.update((p.id, _text(p)) for p in fresh if p.id not in texts)
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


def _text(point: FoundPoint) -> str:
    return str(point.payload["text"])


def _blocks(packing: _Packing, texts: dict[str, str], gap_s: float) -> list[RecallBlock]:
    """The turns taken from each session, and single facts / summaries, in time order."""
    ordered = sorted(packing.taken.values(), key=lambda p: (order_key(p.payload), p.id))
    groups: list[list[FoundPoint]] = []
    open_sessions: dict[tuple[object, ...], list[FoundPoint]] = {}
    for point in ordered:
        if point.payload.get("kind") != "turn":
            groups.append([point])
            continue
        key = tuple(point.payload.get(k) for k in ("user_id", "agent_id", "session_id"))
        session = open_sessions.get(key)
        if session is None or not same_session(session[-1].payload, point.payload, gap_s):
            session = open_sessions[key] = []
            groups.append(session)
        session.append(point)
    return [_block(group, texts, packing.adjacent) for group in groups]


def _block(group: list[FoundPoint], texts: dict[str, str], adjacent: set[tuple[str, str]]) -> RecallBlock:
    first = group[0].payload
    kind = cast(Kind, first["kind"])
    sources = list(dict.fromkeys(s for p in group for s in cast(list[str], p.payload.get("source_ids") or [])))
    start = datetime.fromisoformat(str(first["event_time"]))
    end = datetime.fromisoformat(str(group[-1].payload["event_time"]))
    when = start.strftime("%Y-%m-%d %H:%M")
    if kind == "turn":
        session = f" | session {first['session_id']}" if first.get("session_id") else ""
        lines = [f"[{when}{session}]"]
        for previous, point in zip([None, *group], group, strict=False):
            if previous is not None and (previous.id, point.id) not in adjacent:
                lines.append("…")
            cited = " ".join(cast(list[str], point.payload.get("source_ids") or []))
            lines.append(f"{cited} {speaker_label(point.payload)}: {texts[point.id]}")
    else:
        lines = [f"[{kind} {when} | sources: {', '.join(sources)}]", *(texts[p.id] for p in group)]
    return RecallBlock(
        kind=kind,
        session_id=cast(str | None, first.get("session_id")),
        start_time=start,
        end_time=end,
        ids=[p.id for p in group],
        source_ids=sources,
        text="\n".join(lines),
    )
