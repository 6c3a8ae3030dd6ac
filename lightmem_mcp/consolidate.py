"""Sleep-time consolidation: newer facts update, or supersede, the older facts they resemble.

LightMem's offline update, with two changes. An updated fact is re-embedded (a stale vector
would keep finding the old wording). And nothing is destroyed: an updated or contradicted fact
stays in the store with `status = "superseded"`, `superseded_by` and a history entry, so a wrong
LLM judgement can be seen and undone.

How a run goes, per user:
1. Candidates are the user's active facts not yet consolidated (`stage = "extracted"`).
2. Each candidate retrieves its `top_k` most similar *older* active facts (cosine at least
   `score_threshold`); each older fact keeps its `keep_top_n` best newer candidates. That is the
   update queue: only newer facts may update older ones.
3. The older facts (targets) are decided `targets_per_call` at a time, one LLM call per group:
   update (merge the newer detail in), delete (a direct contradiction: the newer fact wins) or
   ignore.
4. An update writes a new version (deterministic id, fresh vectors) and only then supersedes the
   target; a delete supersedes the target by the newer fact. Each group's decisions are applied
   before the next call. Candidates are marked `stage = "consolidated"` once every group of the
   user is decided; a cancelled run (stopped before a call) marks those whose groups were all
   decided, so the next run decides only the rest.

Crash safety: the new version's id depends only on the target and the facts that updated it, so
a run interrupted anywhere and run again writes the same records, never duplicates. Progress
lives in the records themselves (their stage), never in this process, so restarts and several
replicas stay correct.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from lightmem_mcp.api import (
    MAX_REPORTED_CHANGES,
    ConsolidateResult,
    ConsolidationChange,
    HistoryEntry,
    Progress,
    Stop,
)
from lightmem_mcp.config import ConsolidationSettings, PriceSettings
from lightmem_mcp.embedder import Embedder
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.indexing import RecordWriter
from lightmem_mcp.lease import Leases, scope_key
from lightmem_mcp.llm import LLMClient
from lightmem_mcp.records import GLOBAL, Fact, LLMCall, RecordFilter, Scope, record_id
from lightmem_mcp.spend import estimate
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import from_epoch, now, to_epoch

log = logging.getLogger(__name__)

UPDATE_PURPOSE = "update"

_MAX_FACTS = 10_000
_MAX_SCOPES = 10_000

UPDATE_PROMPT = """\
You keep a long-term memory about people up to date. Each numbered TARGET below is an older \
memory; under it are NEWER memories on a similar subject, numbered, each with its time.

Decide one action per target:
- "update": the newer memories add to or refine the target and it stays true (a new detail, a \
more precise date or number). Write the merged memory in "text": one standalone third-person \
sentence that keeps every detail of the target that is still true and adds the newer detail.
- "delete": a newer memory directly contradicts the target, so the target is no longer true \
(the person moved, changed job, sold it, changed their mind). The newer memory wins.
- "ignore": the newer memories are about something else, or only repeat the target.
Give a short "reason" and, in "sources", the numbers of the newer memories the decision rests on.

Answer with JSON only, one decision per target, in this shape:
{"decisions": [{"target": 1, "action": "update", "text": "...", "reason": "...", "sources": [1]}]}"""


class Decision(BaseModel):
    """The LLM's verdict on one target."""

    target: int
    action: Literal["update", "delete", "ignore"]
    text: str | None = None
    reason: str = ""
    sources: list[int] = Field(default_factory=list)


class UpdateAnswer(BaseModel):
    """The whole JSON answer."""

    decisions: list[Decision]


@dataclass
class _Target:
    fact: Fact
    newer: list[tuple[float, Fact]] = field(default_factory=list)


@dataclass
class _RunTally:
    checked: int = 0
    targets: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    updated: int = 0
    superseded: int = 0
    ignored: int = 0
    changes: list[ConsolidationChange] = field(default_factory=list)
    groups: int = 0  # of targets, one call each, in the users reached
    decided: int = 0
    undecided: int = 0  # targets left by a cancelled run
    cancelled: bool = False

    def stopped(self, stop: Stop | None) -> bool:
        """At a boundary (before a call, or a user): whether the caller has cancelled."""
        if not self.cancelled and stop is not None and stop():
            self.cancelled = True
        return self.cancelled


class Consolidator:
    """Runs the offline update for one user, some users, or everyone."""

    def __init__(
        self,
        settings: ConsolidationSettings,
        store: VectorStore,
        writer: RecordWriter,
        embedder: Embedder,
        llm: LLMClient,
        leases: Leases,
        lease_ttl_s: float,
        prices: PriceSettings,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self._settings = settings
        # Expired facts are neither checked nor offered as targets: the time they are checked against.
        self._clock = clock
        self._prices = prices  # a dry run's estimate
        self._store = store
        self._writer = writer
        self._embedder = embedder
        self._llm = llm
        # One replica (and one thread) at a time consolidates a user; the others skip that user.
        self._leases = leases
        self._lease_ttl_s = lease_ttl_s

    def run(
        self,
        scope: Scope | None,
        *,
        since_ts: float | None = None,
        until_ts: float | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
        stop: Stop | None = None,
    ) -> ConsolidateResult:
        """Consolidate the facts of `scope` (every user when None) whose event time is in range. Once
        `stop` says so, the run ends before its next LLM call (or user), every decided group applied."""
        if not self._llm.configured:
            raise BackendUnavailable(
                "consolidation needs an LLM to judge updates: set LIGHTMEM_LLM_PROVIDER (and its key)"
            )
        if scope is None:
            users = sorted({each.user_id for each in self._store.pending_scopes(_MAX_SCOPES, "fact", "extracted")})
            scopes = [Scope(user) for user in users]
        else:
            scopes = [scope]
        tally = _RunTally()
        error = None
        busy = left = 0
        # Progress only ever grows: per group of targets for one scope, per user for everyone.
        per_group = progress if len(scopes) == 1 else None
        for index, each in enumerate(scopes):
            if tally.stopped(stop):
                left = len(scopes) - index
                break
            lease = self._leases.hold(f"consolidate:{scope_key(Scope(each.user_id))}", self._lease_ttl_s)
            try:
                with lease as held:
                    if held or dry_run:
                        self._run_scope(each, since_ts, until_ts, dry_run, tally, per_group, stop)
                    else:
                        busy += 1
            except BackendUnavailable as exc:
                error = str(exc)
                break
            if tally.cancelled:
                left = len(scopes) - index - 1
                break
            if progress is not None and per_group is None:
                progress(index + 1, len(scopes), f"consolidated {index + 1} of {len(scopes)} users")
        if per_group is not None and not tally.calls and error is None and not tally.cancelled:
            per_group(1, 1, "nothing to consolidate")
        if tally.cancelled:
            log.info(
                "consolidate cancelled after %d of %d batches: %d facts changed, %d targets and %d users left",
                tally.decided,
                tally.groups,
                tally.updated + tally.superseded,
                tally.undecided,
                left,
            )
        return ConsolidateResult(
            dry_run=dry_run,
            users=len(scopes),
            busy_users=busy,
            checked_facts=tally.checked,
            targets=tally.targets,
            llm_calls=tally.calls,
            updated=tally.updated,
            superseded=tally.superseded,
            ignored=tally.ignored,
            changes=tally.changes[:MAX_REPORTED_CHANGES],
            error=error,
            cancelled=tally.cancelled,
            undecided_targets=tally.undecided,
            users_left=left,
            estimate=estimate(
                self._prices,
                self._llm.provider,
                self._llm.model,
                tally.calls,
                tally.prompt_tokens,
                tally.completion_tokens,
            )
            if dry_run
            else None,
        )

    def _run_scope(
        self,
        scope: Scope,
        since_ts: float | None,
        until_ts: float | None,
        dry_run: bool,
        tally: _RunTally,
        progress: Progress | None,
        stop: Stop | None,
    ) -> None:
        candidates = self._candidates(scope, since_ts, until_ts)
        if not candidates:
            return
        tally.checked += len(candidates)
        targets = self._queue(scope, candidates)
        tally.targets += len(targets)
        done: set[str] = set()  # targets superseded by this run
        size = self._settings.targets_per_call
        # One tier per call, so that each call is accounted to the tier whose facts it decided.
        tiers: dict[str | None, list[_Target]] = {}
        for target in targets:
            tiers.setdefault(target.fact.scope.project, []).append(target)
        groups = [(project, same[i : i + size]) for project, same in tiers.items() for i in range(0, len(same), size)]
        tally.groups += len(groups)
        # The last group deciding a target of each candidate: past it, the candidate is done.
        last: dict[str, int] = {}
        for index, (_, group) in enumerate(groups):
            last.update((newer.id, index) for target in group for _, newer in target.newer)
        decided = len(groups)
        for number, (project, group) in enumerate(groups, start=1):
            if tally.stopped(stop):
                decided = number - 1
                tally.undecided += sum(len(rest) for _, rest in groups[decided:])
                break
            decisions, call = self._decide(replace(scope, project=project), group)
            tally.calls += 1
            tally.prompt_tokens += call.usage.prompt_tokens
            tally.completion_tokens += call.usage.completion_tokens
            for target, decision in zip(group, decisions, strict=True):
                if decision is None or decision.action == "ignore" or target.fact.id in done:
                    tally.ignored += 1
                    continue
                change = self._apply(target, decision, call, dry_run)
                if change is None:
                    tally.ignored += 1
                    continue
                done.add(target.fact.id)
                tally.changes.append(change)
                if change.action == "update":
                    tally.updated += 1
                else:
                    tally.superseded += 1
            tally.decided += 1
            if progress is not None:
                progress(number, len(groups), f"user {scope.user_id}: decided {number} of {len(groups)} groups")
        if not dry_run:
            ids = tuple(fact.id for fact in candidates if last.get(fact.id, -1) < decided)
            # One time for the whole run: every candidate was checked by it.
            at = to_epoch(now())
            for start in range(0, len(ids), 1000):
                chunk = RecordFilter(scope.user_id, kinds=("fact",), ids=ids[start : start + 1000])
                self._store.set_payload(chunk, Fact.consolidated(at))

    # -- the update queue -----------------------------------------------------------------

    def _candidates(self, scope: Scope, since_ts: float | None, until_ts: float | None) -> list[Fact]:
        where = RecordFilter(
            scope.user_id,
            scope.agent_id,
            scope.session_id,
            kinds=("fact",),
            statuses=("active",),
            stages=("extracted",),
            since_ts=since_ts,
            until_ts=until_ts,
            project=scope.project,
            live_at=to_epoch(self._clock()),
        )
        found = self._store.scroll(where, _MAX_FACTS, with_vectors=True)
        return sorted((Fact.read(p) for p in found), key=lambda f: f.order)

    def _queue(self, scope: Scope, candidates: Sequence[Fact]) -> list[_Target]:
        """Older facts, each with its best newer candidates, oldest target first."""
        targets: dict[str, _Target] = {}
        live_at = to_epoch(self._clock())
        for newer in candidates:
            vector = newer.dense or self._embedder.embed_query(newer.text)
            # Older facts of the same user (and agent, when the fact has one), in any session, and
            # of the same tier: one project's facts never update another's, nor the global tier's.
            where = RecordFilter(
                scope.user_id,
                newer.scope.agent_id,
                kinds=("fact",),
                statuses=("active",),
                until_ts=newer.event_ts,
                project=newer.scope.project or GLOBAL,
                exact_project=True,
                live_at=live_at,
            )
            for point in self._store.nearest(vector, where, self._settings.top_k):
                older = Fact.read(point)
                if older.score < self._settings.score_threshold or older.order >= newer.order:
                    continue
                targets.setdefault(older.id, _Target(older)).newer.append((older.score, newer))
        for target in targets.values():
            target.newer.sort(key=lambda pair: (-pair[0], pair[1].order))
            del target.newer[self._settings.keep_top_n :]
        return sorted(targets.values(), key=lambda t: t.fact.order)

    # -- deciding ------------------------------------------------------------------------

    def _decide(self, scope: Scope, group: Sequence[_Target]) -> tuple[list[Decision | None], LLMCall]:
        """One call for the group; decisions line up with the targets (None: no usable decision)."""
        result = self._llm.complete_json(
            UPDATE_PURPOSE, UPDATE_PROMPT, render_targets(group), UpdateAnswer, scope=scope
        )
        decisions: list[Decision | None] = [None] * len(group)
        for decision in result.value.decisions:
            if not 1 <= decision.target <= len(group) or decisions[decision.target - 1] is not None:
                log.warning("ignored a decision for target %s of %d", decision.target, len(group))
                continue
            decisions[decision.target - 1] = decision
        return decisions, result.call

    def _apply(self, target: _Target, decision: Decision, call: LLMCall, dry_run: bool) -> ConsolidationChange | None:
        newer = [fact for _, fact in target.newer]
        chosen = [newer[n - 1] for n in dict.fromkeys(decision.sources) if 1 <= n <= len(newer)] or newer
        old = target.fact
        action: Literal["update", "delete"] = "update" if decision.action == "update" else "delete"
        if action == "update":
            text = " ".join((decision.text or "").split())
            if not text:
                log.warning("an update without text was ignored (target %s)", old.id)
                return None
            # The version's id depends only on what it merges: a repeated run rewrites the same record.
            new_id = record_id(old.scope, "fact", Fact.version_key(old.id, [f.id for f in chosen]))
        else:
            text, new_id = (winner := max(chosen, key=lambda f: f.order)).text, winner.id
        change = ConsolidationChange(
            action=action,
            target_id=old.id,
            target_text=old.text,
            new_id=new_id,
            new_text=text,
            by_ids=[fact.id for fact in chosen],
            reason=" ".join(decision.reason.split()),
        )
        if dry_run:
            return change
        entry = HistoryEntry(time=now().isoformat(), llm_call_id=call.call_id, **change.model_dump()).model_dump()
        if change.action == "update":
            # The new version first: a crash before the target is superseded repeats the same write.
            self._writer.write([old.version(change.new_id, change.new_text, chosen, entry, now())])
        self._store.set_payload(
            RecordFilter(old.scope.user_id, kinds=("fact",), ids=(old.id,)),
            old.superseded(change.new_id, entry, to_epoch(now())),
        )
        return change


def render_targets(group: Sequence[_Target]) -> str:
    """The user prompt: each target with its newer memories."""
    lines = []
    for index, target in enumerate(group, start=1):
        lines.append(f"TARGET {index} ({_when(target.fact)}): {target.fact.text}")
        for number, (_, fact) in enumerate(target.newer, start=1):
            lines.append(f"  [{number}] ({_when(fact)}) {fact.text}")
        lines.append("")
    lines.append(f"Decide each of the {len(group)} targets; answer as JSON.")
    return "\n".join(lines)


def _when(fact: Fact) -> str:
    return from_epoch(fact.event_ts).strftime("%Y-%m-%d")
