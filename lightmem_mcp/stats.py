"""Accounting for one scope: records, compression savings, LLM calls and tokens, and their estimated cost.

Beside the actual cost, two estimates say what LightMem's two savings are worth on the same traffic:

- without compression: the same calls, each extracted turn sent with its original tokens instead of
  its compressed ones: prompt tokens grow by the sum of `tokens_original - tokens_compressed` over
  the extracted turns, billed at the extraction model's cache-miss price;
- one call per add (no batching, no compression, mem0's pattern): one extraction call per
  `add_memory` call whose messages reached extraction, each sending the system prompt and every
  message of that add, both roles, in its original words, counted with the configured tokenizer.
  This is the "one call per add" baseline of `bench/pipeline.py`, computed the same way.

In both, completion tokens are the actual ones (the same facts come back) and the calls of other
purposes (consolidation, summaries) stay as they were.

Memories that have expired are left out of every count, as every read leaves them out; they are
counted apart, as waiting for the sleep-time purge, beside the number it has already deleted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from lightmem_mcp.api import (
    AppliedPrice,
    CompressionCounts,
    CostReport,
    Counterfactual,
    LLMCallInfo,
    LLMUsage,
    RecordCounts,
    RedactionStats,
    StatsResult,
    TurnStats,
)
from lightmem_mcp.config import PriceSettings
from lightmem_mcp.extractor import EXTRACTION_PURPOSE, BufferedTurn, extraction_prompt, render_batch
from lightmem_mcp.presets import ModelPrice
from lightmem_mcp.records import (
    KINDS,
    LEDGER_KIND,
    FoundPoint,
    Kind,
    LedgerEntry,
    PurgeCount,
    RecordFilter,
    Scope,
    Turn,
    kind_of,
    view,
)
from lightmem_mcp.spend import cost_of
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import from_epoch, now, to_epoch
from lightmem_mcp.tokens import TokenCounter

# Always reported, in this order, even with no calls: extraction, consolidation, summaries.
PURPOSES = ("extraction", "update", "summary")


Money = dict[str, Decimal]


@dataclass
class _Usage:
    calls: int = 0
    ok: int = 0
    attempts: int = 0
    prompt: int = 0
    cached: int = 0
    completion: int = 0
    cost: Money = field(default_factory=dict)

    def add(self, call: LedgerEntry, cost: tuple[str, Decimal] | None) -> None:
        self.calls += 1
        self.ok += 1 if call.ok else 0
        self.attempts += call.attempts
        self.prompt += call.prompt_tokens
        self.cached += call.cached_tokens
        self.completion += call.completion_tokens
        if cost is not None:
            _credit(self.cost, *cost)

    def merged(self, other: _Usage) -> _Usage:
        cost = dict(self.cost)
        for currency, amount in other.cost.items():
            _credit(cost, currency, amount)
        return _Usage(
            self.calls + other.calls,
            self.ok + other.ok,
            self.attempts + other.attempts,
            self.prompt + other.prompt,
            self.cached + other.cached,
            self.completion + other.completion,
            cost,
        )

    def report(self, purpose: str) -> LLMUsage:
        return LLMUsage(
            purpose=purpose,
            calls=self.calls,
            ok=self.ok,
            failed=self.calls - self.ok,
            attempts=self.attempts,
            prompt_tokens=self.prompt,
            cached_tokens=self.cached,
            completion_tokens=self.completion,
            cost=_floats(self.cost),
        )


@dataclass(frozen=True)
class _AddedTurn:
    """A turn as the one-call-per-add estimate renders it, with its place in its add."""

    position: int
    turn: Turn


class _ScopeTally:
    """Accumulates one pass over a scope's points."""

    def __init__(self, prices: PriceSettings, at: float) -> None:
        self._prices = prices
        self._at = at  # what has expired by then is counted apart
        self.expired_pending = 0
        self.expired_purged = 0
        self.next_expiry: float | None = None  # the first expiry after `at`: the figures hold until then
        self.statuses: dict[Kind, Counter[str]] = {kind: Counter() for kind in KINDS}
        self.stages: Counter[str] = Counter()
        self.compression: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.extracted_extra_tokens = 0
        self.adds: dict[tuple[Scope, float], list[_AddedTurn]] = defaultdict(list)
        self.extracted_adds: set[tuple[Scope, float]] = set()
        self.redacted_turns = 0
        self.redacted: Counter[str] = Counter()
        self.usage: dict[str, _Usage] = {purpose: _Usage() for purpose in PURPOSES}
        self.extraction_models: Counter[tuple[str, str]] = Counter()
        self.applied: dict[str, AppliedPrice] = {}
        self.unpriced: set[str] = set()

    def add(self, point: FoundPoint) -> None:
        kind = kind_of(point.payload)
        if kind == LEDGER_KIND:
            self._call(LedgerEntry(point.id, point.payload))
            return
        if PurgeCount.is_count(point.payload):
            self.expired_purged += PurgeCount.read(point).purged
            return
        record = view(point)
        if record.expired(self._at):
            self.expired_pending += 1
            return
        expires = record.expires_ts
        if expires is not None and (self.next_expiry is None or expires < self.next_expiry):
            self.next_expiry = expires
        if kind in self.statuses:
            self.statuses[kind][record.status] += 1
        if isinstance(record, Turn):
            self._turn(record)

    def _turn(self, turn: Turn) -> None:
        before, after = turn.tokens_original, turn.tokens_compressed
        self.stages[turn.stage] += 1
        row = self.compression[turn.compression]
        row[0] += 1
        row[1] += before
        row[2] += after
        add = turn.add_key
        self.adds[add].append(_AddedTurn(turn.position, turn))
        if turn.stage == "extracted":
            self.extracted_extra_tokens += before - after
            self.extracted_adds.add(add)
        if redactions := turn.redactions:
            self.redacted_turns += 1
            self.redacted.update(redactions)

    def _call(self, call: LedgerEntry) -> None:
        cost = _priced(self.price(call.provider, call.model), call)
        self.usage.setdefault(call.purpose, _Usage()).add(call, cost)
        if call.purpose == EXTRACTION_PURPOSE:
            self.extraction_models[(call.provider, call.model)] += 1

    def price(self, provider: str, model: str) -> tuple[ModelPrice, str] | None:
        """The price of a model, remembered for the report; unknown models are listed as unpriced."""
        name = f"{provider}/{model}"
        found = self._prices.price_of(provider, model)
        if found is None:
            self.unpriced.add(name)
            return None
        rate, currency = found
        self.applied[name] = AppliedPrice(
            model=name,
            currency=currency,
            input_cache_miss=rate.input_cache_miss,
            input_cache_hit=rate.input_cache_hit,
            output=rate.output,
        )
        return found

    def result(self, scope: Scope, counter: TokenCounter) -> StatsResult:
        total = _Usage()
        for usage in self.usage.values():
            total = total.merged(usage)
        extraction = self.usage[EXTRACTION_PURPOSE]
        others = total.calls - extraction.calls, total.prompt - extraction.prompt
        other_cost = _minus(total.cost, extraction.cost)
        price = self._extraction_price()

        extra = self.extracted_extra_tokens
        uncompressed_cost = dict(total.cost)
        if price is not None and extra:
            _credit(uncompressed_cost, price[1], cost_of(price[0], extra, 0, 0))

        # The system prompt depends only on the scope's tier: counted once per distinct prompt, not per add.
        system_tokens: dict[str, int] = {}
        per_add_prompt = 0
        for add in self.extracted_adds:
            system = extraction_prompt(add[0])
            if system not in system_tokens:
                system_tokens[system] = counter.count(system)
            added = sorted(self.adds[add], key=lambda a: a.position)
            batch = render_batch([[BufferedTurn.of(a.turn, said=True) for a in added]])
            per_add_prompt += system_tokens[system] + counter.count(batch)
        per_add_cost = dict(other_cost)
        if price is not None:
            _credit(per_add_cost, price[1], cost_of(price[0], per_add_prompt, 0, extraction.completion))

        before = sum(row[1] for row in self.compression.values())
        after = sum(row[2] for row in self.compression.values())
        return StatsResult(
            user_id=scope.user_id,
            agent_id=scope.agent_id,
            session_id=scope.session_id,
            records=[
                RecordCounts(
                    kind=kind,
                    total=sum(counts.values()),
                    active=counts["active"],
                    superseded=counts["superseded"],
                    # In the published result, always 0: delete and forget remove records outright.
                    deleted=0,
                )
                for kind, counts in self.statuses.items()
            ],
            turns=TurnStats(
                pending=self.stages["pending"],
                extracted=self.stages["extracted"],
                skipped=sum(n for stage, n in self.stages.items() if stage not in ("pending", "extracted")),
                tokens_original=before,
                tokens_compressed=after,
                tokens_saved=before - after,
                by_compression=[
                    CompressionCounts(compression=how, turns=row[0], tokens_original=row[1], tokens_compressed=row[2])
                    for how, row in sorted(self.compression.items())
                ],
            ),
            redactions=RedactionStats(
                turns=self.redacted_turns,
                secrets=sum(self.redacted.values()),
                by_kind=dict(sorted(self.redacted.items())),
            ),
            llm=[self.usage[purpose].report(purpose) for purpose in _ordered(self.usage)],
            llm_total=total.report("all"),
            cost=CostReport(
                actual=_floats(total.cost),
                without_compression=Counterfactual(
                    llm_calls=total.calls,
                    prompt_tokens=total.prompt + extra,
                    completion_tokens=total.completion,
                    cost=_floats(uncompressed_cost),
                ),
                one_call_per_add=Counterfactual(
                    llm_calls=len(self.extracted_adds) + others[0],
                    prompt_tokens=per_add_prompt + others[1],
                    completion_tokens=total.completion,
                    cost=_floats(per_add_cost),
                ),
                prices=sorted(self.applied.values(), key=lambda a: a.model),
                unpriced_models=sorted(self.unpriced),
            ),
            expired_purged=self.expired_purged,
            expired_pending=self.expired_pending,
        )

    def _extraction_price(self) -> tuple[ModelPrice, str] | None:
        """The price the estimates bill extraction at: that of the model that made most extraction calls."""
        if not self.extraction_models:
            return None
        (provider, model), _ = min(self.extraction_models.items(), key=lambda item: (-item[1], item[0]))
        return self._prices.price_of(provider, model)


def collect_stats(
    store: VectorStore, scope: Scope, prices: PriceSettings, counter: TokenCounter, at: datetime | None = None
) -> StatsResult:
    """Read every point of the scope once and account for it; memories expired at `at` (default now)
    are counted apart."""
    return collect_stats_until(store, scope, prices, counter, at)[0]


def collect_stats_until(
    store: VectorStore, scope: Scope, prices: PriceSettings, counter: TokenCounter, at: datetime | None = None
) -> tuple[StatsResult, float | None]:
    """`collect_stats`, and until when (epoch seconds) the figures hold without a write: the first
    expiry after `at` (None: no record will expire)."""
    tally = _ScopeTally(prices, to_epoch(at or now()))
    for point in store.scan(RecordFilter(scope.user_id, scope.agent_id, scope.session_id, project=scope.project)):
        tally.add(point)
    return tally.result(scope, counter), tally.next_expiry


def call_info(call_id: str, call: LedgerEntry, prices: PriceSettings) -> LLMCallInfo:
    """One ledger entry (of the call `call_id`) as a memory browser shows it, its cost estimated as `collect_stats`
    estimates it."""
    cost = _priced(prices.price_of(call.provider, call.model), call)
    return LLMCallInfo(
        id=call_id,
        purpose=call.purpose,
        model=call.model,
        time=from_epoch(call.event_ts),
        ok=call.ok,
        attempts=call.attempts,
        prompt_tokens=call.prompt_tokens,
        cached_tokens=call.cached_tokens,
        completion_tokens=call.completion_tokens,
        cost={} if cost is None else _floats({cost[0]: cost[1]}),
    )


def _priced(price: tuple[ModelPrice, str] | None, call: LedgerEntry) -> tuple[str, Decimal] | None:
    """The estimated cost of one call at `price` (None: unpriced), and its currency."""
    if price is None:
        return None
    rate, currency = price
    miss = max(call.prompt_tokens - call.cached_tokens, 0)
    return currency, cost_of(rate, miss, call.cached_tokens, call.completion_tokens)


def _credit(money: Money, currency: str, amount: Decimal) -> None:
    money[currency] = money.get(currency, Decimal(0)) + amount


def _minus(money: Money, less: Money) -> Money:
    left = dict(money)
    for currency, amount in less.items():
        _credit(left, currency, -amount)
    return left


def _floats(money: Money) -> dict[str, float]:
    return {currency: float(amount) for currency, amount in sorted(money.items())}


def _ordered(usage: Iterable[str]) -> list[str]:
    return list(PURPOSES) + sorted(set(usage) - set(PURPOSES))
