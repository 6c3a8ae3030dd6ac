"""What `Memory.add` costs beyond the embedding: one-message adds with a constant-vector embedder.

The embedding model is most of an add's time and varies more between runs than the rest of the
add costs (docs/benchmarks.md §3), so comparing two versions of the code on the real model cannot
see a millisecond. With the embedding taken out, this times what the service itself does for one
message: validation, redaction, the lookup of the turns before it, BM25, payloads, the durable
store write. Run by path, it measures whichever `lightmem_mcp` is first on `PYTHONPATH`:

    .venv/bin/python bench/add_overhead.py [--adds 400]
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/add_overhead.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightmem_mcp
from lightmem_mcp.config import CompressionSettings, Settings, StoreSettings
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope
from lightmem_mcp.store.edge import EdgeStore
from lightmem_mcp.store.schema import SCHEMA_VERSION, StoreLayout

try:
    from lightmem_mcp.api import Message
except ImportError:  # versions before the tool-facing models had their own module
    from lightmem_mcp.records import Message  # type: ignore[attr-defined,no-redef]

DIMENSION = 384
WARM_UP = 50


class ConstantEmbedder:
    """Every text gets the same unit vector: no model time at all."""

    id = "constant"
    dimension = DIMENSION

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One constant vector per text."""
        return [[1.0] + [0.0] * (DIMENSION - 1) for _ in texts]

    def embed_query(self, text: str) -> list[float]:
        """The constant vector."""
        return [1.0] + [0.0] * (DIMENSION - 1)


def main() -> None:
    """Time single-message adds into one session and print p50 / mean after a warm-up."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adds", type=int, default=400, help=f"one-message adds, the first {WARM_UP} untimed")
    args = parser.parse_args()
    settings = Settings(
        store=StoreSettings(data_dir=Path(tempfile.mkdtemp())), compression=CompressionSettings(enabled=False)
    )
    lexical = LexicalEncoder()
    layout = StoreLayout(SCHEMA_VERSION, DIMENSION, ConstantEmbedder.id, lexical.id)
    store = EdgeStore(settings.store.embedded_path, layout)
    memory = Memory(settings, ConstantEmbedder(), store, lexical)  # type: ignore[arg-type]
    times = []
    for i in range(args.adds):
        message = Message(role="user", content=f"I walked dog number {i} to the park by the river today.", id=f"m{i}")
        started = time.perf_counter()
        memory.add([message], Scope("bench", session_id="s"))
        times.append((time.perf_counter() - started) * 1000)
    memory.close()
    timed = times[WARM_UP:]
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"code: {Path(lightmem_mcp.__file__).parent}")
    print(
        f"one-message add without embedding, {len(timed)} adds: p50 {statistics.median(timed):.2f} ms, "
        f"mean {statistics.mean(timed):.2f} ms"
    )


if __name__ == "__main__":
    main()
