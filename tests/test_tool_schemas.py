"""The tools as a client sees them (`tools/list`) stay exactly as published: names, arguments, result
schemas, annotations. A client that cached them, or an agent prompt that names a field, keeps working.

The snapshot is `tests/fixtures/tools-list.json`; after a deliberate change to a tool, write it again
with `python -m tests.test_tool_schemas` and say in the change what a client will see differently."""

from __future__ import annotations

import asyncio
import difflib
import json
import os
from pathlib import Path
from typing import Any

from mcp import Client

from lightmem_mcp.config import ServerSettings, Settings
from lightmem_mcp.server import MemoryProvider, build_server

SNAPSHOT = Path(__file__).parent / "fixtures" / "tools-list.json"


def _unused(_: Settings) -> Any:
    raise AssertionError("listing tools must not load the memory service")


async def published_tools() -> str:
    """`tools/list` of a server with the default settings, as stable JSON."""
    settings = Settings(server=ServerSettings(warmup=False))
    async with Client(build_server(settings, MemoryProvider(settings, _unused))) as client:
        tools = (await client.list_tools()).tools
    listed = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]
    return json.dumps(listed, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def test_the_published_tools_are_unchanged(monkeypatch: Any) -> None:
    for name in [n for n in os.environ if n.startswith("LIGHTMEM_")]:
        monkeypatch.delenv(name)
    published = asyncio.run(published_tools())
    expected = SNAPSHOT.read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(expected.splitlines(True), published.splitlines(True), "snapshot", "now"))
    assert published == expected, f"tools/list changed:\n{diff}"


if __name__ == "__main__":
    SNAPSHOT.write_text(asyncio.run(published_tools()), encoding="utf-8")
