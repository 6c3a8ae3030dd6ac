"""add_memory latency with compression on vs off: what deferred compression leaves on the write path.

`Memory.add` stores each message as sent; LLMLingua-2 compression runs later, in the background,
when a buffer is flushed (compression, segmentation, extraction). This times `Memory.add` for one
exchange (a LongMemEval user turn and the assistant's reply, real text) in two stores, same texts,
same run:

- off: `CompressionSettings(enabled=False)`;
- on: compression with a `bert-base`-shaped random LLMLingua-2 model (tests/tiny_models.py: the
  real checkpoint's encoder size, so its cost is the real model's), loaded before timing.

Both have the scripted LLM configured (tests/openai_server.py, one fact per message, never out of
script) and the default buffer (512 tokens), so background flushes, with their compression in the
`on` store, run while the adds go on: the contention an agent's adds meet. Both use the real MiniLM
embedder (one instance). Adds go back to back (`--pace-ms` leaves a gap, like an agent's turn) in
blocks, alternating off / on, then on / off, so machine noise reaches both; each block starts with
both stores' background work drained (that wait is reported, untimed in the latencies). Every flush
is timed (through wrappers on the buffer instance), so the report says how much flush work, and of it
compression, really ran during the timed adds. At the end the buffers are drained and the `on`
store's turns counted by compression outcome.

    .venv/bin/python -m bench.write_path [--adds 300] [--block 25] [--warmup 20] [--pace-ms 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    haystack_turns,
    load_questions,
    machine_info,
    percentile,
    print_machine,
    print_table,
    write_results,
)
from bench.pipeline import exchanges, open_memory
from lightmem_mcp.api import FlushResult, Message
from lightmem_mcp.config import CompressionSettings, PipelineSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope, Turn
from tests.openai_server import FakeLLMServer, facts_per_message
from tests.tiny_models import build_tiny_llmlingua2

ANSWER = facts_per_message("The user said")
OFF, ON = "compression off", "compression on (bert-base)"


@dataclass
class Variant:
    """One store and what was measured on it."""

    name: str
    memory: Memory
    latencies_s: list[float] = field(default_factory=list)
    drain_s: float = 0.0
    turns: int = 0
    blocks: list[tuple[float, float]] = field(default_factory=list)  # timed add blocks (perf_counter)
    flushes: list[tuple[float, float]] = field(default_factory=list)  # every flush, background ones included
    compress_s: float = 0.0

    def watch(self) -> None:
        """Record when each buffer flush runs and how long its compression takes (instance wrappers)."""
        buffer = self.memory.buffer
        flush, compress = buffer.flush, buffer.compress

        def timed_flush(*args: Any, **kwargs: Any) -> FlushResult:
            began = time.perf_counter()
            try:
                return flush(*args, **kwargs)
            finally:
                self.flushes.append((began, time.perf_counter()))

        def timed_compress(*args: Any, **kwargs: Any) -> list[Turn]:
            began = time.perf_counter()
            try:
                return compress(*args, **kwargs)
            finally:
                self.compress_s += time.perf_counter() - began

        buffer.flush = timed_flush  # type: ignore[method-assign]
        buffer.compress = timed_compress  # type: ignore[method-assign]

    def overlap_s(self) -> float:
        """Seconds of flush work that ran while this store's timed adds ran."""
        return sum(
            max(0.0, min(f_end, b_end) - max(f_start, b_start))
            for f_start, f_end in self.flushes
            for b_start, b_end in self.blocks
        )


def exchange_adds(count: int) -> list[tuple[Scope, list[Message]]]:
    """The first `count` user + assistant exchanges of the haystacks, each haystack in its own scope."""
    adds: list[tuple[Scope, list[Message]]] = []
    for question in load_questions():
        messages = [turn.message() for turn in haystack_turns(question)[0]]
        for add in exchanges(messages):
            # One exchange: a user turn and the reply (a haystack's leading assistant turns are left out).
            if add[0].role == "user" and len(add) >= 2:
                adds.append((Scope(question["question_id"]), add[:2]))
                if len(adds) == count:
                    return adds
    return adds


def add_block(variant: Variant, adds: list[tuple[Scope, list[Message]]], pace_s: float, timed: bool) -> None:
    """Add the block's exchanges one after another, timing each `Memory.add` when `timed`."""
    block_start = time.perf_counter()
    for scope, messages in adds:
        started = time.perf_counter()
        variant.memory.add(messages, scope)
        if timed:
            variant.latencies_s.append(time.perf_counter() - started)
            variant.turns += len(messages)
        if pace_s:
            time.sleep(pace_s)
    if timed:
        variant.blocks.append((block_start, time.perf_counter()))


def drain(variant: Variant, timed: bool = True) -> None:
    """Wait for the store's background flushes; the wait is counted apart from the adds."""
    started = time.perf_counter()
    variant.memory.buffer.drain()
    if timed:
        variant.drain_s += time.perf_counter() - started


def summary(variant: Variant) -> dict[str, Any]:
    ms = [s * 1000 for s in variant.latencies_s]
    added = sum(variant.latencies_s)
    first = min(start for start, _ in variant.blocks)
    flushes = [(start, end) for start, end in variant.flushes if start >= first]
    block_s = sum(end - start for start, end in variant.blocks)
    return {
        "flushes": len(flushes),
        "flush_seconds": sum(end - start for start, end in flushes),
        "compress_seconds": variant.compress_s,
        "flush_overlap_seconds": variant.overlap_s(),
        "block_seconds": block_s,
        "busy_share_during_adds": variant.overlap_s() / block_s,
        "adds": len(ms),
        "turns": variant.turns,
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "max_ms": max(ms),
        "add_seconds": added,
        "drain_seconds": variant.drain_s,
        "adds_per_s": len(ms) / added,
        "turns_per_s_incl_background": variant.turns / (added + variant.drain_s),
    }


def outcomes(memory: Memory) -> dict[str, Any]:
    """The store's turns by compression outcome and stage, and its LLM calls (the usage ledger)."""
    turns = [Turn.read(p) for p in memory.store.scan(None) if p.payload.get("kind") == "turn"]
    scopes = {turn.scope for turn in turns}
    return {
        "compression": dict(Counter(turn.compression for turn in turns)),
        "stage": dict(Counter(turn.stage for turn in turns)),
        "llm_calls": sum(memory.stats(scope).llm_total.calls for scope in scopes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adds", type=int, default=300, help="timed exchanges per store")
    parser.add_argument("--block", type=int, default=25, help="exchanges per block; blocks alternate the stores")
    parser.add_argument("--warmup", type=int, default=20, help="untimed exchanges per store first")
    parser.add_argument("--pace-ms", type=float, default=0.0, help="pause after each add (an agent's turn)")
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)

    adds = exchange_adds(args.warmup + args.adds)
    warmup, timed = adds[: args.warmup], adds[args.warmup :]
    print(
        f"data: {len(adds)} LongMemEval exchanges (user turn + assistant reply) in {len({s for s, _ in adds})} "
        f"scopes, mean {statistics.fmean(sum(len(m.content) for m in a) for _, a in adds):.0f} characters each"
    )
    embedder = SentenceTransformerEmbedder(Settings().embedding)
    server = FakeLLMServer().start()
    server.script(*[ANSWER] * 100_000)
    results: dict[str, Any] = {"machine": info, "args": vars(args)}
    try:
        with tempfile.TemporaryDirectory(prefix="lightmem-bench-write-") as tmp:
            root = Path(tmp)
            vocabulary = "\n".join(m.content for _, a in adds for m in a)
            folder = build_tiny_llmlingua2(root / "models", extra_text=vocabulary, shape="bert-base")
            compressions = {
                OFF: CompressionSettings(enabled=False),
                ON: CompressionSettings(path=folder, device="cpu", allow_download=False),
            }
            variants = []
            for index, (name, compression) in enumerate(compressions.items()):
                settings = Settings(
                    store=StoreSettings(data_dir=root / f"store-{index}"),
                    compression=compression,
                    llm=server.settings(timeout_s=60.0),
                    pipeline=PipelineSettings(),
                )
                memory = open_memory(settings, embedder)
                began = time.perf_counter()
                status = memory.compressor.load()
                if name == ON:
                    if status != "ready":
                        raise SystemExit(f"the bert-base model did not load: {memory.compressor.reason}")
                    memory.compressor.compress(warmup[0][1][0].content)  # the first pass allocates
                    results["compressor"] = {**memory.compressor.describe(), "load_s": time.perf_counter() - began}
                variants.append(Variant(name, memory))
            for variant in variants:  # warm-up: first adds, first flush, segmentation encoders loaded
                variant.watch()
                add_block(variant, warmup, 0.0, timed=False)
                drain(variant, timed=False)
                variant.compress_s = 0.0

            blocks = [timed[i : i + args.block] for i in range(0, len(timed), args.block)]
            started = time.perf_counter()
            for number, block in enumerate(blocks):
                for variant in variants if number % 2 == 0 else variants[::-1]:
                    for other in variants:
                        drain(other)
                    add_block(variant, block, args.pace_ms / 1000, timed=True)
            for variant in variants:
                drain(variant)
            results["wall_s"] = time.perf_counter() - started
            results["variants"] = {v.name: {**summary(v), **outcomes(v.memory)} for v in variants}
            for variant in variants:
                variant.memory.close()
    finally:
        server.stop()
    if server.unexpected or server.broken:
        raise SystemExit(f"the scripted LLM failed: {len(server.unexpected)} unscripted, {server.broken[:1]}")

    off, on = results["variants"][OFF], results["variants"][ON]
    results["ratio_p50"] = on["p50_ms"] / off["p50_ms"]
    results["ratio_p99"] = on["p99_ms"] / off["p99_ms"]
    compressor = results["compressor"]
    print(
        f"compressor: {compressor['model']} on {compressor['device']}, loaded in {compressor['load_s']:.1f} s; "
        f"{len(blocks)} blocks of {args.block} exchanges per store, alternating, pace {args.pace_ms:g} ms, "
        f"{results['wall_s']:.0f} s in all"
    )
    print_table(
        [
            "store",
            "adds",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "mean ms",
            "max ms",
            "adds/s",
            "turns/s incl. background",
            "drain wait s",
            "LLM calls",
        ],
        [
            [
                name,
                v["adds"],
                f"{v['p50_ms']:.1f}",
                f"{v['p90_ms']:.1f}",
                f"{v['p99_ms']:.1f}",
                f"{v['mean_ms']:.1f}",
                f"{v['max_ms']:.1f}",
                f"{v['adds_per_s']:.2f}",
                f"{v['turns_per_s_incl_background']:.2f}",
                f"{v['drain_seconds']:.1f}",
                v["llm_calls"],
            ]
            for name, v in results["variants"].items()
        ],
    )
    print_table(
        ["store", "flushes", "flush s", "of which compression s", "flush s during timed adds", "busy share of adds"],
        [
            [
                name,
                v["flushes"],
                f"{v['flush_seconds']:.1f}",
                f"{v['compress_seconds']:.1f}",
                f"{v['flush_overlap_seconds']:.1f}",
                f"{v['busy_share_during_adds']:.0%}",
            ]
            for name, v in results["variants"].items()
        ],
    )
    print(
        f"on / off: p50 {results['ratio_p50']:.2f}x, p99 {results['ratio_p99']:.2f}x (target <= 1.2x); "
        f"mean {on['mean_ms'] / off['mean_ms']:.2f}x"
    )
    print(f"turns by compression at the end: on {on['compression']}; off {off['compression']}")
    print(f"turns by stage at the end: on {on['stage']}; off {off['stage']}")
    write_results("write_path", results)


if __name__ == "__main__":
    main()
