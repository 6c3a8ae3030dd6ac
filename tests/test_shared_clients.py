"""Several IDE windows on one memory: real `lightmem-mcp` processes driven by the MCP SDK's stdio
client, all on one data directory, the way an IDE starts one server per window."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.stdio import StdioServerParameters
from mcp.types import ListRootsResult, Root

from lightmem_mcp.config import Settings, StoreSettings
from lightmem_mcp.shared import describe_owner

pytestmark = pytest.mark.anyio

COMMAND = str(Path(sys.executable).with_name("lightmem-mcp"))
# Generous for a loaded 2-core machine: every process imports torch and loads MiniLM.
START_S = 180


class Window:
    """One IDE window: a stdio server process and the SDK client that started it."""

    def __init__(self, client: Client, pid_file: Path) -> None:
        self.client = client
        self._pid_file = pid_file

    @property
    def pid(self) -> int:
        return int(self._pid_file.read_text())

    async def try_add(self, writer: str, n: int, errors: list[str]) -> str | None:
        """Add one message; its message id once acknowledged, else None with the error kept."""
        result = await self.client.call_tool("add_memory", {"messages": [message(writer, n)], "user_id": "team"})
        if result.is_error:
            errors.append(str(result.content))
            return None
        assert result.structured_content is not None
        return str(result.structured_content["source_ids"][0])

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self.client.call_tool(tool, arguments)
        assert not result.is_error, result.content
        assert result.structured_content is not None
        return result.structured_content


@asynccontextmanager
async def window(
    data_dir: Path, name: str, cwd: Path | None = None, roots: list[Path] | None = None
) -> AsyncIterator[Window]:
    """A server process on `data_dir`; its pid is the shell's, which `exec`s the server."""
    pid_file = data_dir.parent / f"{name}.pid"
    env = {
        "LIGHTMEM_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "LIGHTMEM_LOG_LEVEL": "WARNING",
        "LIGHTMEM_SHARED_HANDOVER_TIMEOUT_S": "120",
        "PATH": os.environ.get("PATH", ""),
    }

    async def list_roots(_: ClientRequestContext) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=folder.as_uri()) for folder in roots or []])  # type: ignore[arg-type]

    params = StdioServerParameters(
        command="/bin/sh", args=["-c", f'echo $$ > "{pid_file}"; exec "{COMMAND}"'], env=env, cwd=cwd or data_dir.parent
    )
    client = Client(params, read_timeout_seconds=START_S, list_roots_callback=list_roots if roots else None)
    async with client:
        yield Window(client, pid_file)


async def killed(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    with anyio.fail_after(30):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            await anyio.sleep(0.05)


def message(writer: str, n: int) -> dict[str, str]:
    return {"role": "user", "content": f"Note {n} from {writer}: the {writer} build uses cache key k{n}{writer}."}


async def all_records(w: Window, user: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await w.call(
            "list_memories", {"user_id": user, "limit": 100, "project": "all", **({"cursor": cursor} if cursor else {})}
        )
        records += page["records"]
        cursor = page["next_cursor"]
        if cursor is None:
            return records


async def test_four_windows_write_and_search_one_memory_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acknowledged: dict[str, str] = {}  # message id -> writer
    errors: list[str] = []
    async with AsyncExitStack() as stack:
        # All four start at once (each loads in the background from `initialize` on): one wins the store.
        windows = [await stack.enter_async_context(window(data, f"w{i}")) for i in range(4)]

        async def work(index: int, w: Window) -> None:
            writer = f"w{index}"
            n = 0
            stop = anyio.current_time() + 20
            while anyio.current_time() < stop:  # never cancel a call: each one is acknowledged or failed
                n += 1
                added = await w.try_add(writer, n, errors)
                if added is None:
                    continue
                acknowledged[added] = writer
                found = await w.client.call_tool("search_memory", {"query": f"cache key k{n}", "user_id": "team"})
                if found.is_error:
                    errors.append(str(found.content))

        async with anyio.create_task_group() as tasks:
            for index, w in enumerate(windows):
                tasks.start_soon(work, index, w)

        seen = [{r["source_ids"][0] for r in await all_records(w, "team")} for w in windows]
        owner = describe_owner(Settings(store=StoreSettings(data_dir=data)))

    assert errors == []
    assert len({writer for writer in acknowledged.values()}) == 4
    for ids in seen:
        assert ids == set(acknowledged)
    assert owner["owner_pid"] in {w.pid for w in windows}
    assert owner["front_doors"] == 3


async def test_killing_the_owner_hands_the_store_to_another_window_and_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acknowledged: list[str] = []
    errors: list[str] = []
    writes_after_kill = {f"w{i}": 0 for i in range(1, 4)}
    owner_killed = anyio.Event()
    async with AsyncExitStack() as stack:
        owner = await stack.enter_async_context(window(data, "w0"))
        await owner.call("stats", {})
        others = [await stack.enter_async_context(window(data, f"w{i}")) for i in range(1, 4)]
        for w in others:
            await w.call("stats", {})

        async def write(index: int, w: Window) -> None:
            writer = f"w{index}"
            n = 0
            while writes_after_kill[writer] < 5:
                n += 1
                added = await w.try_add(writer, n, errors)
                if added is None:
                    continue
                acknowledged.append(added)
                if owner_killed.is_set():
                    writes_after_kill[writer] += 1

        with anyio.fail_after(START_S):
            async with anyio.create_task_group() as tasks:
                for index, w in enumerate(others, start=1):
                    tasks.start_soon(write, index, w)
                await anyio.sleep(3)
                await killed(owner.pid)
                owner_killed.set()

        records = await all_records(others[0], "team")
        new_owner = describe_owner(Settings(store=StoreSettings(data_dir=data)))

    ids = [r["source_ids"][0] for r in records]
    assert errors == []
    assert sorted(ids) == sorted(set(acknowledged))  # every acknowledged message, each once
    assert new_owner["owner_pid"] in {w.pid for w in others}
    assert new_owner["front_doors"] == 2


async def test_killing_a_front_door_leaves_the_owner_and_the_others_unaffected(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with AsyncExitStack() as stack:
        owner = await stack.enter_async_context(window(data, "w0"))
        await owner.call("add_memory", {"messages": [message("w0", 1)], "user_id": "team"})
        doomed = await stack.enter_async_context(window(data, "w1"))
        survivor = await stack.enter_async_context(window(data, "w2"))
        await doomed.call("add_memory", {"messages": [message("w1", 1)], "user_id": "team"})
        await survivor.call("stats", {})
        owner_pid = describe_owner(Settings(store=StoreSettings(data_dir=data)))["owner_pid"]

        await killed(doomed.pid)
        after_owner = await owner.call("add_memory", {"messages": [message("w0", 2)], "user_id": "team"})
        after_survivor = await survivor.call("add_memory", {"messages": [message("w2", 1)], "user_id": "team"})
        seen = {r["source_ids"][0] for r in await all_records(survivor, "team")}
        report = describe_owner(Settings(store=StoreSettings(data_dir=data)))
        doctor = await anyio.run_process(
            [COMMAND, "doctor"],
            env={**os.environ, "LIGHTMEM_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"},
            check=False,
        )

    lines = {line["component"]: line for line in map(json.loads, doctor.stdout.decode().splitlines())}
    assert doctor.returncode == 0, doctor.stderr.decode()
    assert lines["owner"]["owner_pid"] == owner.pid and lines["owner"]["front_doors"] == 1
    assert lines["store"]["served_by_pid"] == owner.pid
    assert owner_pid == owner.pid
    assert report["owner_pid"] == owner.pid
    assert report["front_doors"] == 1
    assert after_owner["source_ids"][0] in seen and after_survivor["source_ids"][0] in seen
    assert len(seen) == 4


def repository(path: Path) -> Path:
    """A git repository without a remote, as `git init` leaves it."""
    (path / ".git").mkdir(parents=True)
    (path / ".git" / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
    return path


async def test_windows_on_two_repositories_see_their_project_and_the_global_tier(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Two repositories with the same folder name are two projects.
    shop = repository(tmp_path / "work" / "app")
    blog = repository(tmp_path / "side" / "app")
    (shop / "src").mkdir()
    (tmp_path / "link").symlink_to(shop)
    query = {"query": "where does the deploy script live and how are tests run", "user_id": "dev", "limit": 10}
    async with AsyncExitStack() as stack:
        in_shop = await stack.enter_async_context(window(data, "shop", roots=[shop]))
        await in_shop.call("stats", {})
        in_blog = await stack.enter_async_context(window(data, "blog", roots=[blog]))
        # The same repository opened again (through a link, with no roots: from its working directory).
        shop_again = await stack.enter_async_context(window(data, "again", cwd=tmp_path / "link" / "src"))

        shop_note = await in_shop.call(
            "add_memory",
            {
                "messages": [{"role": "user", "content": "The deploy script of this repo is scripts/ship.sh."}],
                "user_id": "dev",
            },
        )
        blog_note = await in_blog.call(
            "add_memory",
            {"messages": [{"role": "user", "content": "Tests in this repo run with tox -e py311."}], "user_id": "dev"},
        )
        preference = await in_blog.call(
            "add_memory",
            {
                "messages": [{"role": "user", "content": "I like short answers with the command to run first."}],
                "user_id": "dev",
                "project": "global",
            },
        )
        from_shop = await in_shop.call("search_memory", query)
        from_blog = await in_blog.call("search_memory", query)
        from_again = await shop_again.call("search_memory", query)
        everything = await in_shop.call("search_memory", {**query, "project": "all"})

    def found(result: dict[str, Any]) -> dict[str, str]:
        return {hit["source_ids"][0]: hit["tier"] for hit in result["hits"]}

    shop_id, blog_id, global_id = (r["source_ids"][0] for r in (shop_note, blog_note, preference))

    assert found(from_shop) == {shop_id: "project", global_id: "global"}
    assert found(from_blog) == {blog_id: "project", global_id: "global"}
    assert found(from_again) == found(from_shop)
    assert set(found(everything)) == {shop_id, blog_id, global_id}
    projects = {hit["source_ids"][0]: hit["project"] for hit in everything["hits"]}
    assert projects[shop_id] != projects[blog_id]
    assert projects[shop_id].startswith("app-") and projects[global_id] is None


async def test_when_the_owners_window_closes_another_window_carries_on_with_the_same_memory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    owns, leave, left = anyio.Event(), anyio.Event(), anyio.Event()
    pids: dict[str, int] = {}

    async def first_window() -> None:
        async with window(data, "w0") as leaving:
            await leaving.call("stats", {})
            pids["leaving"] = leaving.pid
            owns.set()
            await leave.wait()
        left.set()  # its client quit: the server closed the store and handed it over

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(first_window)
        await owns.wait()
        async with window(data, "w1") as staying:
            first = await staying.call("add_memory", {"messages": [message("w1", 1)], "user_id": "team"})
            owner_before = describe_owner(Settings(store=StoreSettings(data_dir=data)))["owner_pid"]
            leave.set()
            await left.wait()
            second = await staying.call("add_memory", {"messages": [message("w1", 2)], "user_id": "team"})
            seen = {r["source_ids"][0] for r in await all_records(staying, "team")}
            owner_after = describe_owner(Settings(store=StoreSettings(data_dir=data)))["owner_pid"]

    assert owner_before == pids["leaving"]
    assert owner_after == staying.pid
    assert seen == {first["source_ids"][0], second["source_ids"][0]}
