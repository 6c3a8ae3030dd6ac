"""Demo: an MCP client spawns `lightmem-mcp` over stdio, stores a conversation, searches it.

Run with `make demo`. It uses a fresh data directory under /tmp unless LIGHTMEM_DATA_DIR is set,
so it never touches the memories of your own MCP clients.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

CONVERSATION = [
    ("user", "Hi! I just moved to Lisbon for a new job at a fintech startup.", "2024/03/02 (Sat) 10:15"),
    ("assistant", "Welcome to Lisbon! What will you be working on?", "2024/03/02 (Sat) 10:15"),
    ("user", "I'm a backend engineer there, mostly Go and PostgreSQL.", "2024/03/02 (Sat) 10:16"),
    ("user", "By the way, I'm vegetarian and allergic to peanuts.", "2024/03/02 (Sat) 10:18"),
    ("assistant", "Noted. Lisbon has great vegetarian spots in Principe Real.", "2024/03/02 (Sat) 10:18"),
    ("user", "My sister Ana is visiting on April 12th; we want to hike in Sintra.", "2024/03/09 (Sat) 18:40"),
    ("assistant", "The Sintra trail to Pena Palace takes about 2 hours.", "2024/03/09 (Sat) 18:41"),
]

QUERIES = [
    "What does the user do for work?",
    "Any dietary restrictions to keep in mind for dinner?",
    "Who is coming to visit and when?",
]


def show(result: Any) -> dict[str, Any]:
    if result.is_error:
        sys.exit(f"tool error: {result.content[0].text}")
    return dict(result.structured_content)


async def main() -> None:
    data_dir = os.environ.get("LIGHTMEM_DATA_DIR") or tempfile.mkdtemp(prefix="lightmem-demo-")
    command = str(Path(sys.executable).with_name("lightmem-mcp"))
    print(f"lightmem-mcp demo: data in {data_dir}\n")
    env = {
        "LIGHTMEM_DATA_DIR": data_dir,
        "LIGHTMEM_LOG_LEVEL": "ERROR",
        # No LLM here, so no extraction to save tokens for: skip the 709 MB LLMLingua-2 download.
        "LIGHTMEM_COMPRESSION_ALLOW_DOWNLOAD": "false",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("LIGHTMEM_")})
    params = StdioServerParameters(command=command, env=env)
    started = time.perf_counter()
    async with Client(params, read_timeout_seconds=300) as client:
        print(f"initialize answered in {time.perf_counter() - started:.2f} s")
        tools = (await client.list_tools()).tools
        print("tools:", ", ".join(tool.name for tool in tools), "\n")

        messages = [
            {"role": role, "content": text, "timestamp": when, "id": f"msg-{i + 1}"}
            for i, (role, text, when) in enumerate(CONVERSATION)
        ]
        started = time.perf_counter()
        added = show(await client.call_tool("add_memory", {"messages": messages, "user_id": "demo"}))
        took = time.perf_counter() - started
        print(f"stored {len(added['ids'])} turns in {took:.2f} s (first call includes model loading)\n")

        for query in QUERIES:
            found = show(await client.call_tool("search_memory", {"query": query, "limit": 3, "user_id": "demo"}))
            print(f"? {query}")
            for hit in found["hits"]:
                sources = ",".join(hit["source_ids"])
                print(f"  [{hit['score']:.3f}] {hit['text']}  (source: {sources}, {hit['event_time'][:16]})")
            print()

        # No LLM is configured here, so the summary is extractive: the most central sentences.
        summary = show(await client.call_tool("summarize", {"user_id": "demo", "window": "week"}))
        print("weekly summaries (extractive, no LLM configured):")
        for each in summary["summaries"]:
            print(f"  {each['window_key']}: {each['text']}  ({len(each['covered_ids'])} memories)")
        stats = show(await client.call_tool("stats", {"user_id": "demo"}))
        held = ", ".join(f"{row['kind']}: {row['active']}" for row in stats["records"] if row["total"])
        print(f"\nrecords held ({held})")


if __name__ == "__main__":
    anyio.run(main)
