"""The LightMem pipeline's cost and speed on LongMemEval haystacks, with the scripted LLM server.

Part 1, cost: LLM calls and input tokens per 1,000 turns for the buffered pipeline (one extraction
call per batch of topic segments) against mem0's pattern (one extraction call per add), both
measured in the same run against the same local OpenAI-compatible server. Adds are one exchange
(a user turn and the assistant's reply), the way an agent calls add_memory after each exchange.

Part 2, speed: ingest throughput (turns/s, adds of 32 messages) with compression (a tiny
LLMLingua-2-shaped model: real mechanics, meaningless output) and segmentation + extraction on,
against both off.

    python -m bench.pipeline --questions 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    batches,
    haystack_turns,
    load_questions,
    machine_info,
    print_machine,
    print_table,
    write_results,
)
from lightmem_mcp.api import Message
from lightmem_mcp.config import CompressionSettings, PipelineSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.extractor import EXTRACTION_PROMPT, BufferedTurn, ExtractionAnswer, render_batch
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.llm import LLMClient
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope
from lightmem_mcp.store.edge import EdgeStore
from lightmem_mcp.timestamps import parse_timestamp
from lightmem_mcp.tokens import TokenCounter
from tests.openai_server import ChatRequest, FakeLLMServer, facts_per_message
from tests.tiny_models import build_tiny_llmlingua2

# A stand-in LLM: one fact per numbered message, citing it.
one_fact_per_message = facts_per_message("The user said")


def open_memory(settings: Settings, embedder: SentenceTransformerEmbedder) -> Memory:
    lexical = LexicalEncoder()
    layout = store_layout(embedder, lexical)
    return Memory(settings, embedder, EdgeStore(settings.store.embedded_path, layout), lexical)


def exchanges(messages: list[Message]) -> list[list[Message]]:
    """Adds as an agent makes them: each user turn with the replies that follow it."""
    adds: list[list[Message]] = []
    for message in messages:
        if message.role == "user" or not adds:
            adds.append([])
        adds[-1].append(message)
    return adds


def cost(
    questions: list[dict[str, Any]], embedder: SentenceTransformerEmbedder, root: Path, project: str | None = None
) -> dict[str, Any]:
    """Calls and prompt tokens per 1,000 turns: buffered pipeline vs one call per add. With `project`,
    the turns are stored in a project, whose extraction also sorts the facts about the person out."""
    counter = TokenCounter("cl100k_base")
    server = FakeLLMServer().start()
    try:
        settings = Settings(
            store=StoreSettings(data_dir=root / "cost"),
            compression=CompressionSettings(enabled=False),
            llm=server.settings(timeout_s=60.0),
            pipeline=PipelineSettings(),
        )
        memory = open_memory(settings, embedder)
        turns = 0
        baseline_calls = baseline_tokens = per_message_tokens = 0
        pipeline_requests: list[ChatRequest] = []
        baseline = LLMClient(settings.llm)
        for question in questions:
            scope = Scope(question["question_id"], project=project)
            messages = [turn.message() for turn in haystack_turns(question)[0]]
            turns += len(messages)
            server.script(*[one_fact_per_message] * len(messages))
            start = len(server.requests)
            for add in exchanges(messages):
                memory.add(add, scope)
            memory.buffer.drain()
            memory.flush(scope)
            pipeline_requests += server.requests[start:]
            # mem0's pattern, measured against the same server: one extraction call per add.
            before = len(server.requests)
            for add in exchanges(messages):
                prompt = render_batch([[_turn(m) for m in add]])
                server.script(one_fact_per_message)
                baseline.complete_json("extraction", EXTRACTION_PROMPT, prompt, ExtractionAnswer)
                baseline_tokens += counter.count(EXTRACTION_PROMPT) + counter.count(prompt)
            baseline_calls += len(server.requests) - before
            per_message_tokens += sum(
                counter.count(EXTRACTION_PROMPT) + counter.count(render_batch([[_turn(m)]])) for m in messages
            )
        memory.close()
    finally:
        server.stop()
    pipeline_calls = len(pipeline_requests)
    pipeline_tokens = sum(counter.count(r.system) + counter.count(r.user) for r in pipeline_requests)
    per_1k = 1000 / turns
    return {
        "turns": turns,
        "pipeline": {
            "calls_per_1k_turns": pipeline_calls * per_1k,
            "input_tokens_per_1k_turns": pipeline_tokens * per_1k,
        },
        "one_call_per_add": {
            "calls_per_1k_turns": baseline_calls * per_1k,
            "input_tokens_per_1k_turns": baseline_tokens * per_1k,
        },
        "one_call_per_message": {
            "calls_per_1k_turns": 1000.0,
            "input_tokens_per_1k_turns": per_message_tokens * per_1k,
        },
    }


def _turn(message: Message) -> BufferedTurn:
    return BufferedTurn(
        record_id="",
        message_id=message.id or "",
        role=message.role,
        speaker=message.name,
        text=message.content,
        event_time=parse_timestamp(message.timestamp or "2024-01-01"),
        topic_id="",
    )


def throughput(questions: list[dict[str, Any]], embedder: SentenceTransformerEmbedder, root: Path) -> dict[str, Any]:
    """Turns/s through Memory.add (adds of 32), pipeline off vs compression + segmentation + extraction on."""
    messages = [turn.message() for q in questions for turn in haystack_turns(q)[0]]
    tiny = build_tiny_llmlingua2(root / "models", extra_text=" ".join(m.content for m in messages[:2000]))
    server = FakeLLMServer().start()
    results: dict[str, Any] = {"turns": len(messages)}
    try:
        variants = {
            "off (no compression, no LLM)": Settings(
                store=StoreSettings(data_dir=root / "off"), compression=CompressionSettings(enabled=False)
            ),
            "on (tiny LLMLingua-2 at 0.8, segmentation, extraction)": Settings(
                store=StoreSettings(data_dir=root / "on"),
                compression=CompressionSettings(path=tiny, device="cpu"),
                llm=server.settings(timeout_s=60.0),
            ),
        }
        for name, settings in variants.items():
            server.script(*[one_fact_per_message] * len(messages))
            memory = open_memory(settings, embedder)
            memory.compressor.load()
            started = time.perf_counter()
            for batch in batches(messages):
                memory.add(list(batch), Scope("throughput"))
            added = time.perf_counter() - started
            memory.buffer.drain()
            drained = time.perf_counter() - started
            memory.close()
            results[name] = {
                "add_turns_per_s": len(messages) / added,
                "with_extraction_turns_per_s": len(messages) / drained,
            }
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=4, help="LongMemEval haystacks to use (about 500 turns each)")
    parser.add_argument("--throughput-questions", type=int, default=2)
    parser.add_argument("--project", default=None, help="Store the turns in this project (default: the global tier).")
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    questions = load_questions(limit=max(args.questions, args.throughput_questions))
    embedder = SentenceTransformerEmbedder(Settings().embedding)
    with tempfile.TemporaryDirectory(prefix="lightmem-bench-") as tmp:
        spent = cost(questions[: args.questions], embedder, Path(tmp), args.project)
        speed = throughput(questions[: args.throughput_questions], embedder, Path(tmp))

    print(f"\nLLM cost on {spent['turns']} LongMemEval turns (buffer 512 tokens, user turns extracted, no compression)")
    rows = [
        [name, f"{v['calls_per_1k_turns']:.1f}", f"{v['input_tokens_per_1k_turns']:,.0f}"]
        for name, v in spent.items()
        if isinstance(v, dict)
    ]
    print_table(["pattern", "LLM calls / 1k turns", "input tokens / 1k turns"], rows)
    base = spent["one_call_per_add"]
    mine = spent["pipeline"]
    print(
        f"pipeline vs one call per add: {base['calls_per_1k_turns'] / mine['calls_per_1k_turns']:.1f}x fewer calls, "
        f"{base['input_tokens_per_1k_turns'] / mine['input_tokens_per_1k_turns']:.1f}x fewer input tokens"
    )
    print(f"\nIngest throughput on {speed['turns']} turns, adds of 32 messages")
    print_table(
        ["pipeline", "add turns/s", "turns/s incl. extraction"],
        [
            [name, f"{v['add_turns_per_s']:.1f}", f"{v['with_extraction_turns_per_s']:.1f}"]
            for name, v in speed.items()
            if isinstance(v, dict)
        ],
    )
    write_results("pipeline", {"machine": info, "cost": spent, "throughput": speed})


if __name__ == "__main__":
    main()
