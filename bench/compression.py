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
`--eager`, the bert-base runs are repeated after the topic segmenter has asked for attentions,
which switches the fp32 model to eager attention (an int8 copy that compresses keeps sdpa).

With `--precision`, only bert-base, on the CPU: the same LongMemEval turns (`--base-turns`) and
LoCoMo turns (`--locomo-turns`) through fp32 with the batching used before padding was capped
on the CPU, fp32, and the CPU fast path (int8 linear layers, `LIGHTMEM_COMPRESSION_QUANTIZE`),
all on `--threads` threads (default: the compressor's own choice). Each batch of turns goes
through the legs in turn, so a change of load on the machine hits them alike. Agreement: the
share of words whose keep/drop choice (llmlingua's own labels) is the same in fp32 and int8.

    .venv/bin/python -m bench.compression [--turns 300] [--base-turns 60] [--rates 0.8 0.6]
    .venv/bin/python -m bench.compression --precision [--base-turns 200] [--locomo-turns 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal
from unittest import mock

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
from lightmem_mcp import compressor as compressor_module
from lightmem_mcp.compressor import Compression, Compressor
from lightmem_mcp.config import CompressionSettings
from tests.tiny_models import Shape, build_tiny_llmlingua2

DEFAULT_LOCOMO = Path("/work/shared/data/locomo_dev2.json.gz")


def real_turns(data: Path, count: int) -> list[DataTurn]:
    """The first `count` non-blank haystack turns, question after question."""
    turns: list[DataTurn] = []
    for question in load_questions(data):
        turns += haystack_turns(question)[0]
        if len(turns) >= count:
            break
    return turns[:count]


def locomo_texts(path: Path, count: int) -> list[str]:
    """The first `count` LoCoMo messages, conversation after conversation."""
    from bench.retrieval_quality import locomo

    return [m.content for messages in locomo(path, None).messages.values() for m in messages][:count]


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
    settings = CompressionSettings(
        path=folder,
        device=options.device,
        allow_download=False,
        quantize=options.quantize,
        threads=options.threads or 0,
    )
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
                "precision": compressor.precision,
                "attention": "sdpa",
                "load_s": load_seconds,
                **measure(compressor, texts, rate),
            }
        )
    if shape == "bert-base":
        rows.append(
            {
                "model": shape,
                "device": compressor.device,
                "precision": "fp32",
                "attention": "sdpa",
                **plain_llmlingua(compressor, texts),
            }
        )
    if options.eager and shape == "bert-base":
        compressor.encoder()  # what the segmenter does: switches the fp32 model to eager attention
        rows += [
            {
                "model": shape,
                "device": compressor.device,
                "precision": compressor.precision,
                # An int8 copy compresses; only the fp32 model the segmenter reads turns eager.
                "attention": "eager" if compressor.precision == "fp32" else "sdpa (after encoder())",
                "load_s": load_seconds,
                **measure(compressor, texts, rate),
            }
            for rate in rates
        ]
    return rows


@contextmanager
def batching_before_cap() -> Iterator[None]:
    """The Compressor's CPU batching as it was before padding was capped: 4096 padded tokens, any padding."""
    with mock.patch.object(compressor_module, "_CPU_PADDING", None):
        yield


def run_precision(
    texts_by_set: dict[str, list[str]], rate: float, options: argparse.Namespace, vocabulary_text: str
) -> list[dict[str, Any]]:
    """fp32 (as before, then with capped padding) against the CPU fast path: turns/s and keep/drop agreement."""
    folder = build_tiny_llmlingua2(options.root, extra_text=vocabulary_text, shape="bert-base")

    def loaded(quantize: Literal["auto", "int8", "off"]) -> Compressor:
        settings = CompressionSettings(
            path=folder, device="cpu", allow_download=False, quantize=quantize, threads=options.threads or 0
        )
        compressor = Compressor(settings)
        if compressor.load() != "ready":
            raise SystemExit(f"the bert-base model did not load: {compressor.reason}")
        return compressor

    fp32, fast = loaded("off"), loaded(options.quantize if options.quantize != "off" else "auto")
    print(f"fast path: {fast.describe()['precision']}, {fast.cpu_threads()} threads per pass")
    legs = {"fp32, before": (fp32, True), "fp32": (fp32, False), str(fast.precision): (fast, False)}
    rows: list[dict[str, Any]] = []
    for name, texts in texts_by_set.items():
        seconds = dict.fromkeys(legs, 0.0)
        results: dict[str, list[Compression]] = {leg: [] for leg in legs}
        for batch in batches(texts, BATCH):
            for leg, (compressor, before) in legs.items():
                with batching_before_cap() if before else nullcontext():
                    began = time.perf_counter()
                    results[leg] += compressor.compress_many(list(batch), rate=rate)
                    seconds[leg] += time.perf_counter() - began
        reference = fp32.keep_decisions(texts, rate=rate)
        candidate = fast.keep_decisions(texts, rate=rate)
        if [word for word, _ in reference] != [word for word, _ in candidate]:
            raise SystemExit(f"{name}: fp32 and {fast.precision} did not see the same words")
        agreeing = sum(a == b for (_, a), (_, b) in zip(reference, candidate, strict=True))
        for leg, (compressor, _) in legs.items():
            same = sum(a.text == b.text for a, b in zip(results[leg], results["fp32"], strict=True))
            decisions = candidate if compressor is fast else reference
            rows.append(
                {
                    "data": name,
                    "leg": leg,
                    "precision": compressor.precision,
                    "threads": compressor.cpu_threads(),
                    "rate": rate,
                    "turns": len(texts),
                    "applied": sum(r.applied for r in results[leg]),
                    "seconds": seconds[leg],
                    "turns_per_s": len(texts) / seconds[leg],
                    "speedup": seconds["fp32, before"] / seconds[leg],
                    "same_output_share": same / len(texts),
                    "words": len(decisions),
                    "kept_share": sum(kept for _, kept in decisions) / len(decisions),
                    "word_agreement": agreeing / len(reference) if compressor is fast else 1.0,
                }
            )
    return rows


def print_precision(rows: list[dict[str, Any]]) -> None:
    """The fp32 / fast-path table."""
    print_table(
        [
            "data",
            "leg",
            "threads",
            "turns",
            "compressed",
            "turns/s",
            "x fp32 before",
            "same text as fp32",
            "words",
            "kept",
            "keep/drop agreement",
        ],
        [
            [
                r["data"],
                r["leg"],
                r["threads"],
                r["turns"],
                r["applied"],
                f"{r['turns_per_s']:.2f}",
                f"{r['speedup']:.2f}",
                f"{r['same_output_share']:.1%}",
                r["words"],
                f"{r['kept_share']:.1%}",
                f"{r['word_agreement']:.2%}",
            ]
            for r in rows
        ],
    )


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
        "--threads",
        type=int,
        default=None,
        help="CPU threads of each compression pass (default: the compressor's, one fewer than the cores)",
    )
    parser.add_argument(
        "--quantize", default="auto", choices=["auto", "int8", "off"], help="LIGHTMEM_COMPRESSION_QUANTIZE"
    )
    parser.add_argument("--precision", action="store_true", help="fp32 against the CPU fast path (bert-base only)")
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--locomo-turns", type=int, default=200, help="LoCoMo turns for --precision (0: skip)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # llmlingua's own baseline call; the Compressor sets its own

    info = machine_info()
    print_machine(info)
    if args.precision:
        main_precision(args, info)
        return
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
            "precision",
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
                r["precision"],
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


def main_precision(args: argparse.Namespace, info: dict[str, Any]) -> None:
    """The --precision run: print the table, save the JSON."""
    texts_by_set = {"longmemeval": [t.content for t in real_turns(args.data, args.base_turns)]}
    if args.locomo_turns and args.locomo.exists():
        texts_by_set["locomo"] = locomo_texts(args.locomo, args.locomo_turns)
    for name, texts in texts_by_set.items():
        print(f"data: {name}, {len(texts)} turns, mean {statistics.fmean(len(t) for t in texts):.0f} characters")
    rate = args.rates[0]
    print(
        f"rate {rate}; bert-base-shaped, randomly initialised: its keep/drop choices are meaningless but "
        "deterministic, and its keep probabilities are spread unlike the real checkpoint's"
    )
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as root:
        args.root = Path(root)
        vocabulary_text = "\n".join(text for texts in texts_by_set.values() for text in texts)
        rows = run_precision(texts_by_set, rate, args, vocabulary_text)
    print_precision(rows)
    write_results(
        "compression",
        {
            "machine": info,
            "mode": "precision",
            "data": {"longmemeval": str(args.data), "locomo": str(args.locomo) if "locomo" in texts_by_set else None},
            "note": "randomly initialised bert-base-shaped model; agreement with the real checkpoint may differ",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
