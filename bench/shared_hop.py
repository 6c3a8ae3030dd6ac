"""Several windows on one memory: what the hop through a front door costs, and how long a handover takes.

Two `lightmem-mcp` stdio servers on one data directory, each driven by the MCP SDK's stdio client:
the first owns the store, the second forwards to it. The same add and search calls are timed through
each, interleaved, in the same run; the difference is the hop (the local socket, JSON both ways,
the owner's dispatch). Then the owner is killed (SIGKILL) and the front door is called until a call
succeeds: the handover time, with the embedding model already loaded by the front door's warm standby.

    .venv/bin/python -m bench.shared_hop [--calls 300] [--handovers 3]

Targets (issue 12): the hop ≤ 2 ms p50; handover (kill to first successful call) ≤ 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench.common import machine_info, percentile, print_machine, print_table, server_env, write_results

SERVER = Path(sys.executable).with_name("lightmem-mcp")
# Long enough for the front door's warm standby to load the embedding model on a busy 2-core machine.
STANDBY_S = 20.0
TEXTS = [
    "We moved the staging database to the eu-west region last Tuesday.",
    "The flaky test in the payments module times out when the mock clock skips.",
    "I prefer pytest fixtures over setUp methods in new test files.",
    "Release 4.2 ships the new onboarding flow behind a feature flag.",
]


class Window:
    """A stdio server process, its pid, and the client driving it."""

    def __init__(self, client: Any, pid_file: Path) -> None:
        self.client = client
        self.pid_file = pid_file

    @property
    def pid(self) -> int:
        return int(self.pid_file.read_text())

    async def timed(self, tool: str, arguments: dict[str, Any]) -> float:
        started = time.perf_counter()
        result = await self.client.call_tool(tool, arguments)
        elapsed = time.perf_counter() - started
        if result.is_error:
            raise RuntimeError(f"{tool} failed: {result.content}")
        return elapsed


def _client(data_dir: Path, pid_file: Path, errlog: Any, warm_standby: bool = True) -> Any:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = server_env(
        data_dir,
        PATH=os.environ.get("PATH", ""),
        HF_HUB_OFFLINE="1",
        LIGHTMEM_SHARED_WARM_STANDBY="true" if warm_standby else "false",
    )
    params = StdioServerParameters(
        command="/bin/sh", args=["-c", f'echo $$ > "{pid_file}"; exec "{SERVER}"'], env=env, cwd=str(data_dir.parent)
    )
    return Client(stdio_client(params, errlog=errlog), mode="legacy", read_timeout_seconds=300)


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1000, 2),
        "p99": round(percentile(values, 99) * 1000, 2),
        "mean": round(statistics.fmean(values) * 1000, 2),
        "n": len(values),
    }


async def hop(calls: int, errlog: Any) -> dict[str, Any]:
    """Add and search p50 / p99 through the owner's own client and through a front door, interleaved."""
    with tempfile.TemporaryDirectory(prefix="lightmem-hop-") as tmp:
        data = Path(tmp) / "data"
        async with _client(data, Path(tmp) / "owner.pid", errlog) as owner_client:
            owner = Window(owner_client, Path(tmp) / "owner.pid")
            await owner.timed("stats", {})
            async with _client(data, Path(tmp) / "door.pid", errlog) as door_client:
                door = Window(door_client, Path(tmp) / "door.pid")
                await door.timed("stats", {})
                await anyio.sleep(STANDBY_S)  # let the standby model load, so it does not compete below
                memory_mb = {"owner": _rss_mb(owner.pid), "front door": _rss_mb(door.pid)}
                async with _client(data, Path(tmp) / "cold.pid", errlog, warm_standby=False) as cold_client:
                    cold = Window(cold_client, Path(tmp) / "cold.pid")
                    await cold.timed("stats", {})
                    await anyio.sleep(2)
                    memory_mb["front door without warm standby"] = _rss_mb(cold.pid)
                times: dict[str, dict[str, list[float]]] = {
                    "owner": {"add": [], "search": []},
                    "front door": {"add": [], "search": []},
                }
                for warm in range(20):
                    for w in (owner, door):
                        await w.timed("search_memory", {"query": TEXTS[warm % 4]})
                for n in range(calls):
                    pair = (owner, door) if n % 2 == 0 else (door, owner)
                    for w in pair:
                        name = "owner" if w is owner else "front door"
                        text = f"{TEXTS[n % 4]} ({name} {n})"
                        message = {"role": "user", "content": text}
                        times[name]["add"].append(await w.timed("add_memory", {"messages": [message]}))
                        query = {"query": TEXTS[(n + 1) % 4]}
                        times[name]["search"].append(await w.timed("search_memory", query))
    latency = {name: {tool: _ms(values) for tool, values in tools.items()} for name, tools in times.items()}
    return {"latency": latency, "rss_mb": memory_mb}


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a process (Linux), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


async def handover(errlog: Any, warm_standby: bool = True) -> dict[str, Any]:
    """Kill the owner; time until the front door's next call succeeds."""
    with tempfile.TemporaryDirectory(prefix="lightmem-handover-") as tmp:
        data = Path(tmp) / "data"
        async with _client(data, Path(tmp) / "owner.pid", errlog) as owner_client:
            owner = Window(owner_client, Path(tmp) / "owner.pid")
            await owner.timed("add_memory", {"messages": [{"role": "user", "content": TEXTS[0]}]})
            async with _client(data, Path(tmp) / "door.pid", errlog, warm_standby) as door_client:
                door = Window(door_client, Path(tmp) / "door.pid")
                await door.timed("stats", {})
                await anyio.sleep(STANDBY_S)
                killed = time.perf_counter()
                os.kill(owner.pid, signal.SIGKILL)
                attempts = 0
                while True:
                    attempts += 1
                    result = await door.client.call_tool("search_memory", {"query": "staging database region"})
                    if not result.is_error:
                        break
                seconds = time.perf_counter() - killed
                found = bool(result.structured_content and result.structured_content["hits"])
    return {
        "seconds": round(seconds, 3),
        "attempts": attempts,
        "memory_found_after": found,
        "warm_standby": warm_standby,
    }


async def main(calls: int, handovers: int) -> None:
    info = machine_info()
    print_machine(info)
    with open(os.devnull, "w") as errlog:
        measured_all = await hop(calls, errlog)
        takeovers = [await handover(errlog) for _ in range(handovers)]
        cold = await handover(errlog, warm_standby=False)
    measured = measured_all["latency"]
    rows = []
    for tool in ("add", "search"):
        owner, door = measured["owner"][tool], measured["front door"][tool]
        rows.append(
            [
                tool,
                owner["p50"],
                door["p50"],
                round(door["p50"] - owner["p50"], 2),
                owner["p99"],
                door["p99"],
                round(door["p99"] - owner["p99"], 2),
            ]
        )
    print_table(
        ["call", "owner p50 ms", "door p50 ms", "hop p50 ms", "owner p99 ms", "door p99 ms", "hop p99 ms"], rows
    )
    seconds = [t["seconds"] for t in takeovers]
    print(f"handover (kill -9 of the owner to the front door's first successful call): {seconds} s")
    print(f"the same without the warm standby (the model loaded at takeover): {cold['seconds']} s")
    print(f"resident memory (MB): {measured_all['rss_mb']}")
    write_results(
        "shared_hop",
        {"machine": info, "calls": calls, **measured_all, "handovers": takeovers, "cold_handover": cold},
    )
    print(json.dumps({"hop_p50_ms": {r[0]: r[3] for r in rows}, "handover_s": seconds}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="Adds and searches per window (default 300).")
    parser.add_argument("--handovers", type=int, default=3, help="Handovers to time (default 3).")
    args = parser.parse_args()
    anyio.run(main, args.calls, args.handovers)
