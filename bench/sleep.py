"""Sleep-time work on LongMemEval data, with the scripted LLM server: what it costs and how long it takes.

Part 1, consolidation of ~10k facts (the user turns of LongMemEval haystacks, one user per
haystack, stored as facts): wall time, targets found, LLM calls and input tokens, with the
default grouping (`targets_per_call`, several older facts decided per call) against LightMem's
one call per target, measured in the same run on the same store. The scripted LLM answers
"ignore" for every target, so both runs see the same queue.

Part 2, summaries: LLM calls per 1,000 turns for session, day and week windows, on stored turns.

    python -m bench.sleep --facts 10000
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import haystack_turns, load_questions, machine_info, print_machine, print_table, write_results
from bench.pipeline import open_memory
from lightmem_mcp.config import ConsolidationSettings, PipelineSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import LEDGER_KIND, Fact, LedgerEntry, RecordFilter, Scope
from lightmem_mcp.timestamps import now, parse_timestamp
from tests.openai_server import ChatRequest, FakeLLMServer

TARGET = re.compile(r"^TARGET (\d+) ", re.MULTILINE)


def ignore_all(request: ChatRequest) -> dict[str, Any]:
    return {"decisions": [{"target": int(n), "action": "ignore"} for n in TARGET.findall(request.user)]}


def summary(request: ChatRequest) -> dict[str, Any]:
    return {"summary": "The period in brief."}


def load_facts(memory: Memory, questions: list[dict[str, Any]], limit: int) -> list[str]:
    """Store the user turns of each haystack as one user's facts (first 300 characters); returns the users."""
    users: list[str] = []
    count = 0
    for question in questions:
        if count >= limit:
            break
        user = f"user-{question['question_id']}"
        users.append(user)
        turns = [t for t in haystack_turns(question)[0] if t.role == "user"][: limit - count]
        texts = [" ".join(t.content.split())[:300] for t in turns]
        stored_at = now()
        for start in range(0, len(turns), 256):
            chunk = turns[start : start + 256]
            facts = [
                Fact.new(
                    Scope(user),
                    text,
                    source_ids=[turn.id],
                    role="user",
                    speaker=None,
                    event_time=parse_timestamp(turn.timestamp),
                    stored_at=stored_at,
                    topic_id=None,
                    batch_turn_ids=[],
                    llm_call_id="bench",
                )
                for turn, text in zip(chunk, texts[start : start + 256], strict=True)
            ]
            memory.writer.write(facts)
        count += len(turns)
    return users


def consolidation(
    questions: list[dict[str, Any]], facts: int, root: Path, embedder: SentenceTransformerEmbedder
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    llm = FakeLLMServer().start()
    llm.script(*[ignore_all] * 200_000)
    try:
        settings = Settings(
            store=StoreSettings(data_dir=root / "consolidation"),
            llm=llm.settings(max_retries=0),
            pipeline=PipelineSettings(buffer_tokens=10_000),
        )
        memory = open_memory(settings, embedder)
        started = time.perf_counter()
        users = load_facts(memory, questions, facts)
        stored = sum(memory.store.count(RecordFilter(user, kinds=("fact",))) for user in users)
        load_s = time.perf_counter() - started
        for name, per_call in (("grouped (default 8 per call)", 8), ("one call per target", 1)):
            memory.consolidator._settings = ConsolidationSettings(targets_per_call=per_call)
            for user in users:  # both runs start from the same queue
                memory.store.set_payload(RecordFilter(user, kinds=("fact",)), {"stage": "extracted"})
            before = len(llm.requests)
            since = time.time()
            t0 = time.perf_counter()
            result = memory.consolidate(None)
            seconds = time.perf_counter() - t0
            requests = llm.requests[before:]
            ledger = [
                entry
                for user in users
                for p in memory.store.scroll(RecordFilter(user, kinds=(LEDGER_KIND,)), 100_000)
                if (entry := LedgerEntry(p.id, p.payload)).event_ts >= since and entry.purpose == "update"
            ]
            results[name] = {
                "facts": stored,
                "users": result.users,
                "targets": result.targets,
                "llm_calls": len(requests),
                "input_tokens": sum(entry.prompt_tokens for entry in ledger),
                "seconds": round(seconds, 2),
            }
            assert result.llm_calls == len(requests) == len(ledger)
        memory.close()
    finally:
        llm.stop()
    results["load_seconds"] = round(load_s, 1)
    return results


def summaries(questions: list[dict[str, Any]], root: Path, embedder: SentenceTransformerEmbedder) -> dict[str, Any]:
    results: dict[str, Any] = {}
    llm = FakeLLMServer().start()
    llm.script(*[summary] * 200_000)
    try:
        settings = Settings(
            store=StoreSettings(data_dir=root / "summaries"),
            llm=llm.settings(max_retries=0),
            pipeline=PipelineSettings(messages_use="hybrid", buffer_tokens=10**9),
        )
        memory = open_memory(settings, embedder)
        turns = 0
        for question in questions:
            user = Scope(f"user-{question['question_id']}")
            haystack = haystack_turns(question)[0]
            turns += len(haystack)
            sessions: dict[str, list[Any]] = {}
            for turn in haystack:
                sessions.setdefault(turn.session_id, []).append(turn)
            for session_id, session in sessions.items():
                for start in range(0, len(session), 32):
                    chunk = [t.message() for t in session[start : start + 32]]
                    memory.add(chunk, Scope(user.user_id, session_id=session_id))
        for window in ("session", "day", "week"):
            calls = 0
            t0 = time.perf_counter()
            for question in questions:
                calls += memory.summarize(Scope(f"user-{question['question_id']}"), window=window).llm_calls
            results[window] = {
                "turns": turns,
                "llm_calls": calls,
                "calls_per_1k_turns": round(calls * 1000 / turns, 1),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        memory.close()
    finally:
        llm.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=10_000, help="facts to consolidate")
    parser.add_argument("--summary-questions", type=int, default=2, help="haystacks to summarize (~500 turns each)")
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    questions = load_questions()
    embedder = SentenceTransformerEmbedder(Settings().embedding)
    with tempfile.TemporaryDirectory(prefix="lightmem-bench-") as tmp:
        consolidated = consolidation(questions, args.facts, Path(tmp), embedder)
        summarized = summaries(questions[: args.summary_questions], Path(tmp), embedder)

    print(f"\nConsolidation (score threshold 0.8, top_k 20); facts stored in {consolidated['load_seconds']} s")
    rows = [
        [name, v["facts"], v["users"], v["targets"], v["llm_calls"], f"{v['input_tokens']:,}", v["seconds"]]
        for name, v in consolidated.items()
        if isinstance(v, dict)
    ]
    print_table(["grouping", "facts", "users", "targets", "LLM calls", "input tokens", "seconds"], rows)
    grouped, single = consolidated["grouped (default 8 per call)"], consolidated["one call per target"]
    if grouped["llm_calls"]:
        print(
            f"grouped vs one call per target: {single['llm_calls'] / grouped['llm_calls']:.1f}x fewer calls, "
            f"{single['input_tokens'] / max(1, grouped['input_tokens']):.2f}x fewer input tokens"
        )
    print("\nSummaries: one LLM call per window")
    print_table(
        ["window", "turns", "LLM calls", "calls / 1k turns", "seconds"],
        [[w, v["turns"], v["llm_calls"], v["calls_per_1k_turns"], v["seconds"]] for w, v in summarized.items()],
    )
    write_results("sleep", {"machine": info, "consolidation": consolidated, "summaries": summarized})


if __name__ == "__main__":
    main()
