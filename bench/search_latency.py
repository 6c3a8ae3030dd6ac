"""Search latency at 1k / 10k / 100k records in one scope, and in one of 10 scopes of 10k.

Measured per point, with the same queries (LongMemEval questions, cycled):
  * baseline: `embed_query` + a raw Qdrant Edge dense query with the user_id filter on the shard;
  * in-process: `Memory.search` (hybrid, the default; dense too, to separate fusion from overhead);
  * MCP: a `search_memory` call to a spawned `lightmem-mcp` over stdio, round trip.

Embedding 100k real texts takes hours on 2 CPU cores, so the store is filled through the
real `Memory.add` path by `PooledEmbedder`: a pool of real turns is embedded once with the
real MiniLM, and each stored record gets its pooled text's vector plus small gaussian noise.
Queries always use the real embedder.

    .venv/bin/python -m bench.search_latency [--sizes 1000,10000,100000] [--scopes 10x10000] [--queries 240]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import qdrant_edge as qe

from bench.common import (
    DEFAULT_DATA,
    RESULTS,
    Turn,
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
    summary_ms,
    write_results,
)
from lightmem_mcp.api import Message
from lightmem_mcp.config import Settings
from lightmem_mcp.embedder import MINILM, Embedder, SentenceTransformerEmbedder
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope
from lightmem_mcp.store import open_store
from lightmem_mcp.store.edge import EdgeStore
from lightmem_mcp.store.schema import DENSE, TENANT_FIELD, StoreLayout

FILL_BATCH = 200  # the most messages one add call takes by default
WARMUP = 20
NOISE = 0.01  # per-component sigma: a noisy copy keeps cosine ~0.98 with its source vector


class PooledEmbedder:
    """Bench-only `Embedder`: the real MiniLM vector of a pooled text, plus gaussian noise, renormalised."""

    id = MINILM
    dimension = 384
    device = "cpu"
    location: str | None = None

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, seed: int = 0) -> None:
        self._index = {text: row for row, text in enumerate(texts)}
        self._vectors = vectors
        self._rng = np.random.default_rng(seed)

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Noisy copies of the pooled vectors; texts must come from the pool."""
        base = self._vectors[[self._index[t] for t in texts]]
        noisy = base + self._rng.normal(0.0, NOISE, base.shape)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        return cast(list[list[float]], noisy.tolist())

    def embed_query(self, text: str) -> list[float]:
        """Same as a document."""
        return self.embed_documents([text])[0]


def pool_turns(questions: Sequence[dict[str, Any]], size: int, seed: int = 0) -> list[Turn]:
    """A seeded sample of distinct haystack turns."""
    distinct: dict[str, Turn] = {}
    for question in questions:
        for turn in haystack_turns(question)[0]:
            distinct.setdefault(turn.content, turn)
    turns = sorted(distinct.values(), key=lambda t: t.id)
    return random.Random(seed).sample(turns, min(size, len(turns)))


def pool_vectors(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Real MiniLM vectors of the pool, cached under bench/results/ (keyed by the texts)."""
    digest = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
    cache = RESULTS / "cache" / f"pool-{len(texts)}-{digest}.npy"
    if cache.exists():
        print(f"pool vectors from cache {cache}")
        return np.asarray(np.load(cache), dtype=np.float32)
    start = time.perf_counter()
    vectors = np.asarray(embedder.embed_documents(texts), dtype=np.float32)
    print(f"embedded the pool of {len(texts)} turns in {time.perf_counter() - start:.0f} s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def fill(memory: Memory, pool: Sequence[Turn], user_id: str, start: int, stop: int) -> float:
    """Add records `start`..`stop` of a scope through `Memory.add`; returns seconds."""
    scope = Scope(user_id=user_id)
    began = time.perf_counter()
    for chunk in batches(range(start, stop), FILL_BATCH):
        messages = []
        for i in chunk:
            turn = pool[i % len(pool)]
            messages.append(Message(role=turn.role, content=turn.content, id=f"r{i}", timestamp=turn.timestamp))
        memory.add(messages, scope)
    return time.perf_counter() - began


def raw_dense_query(store: EdgeStore, vector: list[float], user_id: str, limit: int = 10) -> list[Any]:
    """The baseline: one dense query with the tenant filter, straight on the Edge shard."""
    shard: qe.EdgeShard = store._shard  # the benchmark wants the engine itself, without the service
    flt = qe.Filter(must=[qe.FieldCondition(TENANT_FIELD, match=qe.MatchValue(user_id))])
    request = qe.QueryRequest(limit=limit, query=qe.Query.Nearest(vector, using=DENSE), filter=flt, with_payload=True)
    return shard.query(request)


def measure_in_process(memory: Memory, queries: Sequence[str], user_id: str) -> dict[str, dict[str, float]]:
    """Baseline, hybrid and dense latencies, interleaved query by query so load drifts hit all alike."""
    scope = Scope(user_id=user_id)
    store = cast(EdgeStore, memory.store)
    timings: dict[str, list[float]] = {"baseline": [], "hybrid": [], "dense": []}

    def baseline(q: str) -> None:
        raw_dense_query(store, memory.embedder.embed_query(q), user_id)

    calls: dict[str, Callable[[str], object]] = {
        "baseline": baseline,
        "hybrid": lambda q: memory.search(q, scope, 10, mode="hybrid"),
        "dense": lambda q: memory.search(q, scope, 10, mode="dense"),
    }
    for q in queries[:WARMUP]:
        for call in calls.values():
            call(q)
    for n, q in enumerate(queries):
        names = list(calls) if n % 2 == 0 else list(reversed(calls))
        for name in names:
            began = time.perf_counter()
            calls[name](q)
            timings[name].append(time.perf_counter() - began)
    return {name: summary_ms(values) for name, values in timings.items()}


async def measure_mcp(data_dir: Path, queries: Sequence[str], user_id: str, log: Path) -> dict[str, float]:
    """search_memory round trips to a spawned server on `data_dir`, after its model has loaded."""
    timings = []
    with log.open("a", encoding="utf-8") as errlog:
        async with mcp_client(server_env(data_dir), errlog) as client:
            for q in queries[:WARMUP]:
                await client.call_tool("search_memory", {"query": q, "user_id": user_id})
            for q in queries:
                began = time.perf_counter()
                result = await client.call_tool("search_memory", {"query": q, "user_id": user_id, "limit": 10})
                timings.append(time.perf_counter() - began)
                if result.is_error or not (result.structured_content or {}).get("hits"):
                    raise RuntimeError(f"search_memory failed or found nothing: {result}")
    return summary_ms(timings)


def run_point(
    label: str, settings: Settings, layout: StoreLayout, real: Embedder, queries: Sequence[str], user_id: str, log: Path
) -> dict[str, Any]:
    """Measure one store state: in-process (store opened here), then MCP (store handed to the server)."""
    memory = Memory(settings, real, open_store(settings.store, layout), LexicalEncoder())
    try:
        records = memory.count(Scope(user_id=user_id))
        point: dict[str, Any] = {
            "label": label,
            "records_in_scope": records,
            **measure_in_process(memory, queries, user_id),
        }
    finally:
        memory.close()  # one process per data dir: release it for the server
    point["mcp"] = asyncio.run(measure_mcp(settings.store.data_dir, queries, user_id, log))
    point["ratio_hybrid_to_baseline_p50"] = point["hybrid"]["p50_ms"] / point["baseline"]["p50_ms"]
    print(
        f"{label}: baseline p50 {point['baseline']['p50_ms']:.1f} ms, hybrid p50 {point['hybrid']['p50_ms']:.1f} ms, "
        f"MCP p50 {point['mcp']['p50_ms']:.1f} ms"
    )
    return point


def main() -> None:
    """Build the stores, measure every point, print and save."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="records in one scope, comma-separated")
    parser.add_argument("--scopes", default="10x10000", help="SCOPESxRECORDS for the multi-scope point ('' to skip)")
    parser.add_argument("--queries", type=int, default=240, help="timed queries per point (after 20 warm-up)")
    parser.add_argument("--pool", type=int, default=2000, help="real turns embedded for the pooled embedder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)

    info = machine_info()
    print_machine(info)
    print(f"benchmark settings: {bench_env()}")
    questions = load_questions(args.data)
    queries = [questions[i % len(questions)]["question"] for i in range(args.queries)]
    pool = pool_turns(questions, args.pool)

    with tempfile.TemporaryDirectory(prefix="lightmem-lat-") as tmp:
        root = Path(tmp)
        log = root / "server.log"
        real = SentenceTransformerEmbedder(settings_for(root).embedding)
        pooled = PooledEmbedder([t.content for t in pool], pool_vectors(real, [t.content for t in pool]))
        lexical = LexicalEncoder()
        layout = store_layout(pooled, lexical)
        print(f"filling with PooledEmbedder: {len(pool)} real turns embedded by MiniLM, noise sigma {NOISE}")

        points = []
        fills: dict[str, float] = {}
        single = settings_for(root / "single")
        filled = 0
        for size in sizes:
            memory = Memory(single, pooled, open_store(single.store, layout), lexical)
            fills[f"1 scope, records {filled}-{size}"] = fill(memory, pool, "u0", filled, size)
            memory.close()
            filled = size
            points.append(run_point(f"{size:,} in 1 scope", single, layout, real, queries, "u0", log))

        if args.scopes:
            n_scopes, per_scope = (int(v) for v in args.scopes.split("x"))
            multi = settings_for(root / "multi")
            memory = Memory(multi, pooled, open_store(multi.store, layout), lexical)
            began = time.perf_counter()
            for s in range(n_scopes):
                fill(memory, pool, f"u{s}", 0, per_scope)
            fills[f"{n_scopes} scopes x {per_scope}"] = time.perf_counter() - began
            memory.close()
            label = f"{n_scopes} scopes x {per_scope:,} (search 1)"
            points.append(run_point(label, multi, layout, real, queries, "u0", log))

    report(points, fills, args.queries)
    write_results(
        "search_latency",
        {
            "machine": info,
            "settings": bench_env(),
            "queries_per_point": args.queries,
            "warmup": WARMUP,
            "pool": len(pool),
            "noise_sigma": NOISE,
            "fill_seconds": fills,
            "points": points,
        },
    )


def report(points: Sequence[dict[str, Any]], fills: dict[str, float], queries: int) -> None:
    """The latency table and the ratio against the baseline."""
    print(f"\nSearch latency, top 10, {queries} queries per point after {WARMUP} warm-up (ms):")
    print_table(
        [
            "store",
            "baseline p50",
            "baseline p95",
            "hybrid p50",
            "hybrid p95",
            "dense p50",
            "dense p95",
            "MCP stdio p50",
            "MCP stdio p95",
            "hybrid / baseline p50",
        ],
        [
            [
                p["label"],
                p["baseline"]["p50_ms"],
                p["baseline"]["p95_ms"],
                p["hybrid"]["p50_ms"],
                p["hybrid"]["p95_ms"],
                p["dense"]["p50_ms"],
                p["dense"]["p95_ms"],
                p["mcp"]["p50_ms"],
                p["mcp"]["p95_ms"],
                p["ratio_hybrid_to_baseline_p50"],
            ]
            for p in points
        ],
    )
    for name, seconds in fills.items():
        print(f"fill {name}: {seconds:.1f} s through Memory.add (PooledEmbedder)")
    largest = max((p for p in points if "1 scope" in p["label"]), key=lambda p: p["records_in_scope"], default=None)
    if largest is not None:
        ratio = largest["ratio_hybrid_to_baseline_p50"]
        verdict = "meets" if ratio <= 2 else "misses"
        print(f"in-process hybrid p50 / baseline p50 at {largest['label']}: {ratio:.2f}x ({verdict} the 2x target)")


if __name__ == "__main__":
    main()
