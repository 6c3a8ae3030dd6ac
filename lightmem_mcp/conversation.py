"""Turns in conversation order: where a session ends, and the turns around a given one. Used to
index a turn with the turns before it and to show a hit's neighbours."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from lightmem_mcp.records import Order, RecordFilter, Scope, Turn
from lightmem_mcp.store import VectorStore

# Most turns read around one point in time; ties in event time (a session stored with one date)
# are ordered by when and in which position they were stored (`Record.order`).
_MAX_READ = 512
# Turns read to find the few said just before a new one.
_NEWEST = 16


def same_session(earlier_ts: float, later_ts: float, gap_s: float) -> bool:
    """Consecutive turns belong to one session unless more than `gap_s` seconds separate them."""
    return later_ts - earlier_ts <= gap_s


def session_run(turns: Sequence[Turn], index: int, before: int, after: int, gap_s: float) -> list[Turn]:
    """Up to `before` and `after` turns around `turns[index]` (in conversation order), stopping at a
    session break."""
    start = index
    while (
        start > 0 and index - start < before and same_session(turns[start - 1].event_ts, turns[start].event_ts, gap_s)
    ):
        start -= 1
    end = index
    while (
        end + 1 < len(turns)
        and end - index < after
        and same_session(turns[end].event_ts, turns[end + 1].event_ts, gap_s)
    ):
        end += 1
    return list(turns[start : end + 1])


def turns_near(
    store: VectorStore,
    scope: Scope,
    since_ts: float,
    until_ts: float,
    live_at: float | None = None,
    metadata_pairs: tuple[str, ...] = (),
) -> list[Turn]:
    """The turns of exactly this scope said between the two times, in conversation order; with
    `live_at`, those not expired then, and with `metadata_pairs`, those holding that metadata."""
    where = RecordFilter(
        scope.user_id,
        scope.agent_id,
        scope.session_id,
        kinds=("turn",),
        since_ts=since_ts,
        until_ts=until_ts,
        exact_scope=True,
        project=scope.project,
        live_at=live_at,
        metadata_pairs=metadata_pairs,
    )
    return sorted((Turn.read(p) for p in store.scroll(where, _MAX_READ)), key=lambda t: t.order)


def preceding(
    store: VectorStore,
    scope: Scope,
    key: Order,
    count: int,
    gap_s: float,
    exclude: Collection[str] = (),
    live_at: float | None = None,
) -> list[Turn]:
    """Up to `count` turns of the scope's conversation that came right before `key`, oldest first,
    within the same session; records in `exclude` (those being rewritten) are passed over, and with
    `live_at`, those expired then."""
    if count <= 0:
        return []
    event_ts = key[0]
    where = RecordFilter(
        scope.user_id,
        scope.agent_id,
        scope.session_id,
        kinds=("turn",),
        since_ts=event_ts - count * gap_s,
        until_ts=event_ts,
        exact_scope=True,
        project=scope.project,
        live_at=live_at,
    )
    # The newest few by event time are enough, unless they all share one time (a session stored
    # with one date): then read every turn of that time, to order them by when they were stored.
    limit = min(_NEWEST + len(exclude), _MAX_READ)
    newest = [Turn.read(p) for p in store.scroll(where, limit)]
    times = {turn.event_ts for turn in newest}
    if len(newest) == limit and len(times) == 1:
        tied = times.pop()
        newest = [Turn.read(p) for p in store.scroll(replace(where, since_ts=tied, until_ts=tied), _MAX_READ)]
    earlier = sorted((t for t in newest if t.order < key and t.id not in exclude), key=lambda t: t.order)
    return session_tail(earlier, event_ts, count, gap_s)


def session_tail(earlier: Sequence[Turn], later_ts: float, count: int, gap_s: float) -> list[Turn]:
    """The last `count` of `earlier` (in conversation order) that run on, without a session break,
    into a turn said at `later_ts`; oldest first."""
    run: list[Turn] = []
    for candidate in reversed(earlier):
        if len(run) == count or not same_session(candidate.event_ts, later_ts, gap_s):
            break
        run.append(candidate)
        later_ts = candidate.event_ts
    return run[::-1]
