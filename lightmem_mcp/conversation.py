"""Turns in conversation order: which turn came before which, where a session ends, and the turns
around a given one. Used to index a turn with the turns before it and to show a hit's neighbours."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import cast

from lightmem_mcp.records import FoundPoint, RecordFilter, Scope
from lightmem_mcp.store import VectorStore

# Most turns read around one point in time; ties in event time (a session stored with one date)
# are ordered by when and in which position they were stored.
_MAX_READ = 512
# Turns read to find the few said just before a new one.
_NEWEST = 16


def order_key(payload: Mapping[str, object]) -> tuple[float, float, int]:
    """When it was said, then when it was stored, then its place in that add_memory call."""
    return (
        float(cast(float, payload["event_ts"])),
        float(cast(float, payload.get("created_ts") or 0.0)),
        int(cast(int, payload.get("position") or 0)),
    )


def scope_of(payload: Mapping[str, object]) -> Scope:
    """The exact scope a record was stored in."""
    return Scope(
        str(payload["user_id"]),
        cast(str | None, payload.get("agent_id")),
        cast(str | None, payload.get("session_id")),
    )


def same_session(earlier: Mapping[str, object], later: Mapping[str, object], gap_s: float) -> bool:
    """Consecutive turns belong to one session unless more than `gap_s` seconds separate them."""
    return float(cast(float, later["event_ts"])) - float(cast(float, earlier["event_ts"])) <= gap_s


def session_run(turns: Sequence[FoundPoint], index: int, before: int, after: int, gap_s: float) -> list[FoundPoint]:
    """Up to `before` and `after` turns around `turns[index]` (in conversation order), stopping at a
    session break."""
    start = index
    while start > 0 and index - start < before and same_session(turns[start - 1].payload, turns[start].payload, gap_s):
        start -= 1
    end = index
    while (
        end + 1 < len(turns) and end - index < after and same_session(turns[end].payload, turns[end + 1].payload, gap_s)
    ):
        end += 1
    return list(turns[start : end + 1])


def turns_near(store: VectorStore, scope: Scope, since_ts: float, until_ts: float) -> list[FoundPoint]:
    """The turns of exactly this scope said between the two times, in conversation order."""
    where = RecordFilter(
        scope.user_id,
        scope.agent_id,
        scope.session_id,
        kinds=("turn",),
        since_ts=since_ts,
        until_ts=until_ts,
        exact_scope=True,
    )
    return sorted(store.scroll(where, _MAX_READ), key=lambda p: order_key(p.payload))


def preceding(
    store: VectorStore,
    scope: Scope,
    key: tuple[float, float, int],
    count: int,
    gap_s: float,
    exclude: Collection[str] = (),
) -> list[FoundPoint]:
    """Up to `count` turns of the scope's conversation that came right before `key`, oldest first,
    within the same session; records in `exclude` (those being rewritten) are passed over."""
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
    )
    # The newest few by event time are enough, unless they all share one time (a session stored
    # with one date): then read every turn of that time, to order them by when they were stored.
    limit = min(_NEWEST + len(exclude), _MAX_READ)
    newest = store.scroll(where, limit)
    times = {float(cast(float, p.payload["event_ts"])) for p in newest}
    if len(newest) == limit and len(times) == 1:
        tied = times.pop()
        newest = store.scroll(replace(where, since_ts=tied, until_ts=tied), _MAX_READ)
    near = sorted(newest, key=lambda p: order_key(p.payload))
    earlier = [p for p in near if order_key(p.payload) < key and p.id not in exclude]
    tail = session_tail([p.payload for p in earlier], {"event_ts": event_ts}, count, gap_s)
    return earlier[len(earlier) - len(tail) :]


def session_tail(
    earlier: Sequence[Mapping[str, object]], later: Mapping[str, object], count: int, gap_s: float
) -> list[Mapping[str, object]]:
    """The last `count` of `earlier` (in conversation order) that run on, without a session break,
    into `later`; oldest first."""
    run: list[Mapping[str, object]] = []
    for candidate in reversed(earlier):
        if len(run) == count or not same_session(candidate, later, gap_s):
            break
        run.append(candidate)
        later = candidate
    return run[::-1]
