"""The client-side rate limiter against a rate-limited LLM provider: turns kept, 429s, requests per window.

A scripted OpenAI-compatible server plays a provider that allows `--limit` answered requests in any
`--window` seconds and answers a 429 (with `retry-after-ms`, as OpenAI sends it) to any request beyond
that. Minutes are scaled down to that window so the run takes about a minute: the limiter gets the
same `--limit` per `--window` that LIGHTMEM_LLM_REQUESTS_PER_MINUTE would give it per minute.

A Memory (extraction on, a small buffer so that many LLM calls are made, the turns spread over a few
scopes so that the background workers call the LLM at once) is fed LongMemEval turns, then every scope
is flushed; once with the limiter on and once off, in the same run. Reported: turns acknowledged by
`add` and what became of them (extracted, pending, skipped: assistant turns feed no extraction; lost
must be 0), LLM calls answered and given up, requests the server received, 429s, and the most requests
that arrived in any window against the limit.

    python -m bench.ratelimit --turns 300
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from bench.common import haystack_turns, load_questions, machine_info, print_machine, print_table, write_results
from bench.pipeline import exchanges, one_fact_per_message
from lightmem_mcp.api import Message
from lightmem_mcp.config import CompressionSettings, PipelineSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.events import MemoryObserver
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.ratelimit import RateLimiter
from lightmem_mcp.records import LLMCall, RecordFilter, Scope
from lightmem_mcp.store.edge import EdgeStore
from tests.openai_server import ChatRequest, FakeLLMServer, Reply


class ThrottlingServer(FakeLLMServer):
    """The scripted server as a rate-limited provider: at most `limit` answered requests in any
    `window_s`; a request beyond that gets a 429 saying when a slot frees (refused ones do not count)."""

    def __init__(self, limit: int, window_s: float) -> None:
        super().__init__()
        self.limit = limit
        self.window_s = window_s
        self.arrivals: list[float] = []
        self.throttled = 0
        self._answered: deque[float] = deque()
        self._window_lock = threading.Lock()

    def _next(self, request: ChatRequest) -> Reply:
        now = time.monotonic()
        with self._window_lock:
            self.requests.append(request)
            self.arrivals.append(now)
            while self._answered and self._answered[0] <= now - self.window_s:
                self._answered.popleft()
            if len(self._answered) >= self.limit:
                self.throttled += 1
                wait_ms = max(1, math.ceil((self._answered[0] + self.window_s - now) * 1000))
                return Reply(content="rate limit reached", status=429, headers={"retry-after-ms": str(wait_ms)})
            self._answered.append(now)
        return Reply.computed(one_fact_per_message)

    def max_in_window(self) -> int:
        """The most requests, answered or refused, that arrived within any `window_s`."""
        times = sorted(self.arrivals)
        most = start = 0
        for end, at in enumerate(times):
            while times[start] <= at - self.window_s:
                start += 1
            most = max(most, end - start + 1)
        return most


class CallCount(MemoryObserver):
    """LLM calls answered and given up (after their retries), and the attempts they made."""

    def __init__(self) -> None:
        self.ok = self.failed = self.attempts = 0
        self._lock = threading.Lock()

    def llm_called(self, call: LLMCall) -> None:
        """Count the call."""
        with self._lock:
            if call.ok:
                self.ok += 1
            else:
                self.failed += 1
            self.attempts += call.attempts


def bench_turns(questions: list[dict[str, Any]], count: int, scopes: int) -> list[tuple[Scope, list[Message]]]:
    """The first `count` turns of the haystacks as adds (one exchange each), sessions dealt round the scopes."""
    adds: list[tuple[Scope, list[Message]]] = []
    taken = 0
    sessions: dict[str, list[Message]] = {}
    for question in questions:
        for turn in haystack_turns(question)[0]:
            if taken == count:
                break
            sessions.setdefault(turn.session_id, []).append(turn.message())
            taken += 1
    for index, messages in enumerate(sessions.values()):
        scope = Scope(f"ratelimit-{index % scopes}")
        adds.extend((scope, add) for add in exchanges(messages))
    return adds


def run(
    adds: list[tuple[Scope, list[Message]]],
    embedder: SentenceTransformerEmbedder,
    root: Path,
    args: argparse.Namespace,
    limited: bool,
) -> dict[str, Any]:
    """Add every turn, wait for the background extraction, flush every scope; what became of the turns."""
    server = ThrottlingServer(args.limit, args.window).start()
    calls = CallCount()
    try:
        settings = Settings(
            store=StoreSettings(data_dir=root / ("on" if limited else "off")),
            compression=CompressionSettings(enabled=False),
            llm=server.settings(timeout_s=60.0, max_retries=4, retry_base_delay_s=0.5),
            pipeline=PipelineSettings(buffer_tokens=args.buffer_tokens),
        )
        lexical = LexicalEncoder()
        store = EdgeStore(settings.store.embedded_path, store_layout(embedder, lexical))
        memory = Memory(settings, embedder, store, lexical, observers=[calls])
        if limited:
            # The settings' limits are per minute; the server's minute is `window` seconds here.
            memory.llm.limiter = RateLimiter(args.limit, 0, period_s=args.window)
        acknowledged: dict[Scope, list[str]] = {}
        started = time.perf_counter()
        for scope, add in adds:
            acknowledged.setdefault(scope, []).extend(memory.add(add, scope).ids)
        memory.buffer.drain()
        flush_errors = [error for scope in acknowledged if (error := memory.flush(scope).error)]
        seconds = time.perf_counter() - started
        stages = {"extracted": 0, "pending": 0, "skipped": 0}
        stored = 0
        for scope, ids in acknowledged.items():
            mine = RecordFilter(scope.user_id, kinds=("turn",), ids=tuple(ids))
            stored += memory.store.count(mine)
            for stage in stages:
                stages[stage] += memory.store.count(
                    RecordFilter(scope.user_id, kinds=("turn",), ids=tuple(ids), stages=(stage,))
                )
        memory.close()
    finally:
        server.stop()
    added = sum(len(ids) for ids in acknowledged.values())
    return {
        "limiter": f"{args.limit} per {args.window:g} s" if limited else "off",
        "turns_added": added,
        "turns_stored": stored,
        **{f"turns_{stage}": n for stage, n in stages.items()},
        "turns_lost": added - sum(stages.values()),
        "llm_calls_ok": calls.ok,
        "llm_calls_given_up": calls.failed,
        "flush_errors": len(flush_errors),
        "requests": len(server.requests),
        "http_429": server.throttled,
        "max_requests_in_window": server.max_in_window(),
        "limit_per_window": args.limit,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=300, help="LongMemEval turns to add")
    parser.add_argument("--scopes", type=int, default=4, help="Scopes the sessions are dealt to")
    parser.add_argument("--buffer-tokens", type=int, default=128, help="LIGHTMEM_PIPELINE_BUFFER_TOKENS")
    parser.add_argument("--limit", type=int, default=4, help="Requests the server answers per window")
    parser.add_argument("--window", type=float, default=2.0, help="The server's window, seconds (a scaled minute)")
    args = parser.parse_args()
    # Each 429 would log a retry warning; the table counts them instead.
    logging.getLogger("lightmem_mcp.llm").setLevel(logging.ERROR)
    info = machine_info()
    print_machine(info)
    adds = bench_turns(load_questions(limit=2), args.turns, args.scopes)
    embedder = SentenceTransformerEmbedder(Settings().embedding)
    with tempfile.TemporaryDirectory(prefix="lightmem-bench-") as tmp:
        results = [run(adds, embedder, Path(tmp), args, limited) for limited in (True, False)]

    print(
        f"\n{args.turns} LongMemEval turns over {args.scopes} scopes, buffer {args.buffer_tokens} tokens; the server "
        f"answers {args.limit} requests per {args.window:g} s window and refuses the rest with a 429"
    )
    print_table(
        [
            "limiter",
            "turns added",
            "extracted",
            "pending",
            "skipped (assistant)",
            "lost",
            "calls ok / given up",
            "requests",
            "429s",
            "max requests in a window (limit)",
            "seconds",
        ],
        [
            [
                r["limiter"],
                r["turns_added"],
                r["turns_extracted"],
                r["turns_pending"],
                r["turns_skipped"],
                r["turns_lost"],
                f"{r['llm_calls_ok']} / {r['llm_calls_given_up']}",
                r["requests"],
                r["http_429"],
                f"{r['max_requests_in_window']} ({r['limit_per_window']})",
                f"{r['seconds']:.1f}",
            ]
            for r in results
        ],
    )
    write_results("ratelimit", {"machine": info, "args": vars(args), "runs": results})


if __name__ == "__main__":
    main()
