"""Retrieval quality on LongMemEval_S: dense vs sparse vs hybrid, turn- and session-level recall@k.

Every question's haystack goes into its own user scope through `Memory.add` (batches of 32);
the question is then searched in that scope with each mode, and the hits are traced back to
the evidence turns (`has_answer`) and sessions (`answer_session_ids`) through their source ids.

    .venv/bin/python -m bench.retrieval_quality [--questions N] [--data PATH] [--store DIR] [--grid]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_DATA,
    batches,
    bench_env,
    haystack_turns,
    load_questions,
    machine_info,
    print_machine,
    print_table,
    settings_for,
    token_counter,
    write_results,
)
from lightmem_mcp.config import SearchMode, SearchSettings, Settings
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope

KS = (1, 5, 10)
TOKEN_KS = (5, 10)
MODES: tuple[SearchMode, ...] = ("dense", "sparse", "hybrid")

# Fusion settings tried with --grid: RRF constant x (dense, sparse) weights x candidates per arm.
GRID_RRF_K = (10, 30, 60, 120)
GRID_WEIGHTS = ((1.0, 1.0), (1.5, 1.0), (2.0, 1.0), (3.0, 1.0), (1.0, 1.5), (1.0, 2.0))
GRID_CANDIDATES = (30, 100, 300)
FUSION_KNOBS = ("rrf_k", "dense_weight", "sparse_weight", "candidates")


@dataclass(frozen=True)
class Case:
    """One ingested question: what to ask and what counts as evidence."""

    question_id: str
    question_type: str
    question: str
    evidence_turns: frozenset[str]
    answer_sessions: frozenset[str]


@dataclass(frozen=True)
class Hit:
    """The parts of a search hit the metrics need."""

    source_ids: tuple[str, ...]
    text: str


def ingest(memory: Memory, question: dict[str, Any]) -> tuple[Case, dict[str, float]]:
    """Store the question's haystack in scope user_id=question_id, unless a reused store already holds it."""
    turns, blank = haystack_turns(question)
    scope = Scope(user_id=question["question_id"])
    start = time.perf_counter()
    reused = memory.count(scope) == len(turns)
    if not reused:
        for batch in batches(turns):
            memory.add([t.message() for t in batch], scope)
    seconds = time.perf_counter() - start
    case = Case(
        question["question_id"],
        question["question_type"],
        question["question"],
        frozenset(t.id for t in turns if t.has_answer),
        frozenset(question["answer_session_ids"]),
    )
    return case, {"turns": len(turns), "blank_turns_dropped": blank, "seconds": seconds, "reused": float(reused)}


def run_searches(memory: Memory, cases: Sequence[Case], mode: SearchMode) -> dict[str, list[Hit]]:
    """Top-10 hits of every question, by question id."""
    return {
        case.question_id: [
            Hit(tuple(h.source_ids), h.text)
            for h in memory.search(case.question, Scope(user_id=case.question_id), limit=max(KS), mode=mode).hits
        ]
        for case in cases
    }


def session_of(source_id: str) -> str:
    """`session_id#turn_index` -> `session_id`."""
    return source_id.rsplit("#", 1)[0]


def per_question(case: Case, hits: Sequence[Hit], count_tokens: Callable[[str], int]) -> dict[str, float]:
    """Recall figures of one question's ranked hits."""
    row: dict[str, float] = {}
    for k in KS:
        sources = {s for h in hits[:k] for s in h.source_ids}
        if case.evidence_turns:
            found = len(case.evidence_turns & sources)
            row[f"turn_recall@{k}"] = found / len(case.evidence_turns)
            row[f"turn_hit@{k}"] = float(found > 0)
        if case.answer_sessions:
            covered = case.answer_sessions & {session_of(s) for s in sources}
            row[f"session_recall@{k}"] = len(covered) / len(case.answer_sessions)
    for k in TOKEN_KS:
        row[f"tokens@{k}"] = count_tokens("\n".join(h.text for h in hits[:k]))
    return row


def aggregate(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the questions that have it."""
    keys = sorted({key for row in rows for key in row})
    return {key: statistics.fmean(row[key] for row in rows if key in row) for key in keys}


def score(
    cases: Sequence[Case], runs: dict[str, list[Hit]], count_tokens: Callable[[str], int]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean metrics, and the per-question rows by question id."""
    rows = {c.question_id: per_question(c, runs[c.question_id], count_tokens) for c in cases}
    return aggregate(list(rows.values())), rows


def variant(base: Settings, rrf_k: int, weights: tuple[float, float], candidates: int) -> Settings:
    """`base` with other fusion settings."""
    search = SearchSettings(
        mode="hybrid", rrf_k=rrf_k, dense_weight=weights[0], sparse_weight=weights[1], candidates=candidates
    )
    return base.model_copy(update={"search": search})


def paired(rows_a: dict[str, dict[str, float]], rows_b: dict[str, dict[str, float]], key: str) -> tuple[int, int]:
    """Questions where a beats b, and where b beats a, on `key`."""
    common = [q for q in rows_a if key in rows_a[q]]
    wins = sum(rows_a[q][key] > rows_b[q][key] for q in common)
    losses = sum(rows_a[q][key] < rows_b[q][key] for q in common)
    return wins, losses


def metrics_row(name: str, m: dict[str, float]) -> list[Any]:
    """One table row: turn recall, turn hit rate, session recall, context tokens."""
    return (
        [name]
        + [m[f"turn_recall@{k}"] for k in KS]
        + [m[f"turn_hit@{k}"] for k in KS]
        + [m[f"session_recall@{k}"] for k in KS]
        + [round(m[f"tokens@{k}"]) for k in TOKEN_KS]
    )


HEADERS = (
    ["mode"]
    + [f"turn R@{k}" for k in KS]
    + [f"turn hit@{k}" for k in KS]
    + [f"session R@{k}" for k in KS]
    + [f"tokens@{k}" for k in TOKEN_KS]
)


def main() -> None:
    """Ingest, search in each mode, score, print and save."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=None, help="first N questions (default: all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LongMemEval JSON(.gz)")
    parser.add_argument("--store", type=Path, default=None, help="data dir to keep and reuse (default: a temp dir)")
    parser.add_argument("--grid", action="store_true", help="also try fusion settings on the same stores")
    args = parser.parse_args()

    info = machine_info()
    print_machine(info)
    print(f"benchmark settings: {bench_env()}")
    tokenizer_name, count_tokens = token_counter()
    questions = load_questions(args.data, args.questions)
    with tempfile.TemporaryDirectory(prefix="lightmem-rq-") as tmp:
        data_dir = args.store or Path(tmp)
        settings = settings_for(data_dir)
        print(f"store: {data_dir}; default search settings: {settings.search.model_dump()}")
        memory = Memory.open(settings)
        try:
            results = evaluate(memory, settings, questions, count_tokens, args.grid)
        finally:
            memory.close()
    results.update(
        settings=bench_env(),
        machine=info,
        tokenizer=tokenizer_name,
        data=str(args.data),
        search_defaults=settings.search.model_dump(),
    )
    write_results("retrieval_quality", results)


def evaluate(
    memory: Memory,
    settings: Settings,
    questions: Sequence[dict[str, Any]],
    count_tokens: Callable[[str], int],
    grid: bool,
) -> dict[str, Any]:
    """Everything the benchmark measures, printed as it goes."""
    cases: list[Case] = []
    ingest_stats = []
    start = time.perf_counter()
    for number, question in enumerate(questions, 1):
        case, stats = ingest(memory, question)
        cases.append(case)
        ingest_stats.append(stats)
        print(f"[{number}/{len(questions)}] {case.question_id}: {stats['turns']} turns in {stats['seconds']:.1f} s")
    ingest_seconds = time.perf_counter() - start
    total_turns = sum(int(s["turns"]) for s in ingest_stats)
    reused = sum(int(s["reused"]) for s in ingest_stats)
    print(
        f"ingested {total_turns} turns in {ingest_seconds:.0f} s ({total_turns / ingest_seconds:.1f} turns/s)"
        + (f"; {reused} questions were already in the store (--store), not re-ingested" if reused else "")
    )

    skipped = [c.question_id for c in cases if not c.evidence_turns]
    print(
        f"{len(cases)} questions; turn level over {len(cases) - len(skipped)} "
        f"(skipped {len(skipped)} without has_answer turns: {', '.join(skipped) or 'none'}); session level over "
        f"{sum(bool(c.answer_sessions) for c in cases)}; "
        f"{sum(int(s['blank_turns_dropped']) for s in ingest_stats)} blank turns dropped"
    )

    means: dict[str, dict[str, float]] = {}
    rows: dict[str, dict[str, dict[str, float]]] = {}
    search_seconds: dict[str, float] = {}
    for mode in MODES:
        began = time.perf_counter()
        runs = run_searches(memory, cases, mode)
        search_seconds[mode] = time.perf_counter() - began
        means[mode], rows[mode] = score(cases, runs, count_tokens)
    print("\nDefault settings, top 10:")
    print_table(HEADERS, [metrics_row(mode, means[mode]) for mode in MODES])

    key = "turn_recall@10"
    comparisons = {other: paired(rows["hybrid"], rows[other], key) for other in ("dense", "sparse")}
    for other, (wins, losses) in comparisons.items():
        print(f"hybrid vs {other} on {key}: better on {wins} questions, worse on {losses}")
    beats = all(means["hybrid"][key] > means[m][key] for m in ("dense", "sparse"))
    print(f"default hybrid beats both dense and sparse on {key}: {beats}")

    by_type: dict[str, dict[str, float]] = defaultdict(dict)
    for mode in MODES:
        for qtype in sorted({c.question_type for c in cases}):
            values = [rows[mode][c.question_id][key] for c in cases if c.question_type == qtype and c.evidence_turns]
            by_type[qtype][mode] = statistics.fmean(values)
    print(f"\n{key} by question type:")
    print_table(["question type", *MODES], [[t, *(v[m] for m in MODES)] for t, v in by_type.items()])

    results: dict[str, Any] = {
        "questions": len(cases),
        "turn_level_questions": len(cases) - len(skipped),
        "skipped_turn_level": skipped,
        "turns_ingested": total_turns,
        "ingest_seconds": ingest_seconds,
        "search_seconds": search_seconds,
        "modes": means,
        "hybrid_beats_both_on_turn_recall@10": beats,
        "hybrid_vs": {o: {"better": w, "worse": lo} for o, (w, lo) in comparisons.items()},
        "turn_recall@10_by_type": by_type,
        "per_question": rows,
    }
    if grid:
        results["grid"] = run_grid(memory, settings, cases, count_tokens, means, rows["hybrid"])
    return results


def run_grid(
    memory: Memory,
    settings: Settings,
    cases: Sequence[Case],
    count_tokens: Callable[[str], int],
    means: dict[str, dict[str, float]],
    default_rows: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Hybrid search under each fusion setting of the grid, on the already ingested stores."""
    key = "turn_recall@10"
    floor = max(means["dense"][key], means["sparse"][key])
    grid: list[dict[str, Any]] = []
    grid_rows: list[dict[str, dict[str, float]]] = []
    for rrf_k, weights, candidates in itertools.product(GRID_RRF_K, GRID_WEIGHTS, GRID_CANDIDATES):
        # Same embedder, store and lexical encoder: only the ranking settings differ.
        tuned = Memory(variant(settings, rrf_k, weights, candidates), memory.embedder, memory.store, memory.lexical)
        m, rows = score(cases, run_searches(tuned, cases, "hybrid"), count_tokens)
        grid.append({"rrf_k": rrf_k, "dense_weight": weights[0], "sparse_weight": weights[1], "candidates": candidates})
        grid[-1].update(m)
        grid_rows.append(rows)
    order = sorted(range(len(grid)), key=lambda i: (grid[i][key], grid[i]["turn_recall@5"]), reverse=True)
    print(f"\nFusion grid ({len(grid)} settings), best 15 by {key}; dense/sparse best is {floor:.3f}:")
    print_table(
        ["rrf_k", "w dense", "w sparse", "cand.", *HEADERS[1:]],
        [[*(grid[i][k] for k in FUSION_KNOBS), *metrics_row("", grid[i])[1:]] for i in order[:15]],
    )
    winners = sum(g[key] > floor for g in grid)
    print(f"{winners} of {len(grid)} settings beat both dense and sparse on {key}")
    best = order[0]
    wins, losses = paired(grid_rows[best], default_rows, key)
    print(f"best grid setting vs default hybrid on {key}: better on {wins} questions, worse on {losses}")
    return {
        "settings": [grid[i] for i in order],
        "best_vs_default": {"better": wins, "worse": losses},
        "cross_validation": cross_validate(cases, grid, grid_rows, default_rows, key),
    }


def cross_validate(
    cases: Sequence[Case],
    grid: Sequence[dict[str, Any]],
    grid_rows: Sequence[dict[str, dict[str, float]]],
    default_rows: dict[str, dict[str, float]],
    key: str,
) -> dict[str, Any]:
    """Two-fold check of tuning: pick the best setting on one half of the questions, score it on the other."""
    ids = [c.question_id for c in cases if c.evidence_turns]
    folds = [ids[0::2], ids[1::2]]
    tuned_scores: list[float] = []
    default_scores: list[float] = []
    picks = []
    for held_out, tune_on in ((folds[0], folds[1]), (folds[1], folds[0])):
        pick = max(range(len(grid)), key=lambda i: statistics.fmean(grid_rows[i][q][key] for q in tune_on))
        picks.append({k: grid[pick][k] for k in FUSION_KNOBS})
        tuned_scores += [grid_rows[pick][q][key] for q in held_out]
        default_scores += [default_rows[q][key] for q in held_out]
    result = {
        "picks": picks,
        "held_out_tuned": statistics.fmean(tuned_scores),
        "held_out_default": statistics.fmean(default_scores),
    }
    print(
        f"2-fold cross-validation of the tuning on {key}: tuned {result['held_out_tuned']:.3f} vs default "
        f"{result['held_out_default']:.3f} on held-out questions (picks: {picks})"
    )
    return result


if __name__ == "__main__":
    main()
