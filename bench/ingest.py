"""Ingest throughput through `Memory.add` with the real MiniLM embedder, batches of 32 messages.

The in-run baseline is the embedder alone (`embed_documents`) on the same batches: the
difference is what lexical encoding, payloads and the durable store write add.

    .venv/bin/python -m bench.ingest [--turns 2000] [--singles 20] [--data PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    BATCH,
    DEFAULT_DATA,
    Turn,
    batches,
    bench_env,
    haystack_turns,
    load_questions,
    machine_info,
    print_machine,
    print_table,
    settings_for,
    summary_ms,
    timed,
    write_results,
)
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope


def first_turns(data: Path, count: int) -> list[Turn]:
    """The first `count` haystack turns of the data set, in file order (users and assistants mixed)."""
    turns: list[Turn] = []
    for question in load_questions(data):
        turns.extend(haystack_turns(question)[0])
        if len(turns) >= count:
            break
    return turns[:count]


def main() -> None:
    """Measure batch ingest, the embedder alone, and single-message adds."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=2000, help="turns to ingest")
    parser.add_argument("--singles", type=int, default=20, help="single-message adds to time")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    info = machine_info()
    print_machine(info)
    print(f"benchmark settings: {bench_env()}")
    turns = first_turns(args.data, args.turns)
    chars = [len(t.content) for t in turns]
    print(f"{len(turns)} turns, {statistics.fmean(chars):.0f} characters on average, median {statistics.median(chars)}")

    with tempfile.TemporaryDirectory(prefix="lightmem-ingest-") as tmp:
        memory = Memory.open(settings_for(Path(tmp)))
        try:
            embedder = memory.embedder
            embedder.embed_documents([t.content for t in turns[:BATCH]])  # warm-up, not timed
            scope = Scope(user_id="ingest")
            embed_seconds = add_seconds = 0.0
            # Interleaved batch by batch, so load from other work on the machine hits both alike.
            for group in batches(turns):
                embed_seconds += timed(partial(embedder.embed_documents, [t.content for t in group]))[0]
                add_seconds += timed(partial(memory.add, [t.message() for t in group], scope))[0]

            # Short user turns, the typical live add: one message per call.
            shorts = [t for t in turns if t.role == "user" and len(t.content) < 300][: args.singles]
            single = Scope(user_id="single")
            single_adds = [timed(partial(memory.add, [t.message()], single))[0] for t in shorts]
            single_embeds = [timed(partial(embedder.embed_documents, [t.content]))[0] for t in shorts]
        finally:
            memory.close()

    results: dict[str, Any] = {
        "machine": info,
        "settings": bench_env(),
        "turns": len(turns),
        "batch": BATCH,
        "mean_chars": statistics.fmean(chars),
        "add_seconds": add_seconds,
        "embed_only_seconds": embed_seconds,
        "add_turns_per_s": len(turns) / add_seconds,
        "embed_only_turns_per_s": len(turns) / embed_seconds,
        "add_overhead_ratio": add_seconds / embed_seconds,
        "single_add": summary_ms(single_adds),
        "single_embed": summary_ms(single_embeds),
        "single_mean_chars": statistics.fmean(len(t.content) for t in shorts),
    }
    print(f"\nBatch ingest, {len(turns)} turns in batches of {BATCH}:")
    print_table(
        ["path", "seconds", "turns/s"],
        [
            ["Memory.add (embed + BM25 + store write)", add_seconds, results["add_turns_per_s"]],
            ["baseline: embed_documents only", embed_seconds, results["embed_only_turns_per_s"]],
        ],
    )
    print(f"Memory.add / embed-only time: {results['add_overhead_ratio']:.2f}x")
    mean_chars = results["single_mean_chars"]
    print(f"\nSingle-message add ({len(shorts)} short user turns, {mean_chars:.0f} chars on average):")
    print_table(
        ["path", "p50 ms", "p95 ms"],
        [
            ["Memory.add, 1 message", results["single_add"]["p50_ms"], results["single_add"]["p95_ms"]],
            ["baseline: embed 1 text", results["single_embed"]["p50_ms"], results["single_embed"]["p95_ms"]],
        ],
    )
    write_results("ingest", results)


if __name__ == "__main__":
    main()
