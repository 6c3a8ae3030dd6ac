"""Prometheus metrics of the HTTP server: tool calls, LLM usage, what is stored, requests in flight.

Labels are bounded and carry no user data: tool names come from the registered tools, LLM
purposes from the code; never a user, tenant, agent or session id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.types import CallToolResult
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from lightmem_mcp.events import MemoryObserver
from lightmem_mcp.records import LLMCall, Scope, Turn

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus version reads
UNKNOWN_TOOL = "unknown"

# Tool calls run from a millisecond (get) to minutes (flush with an LLM).
_TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LLM_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class Metrics(MemoryObserver):
    """Every metric of one server process, in its own registry; observes what the memory stores and calls."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._tools: frozenset[str] = frozenset()
        self._inflight = 0
        self.tool_calls = Counter(
            "lightmem_tool_calls",
            "MCP tool calls by tool and outcome (ok, or error: a tool error or a refused request).",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.tool_seconds = Histogram(
            "lightmem_tool_call_duration_seconds",
            "Time to answer an MCP tool call, by tool.",
            ["tool"],
            buckets=_TOOL_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge("lightmem_inflight_requests", "MCP requests being handled now.", registry=self.registry)
        self.llm_calls = Counter(
            "lightmem_llm_calls",
            "LLM calls (all retries of one call together) by purpose and outcome.",
            ["purpose", "outcome"],
            registry=self.registry,
        )
        self.llm_tokens = Counter(
            "lightmem_llm_tokens",
            "LLM tokens by purpose and kind: prompt, completion, and cached (prompt tokens served from "
            "the provider's cache, a part of prompt).",
            ["purpose", "kind"],
            registry=self.registry,
        )
        self.llm_seconds = Histogram(
            "lightmem_llm_call_duration_seconds",
            "Time of one LLM call, retries included, by purpose.",
            ["purpose"],
            buckets=_LLM_BUCKETS,
            registry=self.registry,
        )
        self.records_stored = Counter(
            "lightmem_records_stored",
            "Memory records written, by kind (turn: a stored message; fact: an extracted fact).",
            ["kind"],
            registry=self.registry,
        )
        self.turn_tokens = Counter(
            "lightmem_stored_turn_tokens",
            "Tokens of stored messages: form=original as sent; form=compressed as extraction reads them, "
            "counted when a buffer compresses them (at once for messages it never will), so the compression "
            "savings are the difference once the buffers are flushed.",
            ["form"],
            registry=self.registry,
        )

    def know_tools(self, names: Iterable[str]) -> None:
        """The tool names that may appear as labels; any other name is counted as `unknown`."""
        self._tools = frozenset(names)
        for name in self._tools:  # every tool shows up at zero before its first call
            for outcome in ("ok", "error"):
                self.tool_calls.labels(name, outcome)

    @property
    def requests_in_flight(self) -> int:
        """MCP requests being handled now (graceful shutdown waits for zero)."""
        return self._inflight

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def request_started(self) -> None:
        """An MCP request arrived."""
        self._inflight += 1
        self.inflight.inc()

    def request_finished(self) -> None:
        """An MCP request was answered."""
        self._inflight -= 1
        self.inflight.dec()

    def tool_called(self, tool: str, ok: bool, seconds: float) -> None:
        """One tool call ended."""
        label = tool if tool in self._tools else UNKNOWN_TOOL
        self.tool_calls.labels(label, "ok" if ok else "error").inc()
        self.tool_seconds.labels(label).observe(seconds)

    def llm_called(self, call: LLMCall) -> None:
        """One LLM call ended, answered or not."""
        self.llm_calls.labels(call.purpose, "ok" if call.ok else "error").inc()
        self.llm_tokens.labels(call.purpose, "prompt").inc(call.usage.prompt_tokens)
        self.llm_tokens.labels(call.purpose, "completion").inc(call.usage.completion_tokens)
        self.llm_tokens.labels(call.purpose, "cached").inc(call.usage.cached_tokens)
        self.llm_seconds.labels(call.purpose).observe(call.seconds)

    def turns_stored(self, turns: Sequence[Turn]) -> None:
        """Messages were stored: count them and their tokens before and after compression."""
        self.records_stored.labels("turn").inc(len(turns))
        self.turn_tokens.labels("original").inc(sum(turn.tokens_original for turn in turns))
        final = [turn for turn in turns if turn.compression != "deferred"]
        self.turn_tokens.labels("compressed").inc(sum(turn.tokens_compressed for turn in final))

    def turns_compressed(self, turns: Sequence[Turn]) -> None:
        """A buffer compressed turns stored earlier: count what extraction reads of them."""
        self.turn_tokens.labels("compressed").inc(sum(turn.tokens_compressed for turn in turns))

    def facts_stored(self, scope: Scope, count: int) -> None:
        """Extraction wrote `count` facts (in any scope: labels carry no user data)."""
        self.records_stored.labels("fact").inc(count)


class RequestMetrics(ServerMiddleware[Any]):
    """MCP middleware: requests in flight, and each tool call's outcome and duration."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Observe one inbound message; notifications pass through uncounted."""
        if ctx.request_id is None:
            return await call_next(ctx)
        tool = ctx.params.get("name") if ctx.method == "tools/call" and ctx.params else None
        started = time.perf_counter()
        ok = False
        self._metrics.request_started()
        try:
            result = await call_next(ctx)
            ok = not _is_tool_error(result)
            return result
        finally:
            self._metrics.request_finished()
            if isinstance(tool, str):
                self._metrics.tool_called(tool, ok, time.perf_counter() - started)


def _is_tool_error(result: HandlerResult) -> bool:
    # A tool error reaches the wire as a result with isError, as the model or as its wire dict.
    if isinstance(result, CallToolResult):
        return bool(result.is_error)
    return isinstance(result, dict) and result.get("isError") is True
