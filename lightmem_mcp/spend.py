"""What LLM work costs before it runs, and daily token budgets that make it wait.

The budgets (LIGHTMEM_BUDGET_*) count the tokens the usage ledger records, prompt plus
completion, per UTC day: per user (over HTTP the tenant is the user) and for the whole server.
The LLM client asks `SpendGuard.check` before every call with the call's estimated prompt; a call
that would not fit is refused with `BudgetReached`, which every stage already treats as an outage:
the buffer keeps its turns pending (stored, searchable, never lost) and consolidation and
summaries stop where they are. The buffer asks `blocked` before it compresses or segments, so a
spent budget costs no work, and resumes at the next UTC midnight.

A user's figure is read from the ledger in the store (shared by replicas) and re-read every
`REFRESH_S`; the server-wide figure is read once a day and then counted in this process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from lightmem_mcp.api import BudgetStatus, SpendEstimate
from lightmem_mcp.config import BudgetSettings, PriceSettings
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.events import MemoryObserver
from lightmem_mcp.presets import ModelPrice
from lightmem_mcp.records import LEDGER_KIND, LedgerEntry, LLMCall, RecordFilter, Scope, kind_of
from lightmem_mcp.store import VectorStore
from lightmem_mcp.timestamps import now

# How long a user's spend read from the ledger is trusted before it is read again.
REFRESH_S = 60.0
# The share of prompt tokens an answer is expected to take when the user has too few calls of that
# purpose to tell (extraction answers are a list of short facts: about a fifth of the prompt).
DEFAULT_COMPLETION_SHARE = 0.2
_MIN_HISTORY_CALLS = 3
_HISTORY_CALLS = 200
_MILLION = Decimal(1_000_000)


class BudgetReached(BackendUnavailable):
    """A daily token budget is spent: the work waits until `until` (UTC midnight)."""

    def __init__(self, message: str, until: datetime) -> None:
        super().__init__(message)
        self.until = until


def cost_of(rate: ModelPrice, miss: int, hit: int, output: int) -> Decimal:
    """The price of tokens at `rate` (per 1M): prompt tokens missing and hitting the cache, and output."""
    # Decimal from the prices' shortest repr: 1,000 tokens at 0.3 per 1M is exactly 0.0003.
    return (
        miss * Decimal(str(rate.input_cache_miss))
        + hit * Decimal(str(rate.input_cache_hit))
        + output * Decimal(str(rate.output))
    ) / _MILLION


def estimate(
    prices: PriceSettings, provider: str, model: str, calls: int, prompt_tokens: int, completion_tokens: int
) -> SpendEstimate:
    """Calls and tokens priced from the price table, every prompt token at the cache-miss price."""
    found = prices.price_of(provider, model)
    cost: dict[str, float] = {}
    if found is not None and calls:
        rate, currency = found
        cost[currency] = float(cost_of(rate, prompt_tokens, 0, completion_tokens))
    return SpendEstimate(
        llm_calls=calls,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        priced_as=f"{provider}/{model}" if found is not None else None,
    )


def completion_share(store: VectorStore, user_id: str, purpose: str) -> float:
    """Completion tokens per prompt token in the user's recent answered calls of `purpose`, or the default."""
    prompt = completion = calls = 0
    where = RecordFilter(user_id, kinds=(LEDGER_KIND,))
    for point in store.scroll(where, _HISTORY_CALLS):
        entry = LedgerEntry(point.id, point.payload)
        if entry.purpose == purpose and entry.ok and entry.prompt_tokens:
            prompt += entry.prompt_tokens
            completion += entry.completion_tokens
            calls += 1
    return completion / prompt if calls >= _MIN_HISTORY_CALLS else DEFAULT_COMPLETION_SHARE


@dataclass
class _UserSpend:
    tokens: int
    read_at: float


class SpendGuard(MemoryObserver):
    """Counts today's LLM tokens per user and in total, and refuses calls that would pass a budget."""

    def __init__(self, settings: BudgetSettings, store: VectorStore, clock: Callable[[], datetime] = now) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._day: date | None = None
        self._users: dict[str, _UserSpend] = {}
        self._total: int | None = None

    @property
    def enabled(self) -> bool:
        """Whether any budget is set."""
        return self._settings.user_tokens_per_day > 0 or self._settings.tokens_per_day > 0

    def check(self, purpose: str, scope: Scope | None, tokens: int) -> None:
        """Before an LLM call of about `tokens` prompt tokens: raise `BudgetReached` when it does not fit."""
        if not self.enabled:
            return
        reached = self._reached(scope.user_id if scope is not None else None, tokens)
        if reached is not None:
            raise reached

    def blocked(self, user_id: str) -> BudgetReached | None:
        """Why work for the user must wait now (a budget already spent), or None."""
        return self._reached(user_id, 0) if self.enabled else None

    def seconds_until(self, moment: datetime) -> float:
        """Seconds from now (this guard's clock) to `moment`."""
        return (moment - self._clock()).total_seconds()

    def llm_called(self, call: LLMCall) -> None:
        """Count an ended call's tokens (the ledger, told first, has stored it)."""
        if not self.enabled:
            return
        tokens = call.usage.total_tokens
        with self._lock:
            self._roll()
            if self._day != call.started_at.date() or not tokens:
                return
            if self._total is not None:
                self._total += tokens
            user = call.scope.user_id if call.scope is not None else None
            if user is not None and user in self._users:
                self._users[user].tokens += tokens

    def status(self, user_id: str | None) -> BudgetStatus:
        """Today's figures for the user (None: the server alone) and in total, and whether work waits."""
        reached = self._reached(user_id, 0) if self.enabled else None
        with self._lock:
            self._roll()
            day = self._day or self._clock().date()
        return BudgetStatus(
            day=day.isoformat(),
            user_tokens=self._user_tokens(user_id) if user_id is not None else 0,
            user_limit=self._settings.user_tokens_per_day,
            total_tokens=self._total_tokens() if self._settings.tokens_per_day else None,
            total_limit=self._settings.tokens_per_day,
            waiting=reached is not None,
            reason=str(reached) if reached is not None else None,
            resumes_at=reached.until.isoformat() if reached is not None else None,
        )

    # -- counting ------------------------------------------------------------------------

    def _reached(self, user_id: str | None, tokens: int) -> BudgetReached | None:
        s = self._settings
        until = self._midnight()
        checks: list[tuple[int, Callable[[], int], str]] = []
        if s.user_tokens_per_day and user_id is not None:
            checks.append((s.user_tokens_per_day, lambda: self._user_tokens(user_id), "USER_TOKENS_PER_DAY"))
        if s.tokens_per_day:
            checks.append((s.tokens_per_day, self._total_tokens, "TOKENS_PER_DAY"))
        for limit, spent_now, setting in checks:
            spent = spent_now()
            # A call larger than a whole day's budget still runs on a fresh day, or nothing would.
            if spent >= limit or (spent and spent + tokens > limit):
                who = f"user {user_id!r}" if setting == "USER_TOKENS_PER_DAY" else "this server"
                return BudgetReached(
                    f"the daily LLM token budget of {who} is spent: {spent:,} tokens used today, "
                    f"{tokens:,} more needed, limit {limit:,} (LIGHTMEM_BUDGET_{setting}); extraction and "
                    f"sleep-time work wait until {until.isoformat()}; turns stay pending and searchable, "
                    "or raise the limit",
                    until,
                )
        return None

    def _midnight(self) -> datetime:
        today = self._clock()
        return today.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)

    def _roll(self) -> None:
        """A new UTC day starts every count from zero. The caller holds the lock."""
        today = self._clock().date()
        if self._day != today:
            self._day = today
            self._users.clear()
            self._total = None

    def _since(self) -> float:
        return self._clock().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

    def _user_tokens(self, user_id: str) -> int:
        with self._lock:
            self._roll()
            known = self._users.get(user_id)
            if known is not None and time.monotonic() - known.read_at < REFRESH_S:
                return known.tokens
        where = RecordFilter(user_id, kinds=(LEDGER_KIND,), since_ts=self._since())
        tokens = sum(_tokens(LedgerEntry(p.id, p.payload)) for p in self._store.scan(where))
        with self._lock:
            self._users[user_id] = _UserSpend(tokens, time.monotonic())
        return tokens

    def _total_tokens(self) -> int:
        with self._lock:
            self._roll()
            if self._total is not None:
                return self._total
        since = self._since()
        tokens = 0
        for point in self._store.scan(None):
            if kind_of(point.payload) == LEDGER_KIND:
                entry = LedgerEntry(point.id, point.payload)
                if entry.event_ts >= since:
                    tokens += _tokens(entry)
        with self._lock:
            if self._total is None:
                self._total = tokens
            return self._total


def _tokens(entry: LedgerEntry) -> int:
    return entry.prompt_tokens + entry.completion_tokens
