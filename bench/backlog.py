"""Backlog extraction: turns stored while no LLM was configured, extracted later, against the normal pipeline.

Per data set (LongMemEval haystacks, LoCoMo conversations), the same turns go through two stores,
one exchange per add (a message and the reply to it, as an agent calls add_memory), each haystack or
conversation in its own scope:

- normal: the scripted LLM (tests/openai_server.py, one fact per message) is configured from the
  start; background extraction runs as the buffer fills, then every scope is flushed. Twice: with
  extraction keeping up (each add waits for the extraction it started, as at a conversation's
  pace: the backlog's reference, since it feeds its turns to the buffer the same way), and with
  the adds back to back, where each background flush takes what piled up meanwhile;
- backlog: no LLM configured, so every turn is stored `skipped`; the store is closed, reopened with
  the LLM, and each scope of `backlog_scopes()` gets a dry run (`flush(backlog=True, dry_run=True)`,
  checked to change no stored point and send no request) and then the real `flush(backlog=True)`.

Reported: LLM calls and prompt / completion tokens per 1k turns for both and their ratio (target
within 5 %); turns lost (an acknowledged turn missing afterwards, or not `extracted` when its role
feeds extraction / not `skipped` when it does not; target 0); and the dry runs' summed estimate
against what the real flushes spent: calls, tokens, total, cost (price table entry for the fake
model; target: total tokens within 10 %). Spent tokens are what the fake server reports (about four
characters a token); the prompts it received are also recounted with the estimate's own tokenizer
(cl100k_base), which isolates the estimate's logic from the tokenizer. The estimate's completion
tokens are the user's earlier completion share, or 0.2 of the prompt with no history (a backlog
user has none); the scripted LLM restates every message, so its answers are far longer than that.

Embeddings are cached by text across both stores (the same texts give the same vectors), so the
second store costs no model time; only LLM calls and tokens are measured here, not speed.
Compression is off by default; `--compress` turns it on with the tiny random LLMLingua-2 model,
so deferred compression runs inside the flushes (segmentation then uses that model's attention).

    .venv/bin/python -m bench.backlog [--turns 2000] [--locomo-turns 2000] [--compress]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import haystack_turns, load_questions, machine_info, print_machine, print_table, write_results
from bench.pipeline import exchanges
from lightmem_mcp.api import Message
from lightmem_mcp.config import CompressionSettings, PipelineSettings, PriceSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.presets import ModelPrice
from lightmem_mcp.records import RecordFilter, Scope, Turn
from lightmem_mcp.store.edge import EdgeStore
from lightmem_mcp.tokens import TokenCounter
from tests.openai_server import FakeLLMServer, facts_per_message

DEFAULT_LOCOMO = Path("/work/shared/data/locomo_dev2.json.gz")
# Per 1M tokens, DeepSeek-like list prices; any figures do, the estimate and the ledger share them.
PRICE = PriceSettings(
    table={"fake-model": ModelPrice(input_cache_miss=0.28, input_cache_hit=0.028, output=0.42, currency="USD")}
)
# The scripted LLM: one fact per numbered message, citing it.
ANSWER = facts_per_message("The user said")

# Exchanges by scope, in the order they are added.
Adds = dict[Scope, list[list[Message]]]
ONE_USER = "bench-user"


def scope_for(key: str, one_user: bool) -> Scope:
    """A haystack or conversation's scope: its own user, or (`--one-user`) a session of one user."""
    return Scope(ONE_USER, session_id=key) if one_user else Scope(key)


class CachingEmbedder:
    """The real embedder, remembering each text's vector: the second store pays no model time."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        self._inner = inner
        self._cache: dict[str, list[float]] = {}
        self.id = inner.id
        self.dimension = inner.dimension
        self.device = inner.device
        self.location = inner.location
        self.computed = 0

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; only unseen texts reach the model."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vector in zip(missing, self._inner.embed_documents(missing), strict=True):
                self._cache[text] = vector
            self.computed += len(missing)
        return [self._cache[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        """The vector of one search query (not cached)."""
        return self._inner.embed_query(text)


# -- data ------------------------------------------------------------------------------


def longmemeval_adds(limit: int, one_user: bool) -> Adds:
    """Haystacks in file order, one scope each, as exchanges, until `limit` turns."""
    adds: Adds = {}
    total = 0
    for question in load_questions():
        messages = [turn.message() for turn in haystack_turns(question)[0]]
        for add in exchanges(messages):
            if total >= limit:
                return adds
            adds.setdefault(scope_for(question["question_id"], one_user), []).append(add)
            total += len(add)
    return adds


def locomo_adds(path: Path, limit: int, one_user: bool) -> Adds:
    """LoCoMo conversations, one scope each, as pairs of consecutive messages (one speaker, then the
    other's reply), until `limit` turns. Both speakers are `user` messages with their names."""
    from bench.retrieval_quality import locomo

    adds: Adds = {}
    total = 0
    for sample, messages in locomo(path, None).messages.items():
        for start in range(0, len(messages), 2):
            if total >= limit:
                return adds
            add = messages[start : start + 2]
            adds.setdefault(scope_for(sample, one_user), []).append(add)
            total += len(add)
    return adds


# -- one store -------------------------------------------------------------------------


def open_memory(settings: Settings, embedder: CachingEmbedder) -> Memory:
    lexical = LexicalEncoder()
    layout = store_layout(embedder, lexical)
    store = EdgeStore(settings.store.embedded_path, layout)
    return Memory(settings, embedder, store, lexical)


def settings_for(data_dir: Path, server: FakeLLMServer | None, compression: CompressionSettings) -> Settings:
    """No LLM when `server` is None."""
    values: dict[str, Any] = {
        "store": StoreSettings(data_dir=data_dir),
        "compression": compression,
        "pipeline": PipelineSettings(),
        "price": PRICE,
    }
    if server is not None:
        values["llm"] = server.settings(timeout_s=60.0)
    return Settings(**values)


def add_all(memory: Memory, adds: Adds, keep_up: bool = False) -> dict[Scope, list[str]]:
    """Every exchange added; the record ids each add acknowledged, by scope. With `keep_up`, each add
    waits for the background extraction it started, as when a conversation is slower than extraction."""
    acked: dict[Scope, list[str]] = {}
    for scope, scope_adds in adds.items():
        for add in scope_adds:
            acked.setdefault(scope, []).extend(memory.add(add, scope).ids)
            if keep_up:
                memory.buffer.drain()
    return acked


def fingerprint(memory: Memory) -> str:
    """A hash of every stored point's id and payload: equal before and after means nothing changed."""
    digest = hashlib.sha256()
    for point in sorted(memory.store.scan(None), key=lambda p: p.id):
        digest.update(point.id.encode())
        digest.update(json.dumps(point.payload, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def turn_stages(memory: Memory) -> dict[str, int]:
    """Stored turns by stage, across every scope."""
    return dict(Counter(Turn.read(p).stage for p in memory.store.scan(None) if p.payload.get("kind") == "turn"))


def audit(memory: Memory, acked: dict[Scope, list[str]]) -> dict[str, Any]:
    """Acknowledged turns missing, or not where they belong (extracted when their role feeds
    extraction, skipped when it does not), and the turns by compression outcome."""
    missing = wrong = checked = 0
    compression: Counter[str] = Counter()
    examples: list[str] = []
    for scope, ids in acked.items():
        where = RecordFilter(scope.user_id, scope.agent_id, scope.session_id, kinds=("turn",))
        stored = {p.id: Turn.read(p) for p in memory.store.scan(where)}
        for record_id in ids:
            checked += 1
            turn = stored.get(record_id)
            if turn is None:
                missing += 1
                examples.append(f"{scope}/{record_id}: missing")
                continue
            expected = "extracted" if memory.buffer.feeds_extraction(turn.role or "user") else "skipped"
            compression[turn.compression] += 1
            if turn.stage != expected:
                wrong += 1
                examples.append(f"{scope}/{record_id}: {turn.stage}, expected {expected}")
    return {
        "checked": checked,
        "missing": missing,
        "wrong_stage": wrong,
        "lost": missing + wrong,
        "examples": examples[:5],
        "compression": dict(compression),
    }


def spent(memory: Memory, scopes: Sequence[Scope]) -> dict[str, Any]:
    """LLM calls, tokens and cost of the scopes, from the usage ledger (`stats`)."""
    calls = prompt = completion = 0
    cost: Counter[str] = Counter()
    for scope in scopes:
        total = memory.stats(scope)
        calls += total.llm_total.calls
        prompt += total.llm_total.prompt_tokens
        completion += total.llm_total.completion_tokens
        cost.update(total.cost.actual)
    return {
        "calls": calls,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": cost.get("USD", 0.0),
    }


def recount(server: FakeLLMServer, start: int, counter: TokenCounter) -> int:
    """Prompt tokens of the requests since `start`, counted as the estimate counts (system + user)."""
    return sum(counter.count(r.system) + counter.count(r.user) for r in server.requests[start:])


def normal(
    adds: Adds, embedder: CachingEmbedder, root: Path, compression: CompressionSettings, keep_up: bool
) -> dict[str, Any]:
    """The LLM configured from the start: adds (background extraction as buffers fill), then a flush per scope.
    With `keep_up`, extraction keeps up with the adds (a conversation's pace); without, the adds come back
    to back and each background flush takes whatever piled up meanwhile (bigger batches, fewer calls)."""
    server = FakeLLMServer().start()
    try:
        server.script(*[ANSWER] * 100_000)
        memory = open_memory(settings_for(root / ("normal" if keep_up else "burst"), server, compression), embedder)
        memory.compressor.load()
        began = time.perf_counter()
        acked = add_all(memory, adds, keep_up)
        memory.buffer.drain()
        flushes = [memory.flush(scope) for scope in adds]
        seconds = time.perf_counter() - began
        result = {
            "turns": sum(len(ids) for ids in acked.values()),
            "seconds": seconds,
            "spent": spent(memory, list(adds)),
            "requests": len(server.requests),
            "flush_errors": [f.error for f in flushes if f.error],
            # Scopes `backlog_scopes` lists in a store that always had an LLM: should be none.
            "backlog_scopes_listed": [str(s) for s in memory.backlog_scopes()],
            "audit": audit(memory, acked),
        }
        memory.close()
    finally:
        server.stop()
    if server.unexpected or server.broken:
        raise SystemExit(f"the scripted LLM failed: {len(server.unexpected)} unscripted, {server.broken[:1]}")
    return result


def backlog(adds: Adds, embedder: CachingEmbedder, root: Path, compression: CompressionSettings) -> dict[str, Any]:
    """No LLM while adding; reopened with one; per backlog scope a dry run, then the real backlog flush."""
    data_dir = root / "backlog"
    memory = open_memory(settings_for(data_dir, None, compression), embedder)
    began = time.perf_counter()
    acked = add_all(memory, adds)
    stages_stored = turn_stages(memory)
    memory.close()

    counter = TokenCounter("cl100k_base")
    server = FakeLLMServer().start()
    try:
        server.script(*[ANSWER] * 100_000)
        memory = open_memory(settings_for(data_dir, server, compression), embedder)
        memory.compressor.load()
        scopes = memory.backlog_scopes()
        estimate = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "backlog_turns": 0}
        dry_changed: list[str] = []
        dry_requests = 0
        flushes: list[dict[str, Any]] = []
        recounted = 0
        for scope in scopes:
            before, stages_before, requests_before = fingerprint(memory), turn_stages(memory), len(server.requests)
            plan = memory.flush(scope, backlog=True, dry_run=True)
            if fingerprint(memory) != before or turn_stages(memory) != stages_before:
                dry_changed.append(str(scope))
            dry_requests += len(server.requests) - requests_before
            assert plan.estimate is not None
            estimate["calls"] += plan.estimate.llm_calls
            estimate["prompt_tokens"] += plan.estimate.prompt_tokens
            estimate["completion_tokens"] += plan.estimate.completion_tokens
            estimate["cost_usd"] += plan.estimate.cost.get("USD", 0.0)
            estimate["backlog_turns"] += plan.backlog_turns
            start = len(server.requests)
            done = memory.flush(scope, backlog=True)
            recounted += recount(server, start, counter)
            flushes.append(
                {
                    "scope": str(scope),
                    "dry_run_turns": plan.extracted_turns,
                    "dry_run_backlog_turns": plan.backlog_turns,
                    "dry_run_calls": plan.estimate.llm_calls,
                    "backlog_turns": done.backlog_turns,
                    "extracted_turns": done.extracted_turns,
                    "calls": done.llm_calls,
                    "facts": done.facts,
                    "pending_after": done.pending_turns,
                    "error": done.error,
                }
            )
        seconds = time.perf_counter() - began
        # Scopes still listed after their backlog flush, and the backlog a dry run still finds there.
        after = memory.backlog_scopes()
        left = sum(memory.flush(s, backlog=True, dry_run=True).backlog_turns for s in after)
        estimate["total_tokens"] = estimate["prompt_tokens"] + estimate["completion_tokens"]
        result = {
            "turns": sum(len(ids) for ids in acked.values()),
            "seconds": seconds,
            "stages_when_stored": stages_stored,
            "backlog_scopes": len(scopes),
            "backlog_scopes_after": [str(s) for s in after],
            "backlog_turns_after": left,
            "dry_run_changed_scopes": dry_changed,
            "dry_run_requests": dry_requests,
            "estimate": estimate,
            "spent": spent(memory, list(adds)),
            "spent_prompt_tokens_cl100k": recounted,
            "requests": len(server.requests),
            "flushes": flushes,
            "audit": audit(memory, acked),
        }
        memory.close()
    finally:
        server.stop()
    if server.unexpected or server.broken:
        raise SystemExit(f"the scripted LLM failed: {len(server.unexpected)} unscripted, {server.broken[:1]}")
    return result


# -- report ----------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "-"


def report(name: str, run: dict[str, Any]) -> None:
    n, u, b = run["normal"], run["burst"], run["backlog"]
    print(
        f"\n{name}: {n['turns']} turns in {run['scopes']} scopes, one exchange per add (normal {n['seconds']:.0f} s, "
        f"back-to-back {u['seconds']:.0f} s, backlog {b['seconds']:.0f} s incl. both opens' adds and flushes)"
    )
    per_1k_n, per_1k_u, per_1k_b = 1000 / n["turns"], 1000 / u["turns"], 1000 / b["turns"]
    rows = []
    for label, key in (
        ("LLM calls / 1k turns", "calls"),
        ("prompt tokens / 1k turns", "prompt_tokens"),
        ("completion tokens / 1k turns", "completion_tokens"),
    ):
        normal_value, burst_value = n["spent"][key] * per_1k_n, u["spent"][key] * per_1k_u
        backlog_value = b["spent"][key] * per_1k_b
        rows.append(
            [
                label,
                f"{normal_value:,.1f}",
                f"{burst_value:,.1f}",
                f"{backlog_value:,.1f}",
                ratio(backlog_value, normal_value),
                ratio(backlog_value, burst_value),
            ]
        )
    per_call = [r["spent"]["prompt_tokens"] / max(r["spent"]["calls"], 1) for r in (n, u, b)]
    rows.append(
        [
            "(prompt tokens per call)",
            *(f"{value:,.0f}" for value in per_call),
            ratio(per_call[2], per_call[0]),
            ratio(per_call[2], per_call[1]),
        ]
    )
    print_table(
        [
            "per 1k turns",
            "normal (extraction keeps up)",
            "normal (back-to-back adds)",
            "backlog",
            "backlog / keeps up",
            "backlog / back-to-back",
        ],
        rows,
    )

    audit_b, audit_n = b["audit"], n["audit"]
    print(
        f"turns lost: backlog {audit_b['lost']} of {audit_b['checked']} "
        f"(missing {audit_b['missing']}, wrong stage {audit_b['wrong_stage']}); normal {audit_n['lost']}"
        + (f"; e.g. {audit_b['examples']}" if audit_b["examples"] else "")
    )
    print(
        f"stored without LLM: {b['stages_when_stored']}; backlog scopes {b['backlog_scopes']}, still listed after "
        f"the flushes {len(b['backlog_scopes_after'])} (backlog turns a dry run finds there: "
        f"{b['backlog_turns_after']}); listed in the normal store: {len(n['backlog_scopes_listed'])}"
    )
    print(f"compression at the end: backlog {audit_b['compression']}, normal {audit_n['compression']}")
    print(
        f"LLM requests seen by the server: normal {n['requests']} (ledger {n['spent']['calls']}), "
        f"backlog {b['requests']} (ledger {b['spent']['calls']})"
    )
    print(
        f"dry runs: stored points changed in {len(b['dry_run_changed_scopes'])} scope(s), "
        f"{b['dry_run_requests']} LLM request(s) sent"
    )
    errors = [f["error"] for f in b["flushes"] if f["error"]] + n["flush_errors"]
    if errors:
        print(f"flush errors: {errors}")

    est, got = b["estimate"], b["spent"]
    print(f"\n{name}: dry-run estimate (summed over {b['backlog_scopes']} scopes) vs what the backlog flushes spent")
    print_table(
        ["", "estimate", "spent", "estimate / spent"],
        [
            [label, fmt.format(estimated), fmt.format(spent_value), ratio(estimated, spent_value)]
            for label, fmt, estimated, spent_value in (
                ("LLM calls", "{}", est["calls"], got["calls"]),
                ("prompt tokens (server: ~4 chars/token)", "{:,}", est["prompt_tokens"], got["prompt_tokens"]),
                (
                    "prompt tokens (sent prompts recounted, cl100k)",
                    "{:,}",
                    est["prompt_tokens"],
                    b["spent_prompt_tokens_cl100k"],
                ),
                ("completion tokens", "{:,}", est["completion_tokens"], got["completion_tokens"]),
                ("total tokens", "{:,}", est["total_tokens"], got["total_tokens"]),
                ("cost (USD, fake-model at 0.28 / 0.42 per 1M)", "{:.5f}", est["cost_usd"], got["cost_usd"]),
            )
        ],
    )
    share_est = est["completion_tokens"] / max(est["prompt_tokens"], 1)
    share_got = got["completion_tokens"] / max(got["prompt_tokens"], 1)
    print(
        f"completion tokens per prompt token: estimated {share_est:.2f} (the user's earlier calls, "
        f"else the default 0.2), spent {share_got:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=2000, help="LongMemEval turns (0: skip)")
    parser.add_argument("--locomo-turns", type=int, default=2000, help="LoCoMo turns, at most 788 in dev2 (0: skip)")
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--compress", action="store_true", help="compression on, with the tiny random LLMLingua-2")
    parser.add_argument(
        "--one-user",
        action="store_true",
        help="every haystack / conversation a session of one user (its later dry runs know its completion share)",
    )
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)

    datasets: dict[str, Adds] = {}
    if args.turns:
        datasets["longmemeval"] = longmemeval_adds(args.turns, args.one_user)
    if args.locomo_turns:
        datasets["locomo"] = locomo_adds(args.locomo, args.locomo_turns, args.one_user)
    embedder = CachingEmbedder(SentenceTransformerEmbedder(Settings().embedding))
    results: dict[str, Any] = {"machine": info, "compress": args.compress, "one_user": args.one_user, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="lightmem-bench-backlog-") as tmp:
        root = Path(tmp)
        compression = CompressionSettings(enabled=False)
        if args.compress:
            from tests.tiny_models import build_tiny_llmlingua2

            text = " ".join(m.content for d in datasets.values() for a in d.values() for e in a for m in e)
            folder = build_tiny_llmlingua2(root / "models", extra_text=text[:2_000_000])
            compression = CompressionSettings(path=folder, device="cpu", allow_download=False)
        for name, adds in datasets.items():
            run = {
                "scopes": len(adds),
                "normal": normal(adds, embedder, root / name, compression, keep_up=True),
                "burst": normal(adds, embedder, root / name, compression, keep_up=False),
                "backlog": backlog(adds, embedder, root / name, compression),
            }
            results["datasets"][name] = run
            report(name, run)
    results["embeddings_computed"] = embedder.computed
    print(
        f"\ncompression: {'tiny random LLMLingua-2 (deferred, in the flushes)' if args.compress else 'off'}; "
        f"scopes: {'sessions of one user' if args.one_user else 'one user per haystack / conversation'}"
    )
    write_results("backlog", results)


if __name__ == "__main__":
    main()
