"""Compression stage: milliseconds per turn and tokens saved on real LongMemEval turns.

Runs the real llmlingua path (`lightmem_mcp.compressor.Compressor`) on randomly initialised
LLMLingua-2-shaped models built by `tests/tiny_models.py`: `tiny` (2 layers, hidden 32) and
`bert-base` (12 layers, hidden 768, the real checkpoint's encoder size, so its latency is the
real model's). Their keep/drop choices are random: the token savings follow the rate, but
which words survive, and so the quality, needs the real checkpoint
(microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank).

Per model and rate: one `compress_many` call per batch of turns (as `Memory.add` does) and
one `compress` call per turn. For bert-base, a baseline: llmlingua's own call on each turn,
which pads every input to 512 tokens (the Compressor pads to the turn's length). With
`--eager`, the bert-base runs are repeated with eager attention, which the model switches to
once the topic segmenter asks for attentions.

    .venv/bin/python -m bench.compression [--turns 300] [--base-turns 60] [--rates 0.8 0.6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    BATCH,
    DEFAULT_DATA,
    batches,
    haystack_turns,
    load_questions,
    machine_info,
    print_machine,
    print_table,
    summary_ms,
    write_results,
)
from bench.common import Turn as DataTurn
from lightmem_mcp.compressor import Compression, Compressor
from lightmem_mcp.config import CompressionSettings
from tests.tiny_models import Shape, build_tiny_llmlingua2


def real_turns(data: Path, count: int) -> list[DataTurn]:
    """The first `count` non-blank haystack turns, question after question."""
    turns: list[DataTurn] = []
    for question in load_questions(data):
        turns += haystack_turns(question)[0]
        if len(turns) >= count:
            break
    return turns[:count]


def measure(compressor: Compressor, texts: list[str], rate: float) -> dict[str, Any]:
    """Batched and per-turn timings and token totals for one rate."""
    started = time.perf_counter()
    batched: list[Compression] = []
    for batch in batches(texts, BATCH):
        batched += compressor.compress_many(list(batch), rate=rate)
    batched_seconds = time.perf_counter() - started

    single_seconds: list[float] = []
    for text in texts:
        began = time.perf_counter()
        compressor.compress(text, rate=rate)
        single_seconds.append(time.perf_counter() - began)

    original = sum(c.original_tokens for c in batched)
    compressed = sum(c.compressed_tokens for c in batched)
    applied = [c for c in batched if c.applied]
    return {
        "rate": rate,
        "turns": len(texts),
        "applied": len(applied),
        "skipped": dict(Counter(c.skipped_reason for c in batched if not c.applied)),
        "tokens_original": original,
        "tokens_compressed": compressed,
        "saved_share": 1 - compressed / original,
        "ratio_applied_mean": statistics.fmean(c.ratio for c in applied) if applied else None,
        "batched_ms_per_turn": batched_seconds * 1000 / len(texts),
        "single_call": summary_ms(single_seconds),
    }


def plain_llmlingua(compressor: Compressor, texts: list[str], rate: float = 0.8) -> dict[str, Any]:
    """Baseline: llmlingua's own call on each turn the compressor would compress (pads to 512 tokens)."""
    from llmlingua import PromptCompressor

    location = compressor.describe()["location"]
    assert location is not None
    engine = PromptCompressor(
        model_name=location,
        device_map=compressor.device or "cpu",
        model_config={"trust_remote_code": False},
        use_llmlingua2=True,
    )
    eligible = [t for t in texts if compressor.counter.count(t) >= compressor.settings.min_tokens]
    seconds: list[float] = []
    for text in eligible:
        began = time.perf_counter()
        engine.compress_prompt_llmlingua2([text], rate=rate, force_tokens=compressor.settings.force_tokens)
        seconds.append(time.perf_counter() - began)
    return {"rate": rate, "turns": len(eligible), "baseline": "llmlingua direct", "single_call": summary_ms(seconds)}


def run_model(
    shape: Shape, texts: list[str], rates: list[float], options: argparse.Namespace, vocabulary_text: str
) -> list[dict[str, Any]]:
    """Build, load and measure one model shape at every rate."""
    folder = build_tiny_llmlingua2(options.root, extra_text=vocabulary_text, shape=shape)
    settings = CompressionSettings(path=folder, device=options.device, allow_download=False)
    compressor = Compressor(settings)
    began = time.perf_counter()
    if compressor.load() != "ready":
        raise SystemExit(f"the {shape} model did not load: {compressor.reason}")
    load_seconds = time.perf_counter() - began
    rows = []
    for rate in rates:
        rows.append(
            {
                "model": shape,
                "device": compressor.device,
                "attention": "sdpa",
                "load_s": load_seconds,
                **measure(compressor, texts, rate),
            }
        )
    if shape == "bert-base":
        rows.append(
            {"model": shape, "device": compressor.device, "attention": "sdpa", **plain_llmlingua(compressor, texts)}
        )
    if options.eager and shape == "bert-base":
        compressor.encoder()  # what the segmenter does: switches the model to eager attention
        rows += [
            {
                "model": shape,
                "device": compressor.device,
                "attention": "eager",
                "load_s": load_seconds,
                **measure(compressor, texts, rate),
            }
            for rate in rates
        ]
    return rows


def main() -> None:
    """Run the benchmark, print the table, save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--turns", type=int, default=300, help="turns for the tiny model")
    parser.add_argument("--base-turns", type=int, default=60, help="turns for the bert-base-shaped model (0: skip)")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.8, 0.6])
    parser.add_argument("--eager", action="store_true", help="also time bert-base with eager attention")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "npu", "mps"])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads; 1 avoids thread thrashing on a busy machine"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    info = machine_info()
    print_machine(info)
    turns = real_turns(args.data, max(args.turns, args.base_turns))
    texts = [t.content for t in turns]
    print(
        f"data: {args.data.name}, {len(turns)} turns ({sum(t.role == 'user' for t in turns)} user), "
        f"mean {statistics.fmean(len(t) for t in texts):.0f} characters"
    )
    print(
        "models are randomly initialised: savings follow the rate, but what survives (quality) "
        "needs the real LLMLingua-2 checkpoint"
    )

    rows: list[dict[str, Any]] = []
    # Words seen twice in the sample join the vocabulary, so turns split into about as many
    # model tokens as with the real multilingual vocabulary (which sets the cost per turn).
    vocabulary_text = "\n".join(texts)
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as root:
        args.root = Path(root)
        rows += run_model("tiny", texts[: args.turns], args.rates, args, vocabulary_text)
        if args.base_turns:
            rows += run_model("bert-base", texts[: args.base_turns], args.rates, args, vocabulary_text)

    print_table(
        [
            "model",
            "device",
            "attention",
            "path",
            "rate",
            "turns",
            "compressed",
            "tokens before",
            "tokens after",
            "saved",
            "batched ms/turn",
            "single mean ms",
            "single p50 ms",
            "single p95 ms",
        ],
        [
            [
                r["model"],
                r["device"],
                r["attention"],
                r.get("baseline", "Compressor"),
                r["rate"],
                r["turns"],
                r.get("applied", "-"),
                r.get("tokens_original", "-"),
                r.get("tokens_compressed", "-"),
                f"{r['saved_share']:.1%}" if "saved_share" in r else "-",
                r.get("batched_ms_per_turn", "-"),
                r["single_call"]["mean_ms"],
                r["single_call"]["p50_ms"],
                r["single_call"]["p95_ms"],
            ]
            for r in rows
        ],
    )
    for r in rows:
        if r.get("skipped"):
            print(f"{r['model']} {r['attention']} rate {r['rate']}: skipped {r['skipped']}")
    write_results(
        "compression",
        {
            "machine": info,
            "data": str(args.data),
            "note": "randomly initialised models; real savings and quality need the real checkpoint",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
