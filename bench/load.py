"""Load over loopback: concurrent MCP clients mixing add_memory and search_memory against one server.

For each transport (streamable HTTP at /mcp, SSE at /sse) and each client count, a fresh
`lightmem-mcp serve --transport http|sse` subprocess on 127.0.0.1 serves a copy of the same seeded
store, with bearer-token auth on (one token per tenant, as a hosted deployment runs). Each client
is its own MCP session (`streamable_http_client` or `sse_client` + `ClientSession`) acting for one
of the tenants, and loops over 1 add_memory (one short real user message) : 3 search_memory (a
LongMemEval question, top 10), until the duration or the call budget is spent. Calls are timed
at the client; clients connect and make one untimed search before the clock starts.

Baseline, measured in the same run on a copy of the same store: the same mix from one client in
the bench process through `mcp.Client(server)` (in-process: no HTTP, no auth, no second process).

    .venv/bin/python -m bench.load [--clients 1,8,32] [--transports http,sse] [--duration 30] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx2
from mcp import Client, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from bench.common import (
    DEFAULT_DATA,
    batches,
    bench_env,
    haystack_turns,
    load_questions,
    machine_info,
    percentile,
    print_machine,
    print_table,
    server_env,
    settings_for,
    write_results,
)
from lightmem_mcp.api import Message
from lightmem_mcp.auth import new_token, token_line
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope
from lightmem_mcp.server import build_server

SEARCHES_PER_ADD = 3
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
MIN_CHARS, MAX_CHARS = 20, 300  # "short messages": chat-sized user turns


@dataclass(frozen=True)
class Workload:
    """What the clients send: tenants, the messages they add, the questions they search."""

    tenants: list[str]
    adds: list[tuple[str, str]]  # (content, timestamp)
    queries: list[str]


@dataclass
class Budget:
    """When clients stop: a deadline and a call count, whichever comes first."""

    duration: float
    calls_left: int
    started: float | None = None
    deadline: float = float("inf")

    def start(self) -> None:
        """Start the clock, once: the first client past the barrier does it."""
        if self.started is None:
            self.started = time.perf_counter()
            self.deadline = self.started + self.duration

    def take(self) -> bool:
        """Claim one call; False once time or calls are spent."""
        if time.perf_counter() >= self.deadline or self.calls_left <= 0:
            return False
        self.calls_left -= 1
        return True


@dataclass
class CallLog:
    """Client-side seconds per tool, and the errors (exceptions and tool errors)."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {"add_memory": [], "search_memory": []})
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    last_done: float = 0.0

    def error(self, where: str, message: str) -> None:
        """Count an error; keep the first few messages."""
        self.errors[where] = self.errors.get(where, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{where}: {message[:300]}")


class Caller(Protocol):
    """Either an MCP `ClientSession` or the in-process `mcp.Client`."""

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> CallToolResult: ...


# -- workload --------------------------------------------------------------------------


def build_workload(data: Path, tenants: int, seed: int = 0) -> Workload:
    """Short distinct user turns (shuffled) and the questions of the data set."""
    questions = load_questions(data)
    turns: dict[str, tuple[str, str]] = {}
    for question in questions:
        for turn in haystack_turns(question)[0]:
            if turn.role == "user" and MIN_CHARS <= len(turn.content) <= MAX_CHARS:
                turns.setdefault(turn.content, (turn.content, turn.timestamp))
    pool = sorted(turns.values())
    random.Random(seed).shuffle(pool)
    names = [f"load-{i}" for i in range(tenants)]
    return Workload(names, pool, [q["question"] for q in questions])


def seed_store(data_dir: Path, workload: Workload, per_tenant: int) -> Workload:
    """Store `per_tenant` messages in each tenant through `Memory.add`; the workload of the messages left."""
    memory = Memory.open(settings_for(data_dir))
    try:
        for number, tenant in enumerate(workload.tenants):
            mine = workload.adds[number * per_tenant : (number + 1) * per_tenant]
            messages = [
                Message(role="user", content=content, id=f"seed-{i}", timestamp=stamp)
                for i, (content, stamp) in enumerate(mine)
            ]
            for part in batches(messages):
                memory.add(part, Scope(user_id=tenant))
    finally:
        memory.close()
    return Workload(workload.tenants, workload.adds[len(workload.tenants) * per_tenant :], workload.queries)


# -- clients ---------------------------------------------------------------------------


async def client_loop(
    caller: Caller, index: int, workload: Workload, budget: Budget, log: CallLog, user_id: str | None
) -> None:
    """1 add : SEARCHES_PER_ADD searches, offset by client so adds are spread over time, until the budget ends."""
    rng = random.Random(index)
    step = index
    scope = _scope(user_id)
    arguments: dict[str, Any]
    budget.start()
    while budget.take():
        if step % (SEARCHES_PER_ADD + 1) == 0:
            content, stamp = workload.adds[rng.randrange(len(workload.adds))]
            message = {"role": "user", "content": content, "id": f"c{index}-{step}", "timestamp": stamp}
            tool, arguments = "add_memory", {"messages": [message], **scope}
        else:
            tool, arguments = "search_memory", {"query": rng.choice(workload.queries), "limit": 10, **scope}
        step += 1
        began = time.perf_counter()
        try:
            result = await caller.call_tool(tool, arguments)
        except Exception as exc:  # a failed call is a figure of the run, not the end of it
            log.error(tool, f"{type(exc).__name__}: {exc}")
            continue
        done = time.perf_counter()
        log.last_done = max(log.last_done, done)
        if result.is_error:
            log.error(tool, str(getattr(result.content[0], "text", "")) if result.content else "tool error")
        else:
            log.seconds[tool].append(done - began)


async def run_clients(
    connections: Sequence[AbstractAsyncContextManager[Caller]],
    workload: Workload,
    duration: float,
    max_calls: int,
    user_ids: Sequence[str | None],
) -> tuple[CallLog, float]:
    """One client per connection; returns the log and the seconds from the start to the last answer.

    Clients connect and make one untimed search, then wait at a barrier, so the clock measures only
    the steady state.
    """
    log = CallLog()
    budget = Budget(duration, max_calls)
    barrier = asyncio.Barrier(len(connections))
    failed_to_connect = 0

    async def one(index: int) -> None:
        nonlocal failed_to_connect
        arrived = False
        try:
            async with connections[index] as caller:
                await caller.call_tool("search_memory", {"query": workload.queries[0], **_scope(user_ids[index])})
                arrived = True
                await barrier.wait()
                await client_loop(caller, index, workload, budget, log, user_ids[index])
        except Exception as exc:
            log.error("session", f"{type(exc).__name__}: {exc}")
            if not arrived:
                failed_to_connect += 1
                await barrier.wait()

    async with asyncio.TaskGroup() as group:
        for index in range(len(connections)):
            group.create_task(one(index))
    if failed_to_connect:
        log.errors["clients_not_connected"] = failed_to_connect
    start = budget.started
    return log, (log.last_done - start if start is not None and log.last_done > start else 0.0)


def _scope(user_id: str | None) -> dict[str, str]:
    """The user_id argument in-process; none over HTTP, where the bearer token names the tenant."""
    return {"user_id": user_id} if user_id is not None else {}


@asynccontextmanager
async def http_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    """A streamable HTTP session at `url`, sending the bearer token."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=300)) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def sse_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    """An SSE session at `url`, sending the bearer token."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        sse_client(url, headers=headers, timeout=60, sse_read_timeout=300) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


# -- the server ------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def server_process(
    transport: str, data_dir: Path, token_lines: str, log_path: Path
) -> AsyncIterator[tuple[str, int]]:
    """`lightmem-mcp serve --transport <transport>` on a free loopback port, ready; yields its base URL and pid."""
    port = free_port()
    env = {
        **os.environ,
        **server_env(data_dir, LIGHTMEM_AUTH_MODE="tokens", LIGHTMEM_AUTH_TOKENS=token_lines),
    }
    command = [sys.executable, "-m", "lightmem_mcp", "serve", "--transport", transport]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(f"{base}/readyz", process, log_path)
        yield base, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll /readyz (model loaded, store open) until 200."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx2.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {READY_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-3000:]}")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- configurations --------------------------------------------------------------------


def summarize(label: str, transport: str, clients: int, log: CallLog, seconds: float) -> dict[str, Any]:
    """Throughput, per-tool percentiles and errors of one configuration."""
    calls = sum(len(v) for v in log.seconds.values())
    tools: dict[str, dict[str, float]] = {}
    for tool, values in log.seconds.items():
        ms = [s * 1000 for s in values]
        tools[tool] = {"n": len(ms), **{f"p{p}_ms": percentile(ms, p) for p in (50, 95, 99)}} if ms else {"n": 0}
    return {
        "label": label,
        "transport": transport,
        "clients": clients,
        "calls": calls,
        "seconds": seconds,
        "calls_per_s": calls / seconds if seconds else 0.0,
        "tools": tools,
        "errors": sum(log.errors.values()),
        "errors_by_kind": log.errors,
        "error_samples": log.error_samples,
    }


BASELINE = "baseline: in-process mcp.Client, 1 client"


async def run_baseline(
    data_dir: Path, workload: Workload, duration: float, max_calls: int
) -> tuple[CallLog, dict[str, Any]]:
    """The same mix from one client, in-process through `mcp.Client(server)`: its log and its summary."""
    settings = settings_for(data_dir)
    # The server configures the process's logging at its level: at INFO, every client request would be logged here.
    server = build_server(
        settings.model_copy(update={"server": settings.server.model_copy(update={"log_level": "WARNING"})})
    )
    cpu = self_cpu_seconds()
    log, seconds = await run_clients(
        [Client(server, mode="legacy")], workload, duration, max_calls, [workload.tenants[0]]
    )
    result = summarize(BASELINE, "in-process", 1, log, seconds)
    result["bench_process_cpu_s"] = self_cpu_seconds() - cpu
    return log, result


def merge_baselines(runs: Sequence[tuple[CallLog, dict[str, Any]]]) -> dict[str, Any]:
    """One baseline from the calls of every baseline run (before and after the configurations)."""
    merged = CallLog()
    for log, _ in runs:
        for tool, values in log.seconds.items():
            merged.seconds[tool].extend(values)
        for kind, count in log.errors.items():
            merged.errors[kind] = merged.errors.get(kind, 0) + count
        merged.error_samples.extend(log.error_samples)
    summaries = [summary for _, summary in runs]
    result = summarize(BASELINE, "in-process", 1, merged, sum(s["seconds"] for s in summaries))
    result["bench_process_cpu_s"] = sum(s["bench_process_cpu_s"] for s in summaries)
    result["runs"] = summaries
    return result


async def run_config(
    transport: str, clients: int, data_dir: Path, workload: Workload, tokens: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """One server process, `clients` sessions spread over the tenants, the mix for the duration."""
    lines = "\n".join(token_line(token, tenant, ["read", "write"]) for tenant, token in tokens.items())
    log_path = data_dir.parent / "server.log"
    async with server_process(transport, data_dir, lines, log_path) as (base, pid):
        url = f"{base}/mcp" if transport == "http" else f"{base}/sse"
        opener = http_session if transport == "http" else sse_session
        tenants = [workload.tenants[i % len(workload.tenants)] for i in range(clients)]
        sessions = [opener(url, tokens[tenant]) for tenant in tenants]
        server_cpu, own_cpu = process_cpu_seconds(pid), self_cpu_seconds()
        log, seconds = await run_clients(sessions, workload, args.duration, args.max_calls, [None] * clients)
        result = summarize(f"{transport}, {clients} clients", transport, clients, log, seconds)
        result["server_cpu_s"] = process_cpu_seconds(pid) - server_cpu
        result["bench_process_cpu_s"] = self_cpu_seconds() - own_cpu
    if result["errors"]:
        print(f"server log, {result['label']} (end):\n{log_path.read_text(errors='replace')[-2000:]}")
    return result


def main() -> None:
    """Seed, run the baseline and every configuration, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", help="client counts, comma-separated (default 1,8,32; --quick 8,32)")
    parser.add_argument("--transports", default="http,sse", help="http, sse or both")
    parser.add_argument("--duration", type=float, help="seconds per configuration (default 30; --quick 5)")
    parser.add_argument("--max-calls", type=int, default=20000, help="most calls per configuration")
    parser.add_argument("--tenants", type=int, default=8, help="tenants (tokens); clients are spread over them")
    parser.add_argument(
        "--seed-per-tenant", type=int, help="messages stored per tenant first (default 100; --quick 20)"
    )
    parser.add_argument("--quick", action="store_true", help="a short run: the --quick defaults above")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    quick = args.quick
    args.clients = args.clients or ("8,32" if quick else "1,8,32")
    args.duration = args.duration if args.duration is not None else (5.0 if quick else 30.0)
    args.seed_per_tenant = args.seed_per_tenant if args.seed_per_tenant is not None else (20 if quick else 100)
    counts = [int(c) for c in args.clients.split(",") if c]
    transports = [t for t in args.transports.split(",") if t]

    info = machine_info()
    print_machine(info)
    print(f"benchmark settings: {bench_env()}")
    workload = build_workload(args.data, args.tenants)
    tokens = {tenant: new_token() for tenant in workload.tenants}
    configs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lightmem-load-") as tmp:
        root = Path(tmp)
        template = root / "template"
        began = time.perf_counter()
        seeded = len(workload.tenants) * args.seed_per_tenant
        workload = seed_store(template, workload, args.seed_per_tenant)
        print(f"seeded {seeded} messages over {len(workload.tenants)} tenants in {time.perf_counter() - began:.1f} s")

        baselines = []

        def baseline_run(name: str) -> None:
            copy = root / name / "data"
            shutil.copytree(template, copy)
            baselines.append(asyncio.run(run_baseline(copy, workload, args.duration, args.max_calls)))
            _progress(baselines[-1][1], name)

        # Before and after the configurations: the cores are shared, and drift shows as a gap between the two.
        baseline_run("baseline-before")
        for transport in transports:
            for clients in counts:
                copy = root / f"{transport}-{clients}" / "data"
                shutil.copytree(template, copy)
                result = asyncio.run(run_config(transport, clients, copy, workload, tokens, args))
                _progress(result)
                configs.append(result)
        baseline_run("baseline-after")
        baseline = merge_baselines(baselines)

    report(baseline, configs)
    info["loadavg_at_end"] = list(os.getloadavg())
    print(f"load average at end {info['loadavg_at_end']}")
    write_results(
        "load",
        {
            "machine": info,
            "settings": bench_env(),
            "mix": f"1 add_memory (1 short user message) : {SEARCHES_PER_ADD} search_memory (top 10)",
            "duration_s": args.duration,
            "max_calls": args.max_calls,
            "tenants": len(workload.tenants),
            "seeded_messages": seeded,
            "baseline": baseline,
            "configs": configs,
        },
    )


def _progress(result: dict[str, Any], label: str | None = None) -> None:
    search = result["tools"]["search_memory"].get("p50_ms", float("nan"))
    print(
        f"{label or result['label']}: {result['calls']} calls in {result['seconds']:.1f} s "
        f"({result['calls_per_s']:.1f}/s, search p50 {search:.1f} ms), errors {result['errors']}",
        flush=True,
    )


def report(baseline: dict[str, Any], configs: Sequence[dict[str, Any]]) -> None:
    """The load table, with ratios against the in-process baseline."""

    def p(result: dict[str, Any], tool: str, q: int) -> float:
        return float(result["tools"][tool].get(f"p{q}_ms", float("nan")))

    rows = []
    for r in [baseline, *configs]:
        rows.append(
            [
                r["label"],
                r["calls"],
                r["calls_per_s"],
                r["calls_per_s"] / baseline["calls_per_s"] if baseline["calls_per_s"] else float("nan"),
                p(r, "add_memory", 50),
                p(r, "add_memory", 95),
                p(r, "add_memory", 99),
                p(r, "search_memory", 50),
                p(r, "search_memory", 95),
                p(r, "search_memory", 99),
                p(r, "search_memory", 50) / p(baseline, "search_memory", 50),
                r["errors"],
                r.get("server_cpu_s", float("nan")) / r["seconds"] if r["seconds"] else float("nan"),
                r["bench_process_cpu_s"] / r["seconds"] if r["seconds"] else float("nan"),
            ]
        )
    print(f"\nLoad, 1 add : {SEARCHES_PER_ADD} searches, latencies in ms at the client (baseline: both runs merged):")
    print_table(
        [
            "configuration",
            "calls",
            "calls/s",
            "calls/s vs baseline",
            "add p50",
            "add p95",
            "add p99",
            "search p50",
            "search p95",
            "search p99",
            "search p50 vs baseline",
            "errors",
            "server CPU (cores)",
            "bench process CPU (cores)",
        ],
        rows,
    )
    for name, run in zip(("before", "after"), baseline.get("runs", []), strict=False):
        search = run["tools"]["search_memory"].get("p50_ms", float("nan"))
        print(f"baseline run {name} the configurations: {run['calls_per_s']:.1f} calls/s, search p50 {search:.1f} ms")
    for r in [baseline, *configs]:
        for sample in r["error_samples"]:
            print(f"  {r['label']}: {sample}")


if __name__ == "__main__":
    main()
