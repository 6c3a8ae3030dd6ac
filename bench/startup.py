"""Startup of `lightmem-mcp` over stdio: spawn to `initialize` answer, and spawn to first search result.

The server answers `initialize` before loading the model (that happens in the background),
so the first `search_memory` waits for the load. In-run baselines: spawning a bare Python
interpreter, and importing `lightmem_mcp.server` in a fresh interpreter.

    .venv/bin/python -m bench.startup [--runs 7] [--records 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    DEFAULT_DATA,
    batches,
    bench_env,
    haystack_turns,
    load_questions,
    machine_info,
    mcp_client,
    print_machine,
    print_table,
    server_env,
    settings_for,
    timed,
    write_results,
)
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope

USER = "startup"


def prepare(data_dir: Path, data: Path, records: int) -> str:
    """A store holding `records` real turns; returns a question to search with."""
    question = load_questions(data, 1)[0]
    turns = haystack_turns(question)[0][:records]
    memory = Memory.open(settings_for(data_dir))
    try:
        for batch in batches(turns):
            memory.add([t.message() for t in batch], Scope(user_id=USER))
    finally:
        memory.close()
    return str(question["question"])


async def one_start(data_dir: Path, query: str, log: Path) -> dict[str, float]:
    """Seconds from spawn to the initialize answer, to the first search result, and for a second search."""
    with log.open("a", encoding="utf-8") as errlog:
        began = time.perf_counter()
        async with mcp_client(server_env(data_dir), errlog) as client:
            initialized = time.perf_counter()
            first = await client.call_tool("search_memory", {"query": query, "user_id": USER})
            searched = time.perf_counter()
            await client.call_tool("search_memory", {"query": query, "user_id": USER})
            again = time.perf_counter()
    if first.is_error or not (first.structured_content or {}).get("hits"):
        raise RuntimeError(f"first search failed or found nothing: {first}")
    return {
        "initialize_s": initialized - began,
        "first_search_s": searched - began,
        "second_search_s": again - searched,
    }


def spawn_seconds(code: str) -> float:
    """Wall time of a fresh interpreter running `code`; it exits without teardown, as a served process never ends."""
    script = f"{code}\nimport os\nos._exit(0)"
    return timed(lambda: subprocess.run([sys.executable, "-c", script], check=True))[0]


def spread(name: str, values: list[float]) -> list[object]:
    """A table row: name, median, min, max."""
    return [name, statistics.median(values), min(values), max(values)]


def main() -> None:
    """Spawn the server `--runs` times and time each start."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="server starts to time (median reported)")
    parser.add_argument("--records", type=int, default=200, help="turns in the store searched")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    info = machine_info()
    print_machine(info)
    print(f"benchmark settings: {bench_env()}")
    with tempfile.TemporaryDirectory(prefix="lightmem-start-") as tmp:
        data_dir = Path(tmp)
        query = prepare(data_dir, args.data, args.records)
        log = data_dir / "server.log"
        runs = []
        for n in range(args.runs):
            runs.append(asyncio.run(one_start(data_dir, query, log)))
            print(f"run {n + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()))
    interpreter = [spawn_seconds("pass") for _ in range(args.runs)]
    imports = [spawn_seconds("import lightmem_mcp.server") for _ in range(args.runs)]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    results = {
        "machine": info,
        "settings": bench_env(),
        "runs": runs,
        "records": args.records,
        "median_initialize_s": median("initialize_s"),
        "median_first_search_s": median("first_search_s"),
        "median_second_search_s": median("second_search_s"),
        "baseline_python_spawn_s": statistics.median(interpreter),
        "baseline_import_server_s": statistics.median(imports),
    }
    print(f"\nStartup, median of {args.runs} runs (seconds):")
    print_table(
        ["measure", "median s", "min s", "max s"],
        [
            spread("spawn -> initialize answer", [r["initialize_s"] for r in runs]),
            spread("spawn -> first search_memory result", [r["first_search_s"] for r in runs]),
            spread("second search_memory (warm)", [r["second_search_s"] for r in runs]),
            spread("baseline: spawn `python -c pass`", interpreter),
            spread("baseline: `import lightmem_mcp.server`", imports),
        ],
    )
    verdict = "meets" if results["median_initialize_s"] < 2 else "misses"
    print(f"initialize in {results['median_initialize_s']:.2f} s: {verdict} the < 2 s target")
    write_results("startup", results)


if __name__ == "__main__":
    main()
