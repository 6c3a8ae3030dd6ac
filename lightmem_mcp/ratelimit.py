"""Client-side rate limits for one LLM endpoint: requests and tokens per period, shared by every caller.

pyrate-limiter's in-memory sliding-window buckets keep the log and do the window arithmetic. This
module checks both buckets before spending from either (pyrate's `Limiter` acquires one bucket at a
time, so a request slot would be spent while the wait for tokens runs), and adds the pause a 429
asks for, so that callers waiting on the limiter do not all hit the server again before it is over.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyrate_limiter import InMemoryBucket, SlidingWindowLog

    from lightmem_mcp.config import LLMSettings

# The token log keeps one entry per unit of weight, so tokens are counted in units of
# limit / this many (rounded up per call): memory stays bounded whatever the limit.
_MAX_TOKEN_UNITS = 10_000


class RateLimiter:
    """At most `requests` requests and `tokens` tokens per `period_s` to one endpoint (0: no limit).

    Thread-safe. Requests are spread evenly, one every `period_s / requests`: providers enforce
    per-minute limits over shorter spans too, so a burst of a whole minute's requests could be
    refused within a limit that is nominally kept. Tokens are a sliding window: a call fits when
    the window holds room for it, and a call bigger than the whole allowance counts as the whole
    allowance, so it waits for an empty window and then goes. Callers wait in turn: a big call is
    not overtaken forever by small ones.
    """

    def __init__(
        self,
        requests: int,
        tokens: int = 0,
        period_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests < 0 or tokens < 0:
            raise ValueError(
                f"rate limits cannot be negative (requests={requests}, tokens={tokens}): set "
                "LIGHTMEM_LLM_REQUESTS_PER_MINUTE / LIGHTMEM_LLM_TOKENS_PER_MINUTE to 0 (no limit) or more"
            )
        if period_s <= 0:
            raise ValueError(f"the rate limit period must be positive, not {period_s}")
        # Imported here: ~0.1 s, paid only where a limit is set.
        from pyrate_limiter import InMemoryBucket, Rate, SlidingWindowLog

        self.requests = requests
        self.tokens = tokens
        self.period_s = period_s
        self._clock = clock
        self._sleep = sleep
        self._window: SlidingWindowLog = SlidingWindowLog()
        period_ms = period_s * 1000
        # Rounded up: the spacing errs on the slow side rather than exceeding the limit.
        self._request_bucket = InMemoryBucket([Rate(1, max(1, math.ceil(period_ms / requests)))]) if requests else None
        self._token_unit = max(1, math.ceil(tokens / _MAX_TOKEN_UNITS)) if tokens else 1
        self._token_units = tokens // self._token_unit
        self._token_bucket = InMemoryBucket([Rate(self._token_units, max(1, math.ceil(period_ms)))]) if tokens else None
        # Held while a caller waits for its turn: callers are admitted one at a time.
        self._turn = threading.Lock()
        # Guards `_paused_until` alone, so a 429 can pause the limiter while a caller waits in it.
        self._pause_lock = threading.Lock()
        self._paused_until = 0.0

    @classmethod
    def from_settings(
        cls,
        settings: LLMSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> RateLimiter | None:
        """The limiter LIGHTMEM_LLM_REQUESTS_PER_MINUTE / _TOKENS_PER_MINUTE ask for; None when neither is set."""
        if not settings.requests_per_minute and not settings.tokens_per_minute:
            return None
        return cls(settings.requests_per_minute, settings.tokens_per_minute, 60.0, clock=clock, sleep=sleep)

    def acquire(self, tokens: int = 0) -> float:
        """Block until a pause is over and one request and `tokens` fit; spend them and return the seconds waited."""
        started = self._clock()
        units = min(math.ceil(max(tokens, 0) / self._token_unit), self._token_units) if self._token_bucket else 0
        with self._turn:
            while True:
                now = self._clock()
                now_ms = round(now * 1000)
                wait_s = max(
                    self._pause_left(now),
                    self._wait_ms(self._request_bucket, 1, now_ms) / 1000,
                    self._wait_ms(self._token_bucket, units, now_ms) / 1000,
                )
                if wait_s <= 0:
                    # Room in both, and only the caller holding the turn spends: both puts succeed.
                    self._spend(self._request_bucket, 1, now_ms)
                    self._spend(self._token_bucket, units, now_ms)
                    return self._clock() - started
                self._sleep(wait_s)

    def pause(self, seconds: float) -> None:
        """Hold every caller back for `seconds` from now (a 429's Retry-After), unless a longer pause is on."""
        until = self._clock() + max(seconds, 0.0)
        with self._pause_lock:
            self._paused_until = max(self._paused_until, until)

    def describe(self) -> dict[str, object]:
        """The limits (0: none) and the period they are counted over."""
        return {"requests": self.requests, "tokens": self.tokens, "period_s": self.period_s}

    def _pause_left(self, now: float) -> float:
        with self._pause_lock:
            return self._paused_until - now

    def _wait_ms(self, bucket: InMemoryBucket | None, weight: int, now_ms: int) -> int:
        """Milliseconds until `weight` fits in `bucket`, spending nothing (pyrate's own `put` would spend)."""
        if bucket is None or weight <= 0:
            return 0
        rate = bucket.rates[0]
        # The entry whose expiry makes room for `weight`, counted from the newest, as pyrate's window does.
        offset = self._window.blocking_offset(rate, weight)
        blocking = bucket.peek(offset) if offset is not None else None
        if blocking is None:
            return 0
        return max(0, self._window.retry_after(rate, now_ms, blocking.timestamp))

    @staticmethod
    def _spend(bucket: InMemoryBucket | None, weight: int, now_ms: int) -> None:
        if bucket is None or weight <= 0:
            return
        from pyrate_limiter import RateItem

        bucket.put(RateItem("llm", now_ms, weight))
        # Expired entries go here rather than in pyrate's leaker thread: one thread fewer per client.
        bucket.leak(now_ms)
