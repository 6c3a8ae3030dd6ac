"""Retrieval quality on two kinds of conversation, reported per data set.

* LongMemEval_S (`--longmemeval`): a user and an assistant, long turns; each question has its own
  haystack (~50 sessions), stored in its own user scope; evidence = the `has_answer` turns.
* LoCoMo (`--locomo`): long chats between two named people; each conversation is stored in its own
  user scope (message id = `dia_id`, `name` = the speaker, timestamp = the session's date), its
  questions of categories 1-4 asked there; evidence = the annotated `dia_id`s.

Every message goes in through `Memory.add`, 32 per call; hits are traced back to the evidence through
their source ids. Measured per data set and per question type / category:

* R@1/5/10 of search in each mode (dense, lexical, hybrid = the default) and of an in-run stdlib
  BM25 over "speaker: text" (per-scope statistics, no stemming: the plain baseline);
* recall within 250 / 500 / 1,000 / 2,000 tokens (cl100k_base): of the default hits taken in rank
  order until the budget, and of `recall` (the packed context, with each hit's window) at
  context 0, 1 and 2;
* `--grid`: fusion settings scored on the same stores through `lightmem_mcp.fusion.fuse` (the code
  search runs), chosen by cross-validation across both data sets;
* `--stdio`: the LoCoMo conversations once more through a spawned `lightmem-mcp` over MCP stdio
  (add_memory, search_memory, recall), with the latency of each search call.

    .venv/bin/python -m bench.retrieval_quality [--longmemeval PATH] [--locomo PATH] [--questions N]
        [--grid] [--stdio] [--store DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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
    summary_ms,
    token_counter,
    write_results,
)
from lightmem_mcp.api import Message
from lightmem_mcp.config import SearchMode
from lightmem_mcp.fusion import Fusion, Ranking, fuse
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import FoundPoint, Scope, is_blank

DEFAULT_LOCOMO = Path("/work/shared/data/locomo_dev2.json.gz")
KS = (1, 5, 10)
BUDGETS = (250, 500, 1000, 2000)
CONTEXTS = (0, 1, 2)
MODES: tuple[SearchMode, ...] = ("dense", "sparse", "hybrid")
LOCOMO_CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
DEPTH = 100  # candidates per arm for the grid, as the default search uses


@dataclass(frozen=True)
class Case:
    """One question: where it is asked and which message ids answer it."""

    dataset: str
    scope: str
    question_id: str
    kind: str
    question: str
    evidence: frozenset[str]


@dataclass
class Corpus:
    """A data set as stored: messages per scope, and the questions."""

    name: str
    messages: dict[str, list[Message]]
    cases: list[Case]


# -- data --------------------------------------------------------------------------------


def longmemeval(path: Path, limit: int | None) -> Corpus:
    """Each question's haystack in scope user_id=question_id; questions without evidence turns are skipped."""
    messages: dict[str, list[Message]] = {}
    cases = []
    for question in load_questions(path, limit):
        turns, _ = haystack_turns(question)
        messages[question["question_id"]] = [t.message() for t in turns]
        evidence = frozenset(t.id for t in turns if t.has_answer)
        if evidence:
            qid = question["question_id"]
            cases.append(Case("longmemeval", qid, qid, question["question_type"], question["question"], evidence))
    return Corpus("longmemeval", messages, cases)


def locomo(path: Path, limit: int | None) -> Corpus:
    """Each conversation in scope user_id=sample_id; questions of categories 1-4 with evidence."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        conversations = json.load(handle)
    messages: dict[str, list[Message]] = {}
    cases = []
    for conversation in conversations:
        sample = conversation["sample_id"]
        chat = conversation["conversation"]
        stored = []
        session = 1
        while f"session_{session}" in chat:
            when = datetime.strptime(chat[f"session_{session}_date_time"], "%I:%M %p on %d %B, %Y").isoformat()
            for turn in chat[f"session_{session}"]:
                if not is_blank(turn["text"]):
                    stored.append(
                        Message(
                            role="user", name=turn["speaker"], content=turn["text"], id=turn["dia_id"], timestamp=when
                        )
                    )
            session += 1
        messages[sample] = stored
        for number, qa in enumerate(conversation["qa"]):
            category = qa.get("category")
            if category in LOCOMO_CATEGORIES and qa.get("evidence"):
                evidence = frozenset(e.strip() for e in qa["evidence"])
                kind = LOCOMO_CATEGORIES[category]
                cases.append(Case("locomo", sample, f"{sample}/{number}", kind, qa["question"], evidence))
    if limit is not None:
        cases = cases[:limit]
    return Corpus("locomo", messages, cases)


def ingest(memory: Memory, corpus: Corpus) -> dict[str, float]:
    """Store every scope's messages (skipped when a reused store already holds them)."""
    start = time.perf_counter()
    stored = reused = 0
    for scope_id, messages in corpus.messages.items():
        scope = Scope(user_id=scope_id)
        if memory.count(scope) == len(messages):
            reused += len(messages)
            continue
        for batch in batches(messages):
            memory.add(list(batch), scope)
        stored += len(messages)
    seconds = time.perf_counter() - start
    rate = stored / seconds if stored else float("nan")
    print(f"{corpus.name}: stored {stored} turns in {seconds:.0f} s ({rate:.1f} turns/s); {reused} reused")
    return {"turns": stored, "reused": reused, "seconds": seconds, "turns_per_s": rate}


# -- the plain baseline -------------------------------------------------------------------

_WORD = re.compile(r"\w+")


class PlainBM25:
    """Okapi BM25 (k1 1.2, b 0.75) over "speaker: text", lowercase words, statistics of one scope."""

    def __init__(self, messages: Sequence[Message]) -> None:
        self.ids = [str(m.id) for m in messages]
        docs = [_WORD.findall(f"{m.name or m.role}: {m.content}".lower()) for m in messages]
        self.tf = [Counter(d) for d in docs]
        self.lengths = [len(d) for d in docs]
        self.avg = statistics.fmean(self.lengths) if docs else 1.0
        df = Counter(w for d in docs for w in set(d))
        n = len(docs)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}

    def search(self, query: str, limit: int) -> list[str]:
        terms = set(_WORD.findall(query.lower())) & self.idf.keys()
        scores = []
        for i, tf in enumerate(self.tf):
            norm = 1.2 * (0.25 + 0.75 * self.lengths[i] / self.avg)
            s = sum(self.idf[w] * tf[w] * 2.2 / (tf[w] + norm) for w in terms if w in tf)
            if s > 0:
                scores.append((s, i))
        scores.sort(key=lambda x: -x[0])
        return [self.ids[i] for _, i in scores[:limit]]


# -- metrics ------------------------------------------------------------------------------


def covered(evidence: frozenset[str], sources: Sequence[Sequence[str]]) -> float:
    """Fraction of the evidence among the source ids."""
    return len(evidence & {s for group in sources for s in group}) / len(evidence)


def within_budget(
    case: Case, ranked: Sequence[tuple[Sequence[str], str]], count: Callable[[str], int]
) -> dict[int, float]:
    """Recall of the hits taken in rank order until their texts exceed each budget."""
    row = {}
    for budget in BUDGETS:
        spent, taken = 0, []
        for sources, text in ranked:
            cost = count(text) + 1
            if spent + cost > budget:
                break
            spent += cost
            taken.append(sources)
        row[budget] = covered(case.evidence, taken)
    return row


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


# -- evaluation ---------------------------------------------------------------------------


def evaluate(memory: Memory, corpus: Corpus, count: Callable[[str], int]) -> dict[str, Any]:
    """Every per-question figure of one data set, and the arms kept for the grid."""
    plain = {scope: PlainBM25(messages) for scope, messages in corpus.messages.items()}
    rows: dict[str, dict[str, float]] = {}
    arms: dict[str, tuple[list[FoundPoint], list[FoundPoint], dict[str, list[str]]]] = {}
    began = time.perf_counter()
    for case in corpus.cases:
        scope = Scope(user_id=case.scope)
        row: dict[str, float] = {}
        for mode in MODES:
            limit = 50 if mode == "hybrid" else DEPTH
            hits = memory.search(case.question, scope, limit=limit, mode=mode).hits
            for k in KS:
                row[f"{mode} R@{k}"] = covered(case.evidence, [h.source_ids for h in hits[:k]])
            if mode == "hybrid":
                ranked = [(h.source_ids, h.text) for h in hits]
                for budget, value in within_budget(case, ranked, count).items():
                    row[f"hits within {budget}"] = value
            else:
                arm = [FoundPoint(h.id, {}, h.score) for h in hits]
                sources = {h.id: h.source_ids for h in hits}
                dense, sparse, known = arms.get(case.question_id, ([], [], {}))
                arms[case.question_id] = (
                    (arm, sparse, known | sources) if mode == "dense" else (dense, arm, known | sources)
                )
        for k in KS:
            row[f"plain BM25 R@{k}"] = covered(case.evidence, [[i] for i in plain[case.scope].search(case.question, k)])
        for context in CONTEXTS:
            for budget in BUDGETS:
                packed = memory.recall(case.question, scope, max_tokens=budget, context=context)
                assert packed.tokens <= budget
                row[f"recall c{context} within {budget}"] = covered(
                    case.evidence, [b.source_ids for b in packed.blocks]
                )
        rows[case.question_id] = row
    seconds = time.perf_counter() - began
    print(f"{corpus.name}: {len(corpus.cases)} questions evaluated in {seconds:.0f} s")
    return {"rows": rows, "arms": arms}


def report(corpus: Corpus, rows: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Print and return the means of one data set, overall and per question type."""
    keys = list(next(iter(rows.values())))
    overall = {key: mean([r[key] for r in rows.values()]) for key in keys}
    print(f"\n### {corpus.name}: {len(rows)} questions\n")
    table = [
        [name, *(overall[f"{prefix} R@{k}"] for k in KS)]
        for name, prefix in (
            ("dense", "dense"),
            ("lexical", "sparse"),
            ("**hybrid (default)**", "hybrid"),
            ("plain BM25 over speaker: text", "plain BM25"),
        )
    ]
    print_table(["ranking", *(f"R@{k}" for k in KS)], table)
    print()
    budget_rows = [["default hits in rank order", *(overall[f"hits within {b}"] for b in BUDGETS)]]
    budget_rows += [[f"recall, context {c}", *(overall[f"recall c{c} within {b}"] for b in BUDGETS)] for c in CONTEXTS]
    print_table(["recall within N tokens", *(str(b) for b in BUDGETS)], budget_rows)
    by_kind: dict[str, dict[str, float]] = {}
    for kind in sorted({c.kind for c in corpus.cases}):
        ids = [c.question_id for c in corpus.cases if c.kind == kind]
        by_kind[kind] = {key: mean([rows[i][key] for i in ids]) for key in keys} | {"questions": len(ids)}
    print()
    print_table(
        ["type", "questions", "dense R@10", "lexical R@10", "hybrid R@10", "plain BM25 R@10", "recall c1 within 1000"],
        [
            [
                k,
                int(v["questions"]),
                v["dense R@10"],
                v["sparse R@10"],
                v["hybrid R@10"],
                v["plain BM25 R@10"],
                v["recall c1 within 1000"],
            ]
            for k, v in by_kind.items()
        ],
    )
    return {"overall": overall, "by_type": by_kind}


# -- fusion grid and its cross-validation --------------------------------------------------


def grid_settings() -> list[Fusion]:
    """RRF (k x lexical weight), min-max and DBSF sums (lexical weight); dense weight 1."""
    weights = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    rrf = [Fusion("rrf", k, 1.0, w) for k in (5, 10, 20, 30, 60, 100) for w in weights]
    return rrf + [Fusion(method, 60, 1.0, w) for method in ("minmax", "dbsf") for w in weights]


def run_grid(
    corpora: Sequence[Corpus], arms: dict[str, Any], named: dict[str, bool], default: Ranking
) -> dict[str, Any]:
    """R@10 of every fusion on every question; then the choice for each kind of query (naming a
    speaker of the scope, or not) by cross-validation, scored on held-out questions per data set."""
    settings = grid_settings()
    for extra in (default.plain, default.named):
        if extra.label() not in {f.label() for f in settings}:
            settings.append(extra)
    labels = [f.label() for f in settings]
    cases = [c for corpus in corpora for c in corpus.cases]
    names = [c.name for c in corpora]
    scores: dict[str, list[float]] = {}
    for case in cases:
        dense, sparse, sources = arms[case.question_id]
        ranked = [fuse(dense, sparse, f)[:10] for f in settings]
        scores[case.question_id] = [covered(case.evidence, [sources[i] for i, _ in r]) for r in ranked]
    arm_best = {
        n: max(mean([scores_of_arm(arms, c, arm) for c in cases if c.dataset == n]) for arm in (0, 1)) for n in names
    }

    def dataset_means(chosen: Callable[[Case], int], ids: set[str]) -> dict[str, float]:
        return {
            n: mean([scores[c.question_id][chosen(c)] for c in cases if c.dataset == n and c.question_id in ids])
            for n in names
        }

    every = {c.question_id for c in cases}
    counts = {n: Counter(named[c.question_id] for c in cases if c.dataset == n) for n in names}
    print(
        "\nQueries naming a speaker of their scope: "
        + ", ".join(f"{n} {counts[n][True]} of {sum(counts[n].values())}" for n in names)
    )
    print("Best single ranking per data set (R@10): " + ", ".join(f"{n} {v:.3f}" for n, v in arm_best.items()))
    single = sorted(
        ((f, dataset_means(lambda c, i=i: i, every)) for i, f in enumerate(settings)),
        key=lambda row: -min(row[1].values()),
    )
    print("\nOne fusion for every query, R@10 per data set (best 10 by the worse of the two):")
    print_table(
        ["fusion", *names, "worse of the two"],
        [[f.label(), *(v[n] for n in names), min(v.values())] for f, v in single[:10]],
    )

    def pick(train: set[str], kind: bool) -> int:
        # Each data set weighs the same, whatever its number of questions; only questions of this kind count.
        def objective(i: int) -> float:
            total = 0.0
            for n in names:
                mine = [c for c in cases if c.dataset == n and c.question_id in train]
                if mine:
                    total += sum(scores[c.question_id][i] for c in mine if named[c.question_id] == kind) / len(mine)
            return total

        return max(range(len(settings)), key=objective)

    def policy(plain: int, named_pick: int) -> Callable[[Case], int]:
        return lambda c: named_pick if named[c.question_id] else plain

    plain_i, named_i = pick(every, False), pick(every, True)
    default_policy = policy(labels.index(default.plain.label()), labels.index(default.named.label()))
    in_sample = {
        "picked": dataset_means(policy(plain_i, named_i), every),
        "default": dataset_means(default_policy, every),
    }
    print(
        f"\nPer kind of query, in sample: best plain {settings[plain_i].label()}, "
        f"best named {settings[named_i].label()}: "
        + ", ".join(f"{n} {in_sample['picked'][n]:.3f}" for n in names)
        + f"; default ({default.plain.label()} / {default.named.label()}): "
        + ", ".join(f"{n} {in_sample['default'][n]:.3f}" for n in names)
    )

    folds = 5
    rng = random.Random(7)
    assignment: dict[str, int] = {}
    for n in names:  # stratified: each data set spread over the folds
        ids = [c.question_id for c in cases if c.dataset == n]
        rng.shuffle(ids)
        assignment.update({q: k % folds for k, q in enumerate(ids)})
    held: dict[str, list[float]] = defaultdict(list)
    held_default: dict[str, list[float]] = defaultdict(list)
    picks = []
    for fold in range(folds):
        train = {q for q in every if assignment[q] != fold}
        chosen = policy(pick(train, False), pick(train, True))
        picks.append(f"{settings[pick(train, False)].label()} / {settings[pick(train, True)].label()}")
        for c in cases:
            if assignment[c.question_id] == fold:
                held[c.dataset].append(scores[c.question_id][chosen(c)])
                held_default[c.dataset].append(scores[c.question_id][default_policy(c)])
    cv = {
        n: {"tuned": mean(held[n]), "default": mean(held_default[n]), "best single ranking": arm_best[n]} for n in names
    }
    print(f"\n{folds}-fold cross-validation (stratified by data set, each weighted equally), held-out R@10:")
    print_table(
        ["data set", "tuned on the other folds", "default", "best single ranking"],
        [[n, v["tuned"], v["default"], v["best single ranking"]] for n, v in cv.items()],
    )
    print(f"picks per fold (plain / named): {picks}")
    return {
        "single": [{"fusion": f.label(), **v} for f, v in single],
        "per_kind_in_sample": {"plain": settings[plain_i].label(), "named": settings[named_i].label(), **in_sample},
        "cross_validation": cv,
        "picks": picks,
        "named_questions": {n: dict(counts[n]) for n in names},
    }


def all_cases(corpora: Sequence[Corpus]) -> list[Case]:
    """Every question of every data set."""
    return [c for corpus in corpora for c in corpus.cases]


def scores_of_arm(arms: dict[str, Any], case: Case, arm: int) -> float:
    """R@10 of one ranking alone (0 dense, 1 lexical)."""
    found, sources = arms[case.question_id][arm], arms[case.question_id][2]
    return covered(case.evidence, [sources[p.id] for p in found[:10]])


# -- through MCP stdio ----------------------------------------------------------------------


async def over_stdio(corpus: Corpus, data_dir: Path) -> dict[str, Any]:
    """The corpus through a spawned server: add_memory, then search_memory and recall per question."""
    env = server_env(data_dir)
    latencies: list[float] = []
    r10: list[float] = []
    budgeted: list[float] = []
    with tempfile.TemporaryFile("w+") as errlog:
        async with mcp_client(env, errlog) as client:
            for scope, messages in corpus.messages.items():
                for batch in batches(messages):
                    sent = [m.model_dump(exclude_none=True) for m in batch]
                    result = await client.call_tool("add_memory", {"messages": sent, "user_id": scope})
                    assert not result.is_error, result.content
            for case in corpus.cases:
                began = time.perf_counter()
                result = await client.call_tool("search_memory", {"query": case.question, "user_id": case.scope})
                latencies.append(time.perf_counter() - began)
                assert not result.is_error and result.structured_content is not None, result.content
                r10.append(covered(case.evidence, [h["source_ids"] for h in result.structured_content["hits"]]))
                packed = await client.call_tool(
                    "recall", {"query": case.question, "user_id": case.scope, "max_tokens": 1000}
                )
                assert not packed.is_error and packed.structured_content is not None, packed.content
                budgeted.append(covered(case.evidence, [b["source_ids"] for b in packed.structured_content["blocks"]]))
    figures = {"R@10": mean(r10), "recall within 1000": mean(budgeted), "search_latency": summary_ms(latencies)}
    print(
        f"\n{corpus.name} through MCP stdio: R@10 {figures['R@10']:.3f}, recall within 1,000 tokens "
        f"{figures['recall within 1000']:.3f}; search_memory p50 {figures['search_latency']['p50_ms']:.1f} ms, "
        f"p95 {figures['search_latency']['p95_ms']:.1f} ms over {len(latencies)} calls"
    )
    return figures


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    """Ingest each data set, evaluate, print and save."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--longmemeval", type=Path, default=DEFAULT_DATA, help="LongMemEval JSON(.gz); '' to skip")
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO, help="LoCoMo JSON(.gz); '' to skip")
    parser.add_argument("--questions", type=int, default=None, help="first N questions of each data set")
    parser.add_argument("--store", type=Path, default=None, help="data dir to keep and reuse (default: a temp dir)")
    parser.add_argument("--grid", action="store_true", help="score fusion settings, with cross-validation")
    parser.add_argument("--stdio", action="store_true", help="also run LoCoMo through MCP stdio")
    args = parser.parse_args()

    info = machine_info()
    print_machine(info)
    print(f"benchmark settings: {bench_env()}")
    tokenizer, count = token_counter()
    corpora = []
    if str(args.longmemeval) not in ("", "."):
        corpora.append(longmemeval(args.longmemeval, args.questions))
    if str(args.locomo) not in ("", "."):
        corpora.append(locomo(args.locomo, args.questions))
    if not corpora:
        sys.exit("nothing to measure: give --longmemeval or --locomo")
    results: dict[str, Any] = {"machine": info, "settings": bench_env(), "tokenizer": tokenizer, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="lightmem-rq-") as tmp:
        data_dir = args.store or Path(tmp) / "store"
        settings = settings_for(data_dir)
        print(f"store: {data_dir}; search settings: {settings.search.model_dump()}")
        memory = Memory.open(settings)
        arms: dict[str, Any] = {}
        try:
            for corpus in corpora:
                ingested = ingest(memory, corpus)
                measured = evaluate(memory, corpus, count)
                arms.update(measured["arms"])
                results["datasets"][corpus.name] = {
                    "data": str(args.longmemeval if corpus.name == "longmemeval" else args.locomo),
                    "questions": len(corpus.cases),
                    "ingest": ingested,
                    **report(corpus, measured["rows"]),
                    "per_question": measured["rows"],
                }
            if args.grid:
                named = {c.question_id: memory.names_speaker(c.question, Scope(c.scope)) for c in all_cases(corpora)}
                results["grid"] = run_grid(corpora, arms, named, Ranking.from_settings(settings.search))
        finally:
            memory.close()
        locomo_corpus = next((c for c in corpora if c.name == "locomo"), None)
        if args.stdio and locomo_corpus is not None:
            results["stdio"] = asyncio.run(over_stdio(locomo_corpus, Path(tmp) / "stdio"))
    results["search_defaults"] = settings.search.model_dump()
    write_results("retrieval_quality", results)


if __name__ == "__main__":
    main()
