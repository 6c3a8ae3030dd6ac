"""A stdio session's project, as the tools see it: from the client's roots, else the working
directory; the `project` argument overrides it. Driven in-process by the SDK's client, in both
protocol eras (roots are a mid-call request on 2025-11-25 and an input-required round on 2026-07-28)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.types import ListRootsResult, Root

from lightmem_mcp.config import Settings
from lightmem_mcp.memory import Memory
from lightmem_mcp.projects import project_of
from lightmem_mcp.server import MemoryProvider, SessionProjects, build_server
from tests.test_server import call, error_of

pytestmark = pytest.mark.anyio


def repository(path: Path) -> Path:
    (path / ".git").mkdir(parents=True)
    (path / ".git" / "config").write_text('[remote "origin"]\n\turl = git@example.org:team/' + path.name + ".git\n")
    return path


class Roots:
    """A client's roots callback that counts how often the server asks."""

    def __init__(self, *folders: Path) -> None:
        self.folders = folders
        self.asked = 0

    async def __call__(self, _: ClientRequestContext) -> ListRootsResult:
        self.asked += 1
        return ListRootsResult(roots=[Root(uri=folder.as_uri()) for folder in self.folders])  # type: ignore[arg-type]


def client(memory: Memory, settings: Settings, cwd: Path, roots: Roots | None = None, mode: str = "auto") -> Client:
    provider = MemoryProvider(settings, lambda _: memory)
    server = build_server(settings, provider, close_on_exit=False, projects=SessionProjects(cwd))
    return Client(server, list_roots_callback=roots, mode=mode)  # type: ignore[arg-type]


def note(text: str, **arguments: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "user_id": "dev", **arguments}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_session_project_comes_from_the_roots_and_is_asked_once(
    memory: Memory, settings: Settings, tmp_path: Path, mode: str
) -> None:
    shop = repository(tmp_path / "shop")
    roots = Roots(tmp_path / "not-there", shop)  # the first root that is a project folder counts
    async with client(memory, settings, cwd=tmp_path, roots=roots, mode=mode) as session:
        await call(session, "add_memory", note("The deploy script is scripts/ship.sh."))
        found = await call(session, "search_memory", {"query": "deploy script", "user_id": "dev"})
        listed = await call(session, "list_memories", {"user_id": "dev"})

    shop_project = project_of(shop)
    assert shop_project is not None
    assert [(hit["project"], hit["tier"]) for hit in found["hits"]] == [(shop_project.id, "project")]
    assert listed["records"][0]["project"] == shop_project.id
    assert roots.asked == 1  # reused for the session's later calls


async def test_without_roots_the_working_directory_gives_the_project(
    memory: Memory, settings: Settings, tmp_path: Path
) -> None:
    blog = repository(tmp_path / "blog")
    (blog / "src").mkdir()
    async with client(memory, settings, cwd=blog / "src") as session:
        added = await call(session, "add_memory", note("Posts are written in Markdown."))
        record = (await call(session, "get_memory", {"ids": added["ids"], "user_id": "dev"}))["records"][0]

    blog_project = project_of(blog)
    assert blog_project is not None and record["project"] == blog_project.id


async def test_the_project_argument_overrides_the_session(memory: Memory, settings: Settings, tmp_path: Path) -> None:
    shop, blog = repository(tmp_path / "shop"), repository(tmp_path / "blog")
    async with client(memory, settings, cwd=shop) as session:
        await call(session, "add_memory", note("The shop uses Postgres 16."))
        into_blog = await call(session, "add_memory", note("The blog uses SQLite.", project=str(blog)))
        await call(session, "add_memory", note("I prefer dark mode.", project="global"))
        in_shop = await call(session, "search_memory", {"query": "database", "user_id": "dev"})
        in_blog = await call(session, "search_memory", {"query": "database", "user_id": "dev", "project": str(blog)})
        only_global = await call(session, "search_memory", {"query": "database", "user_id": "dev", "project": "global"})
        everything = await call(session, "search_memory", {"query": "database", "user_id": "dev", "project": "all"})
        refused = await error_of(session, "add_memory", note("Where does this go?", project="all"))
        not_a_project = await error_of(session, "search_memory", {"query": "x", "user_id": "dev", "project": "/"})

    def texts(result: dict[str, Any]) -> set[str]:
        return {hit["text"] for hit in result["hits"]}

    assert texts(in_shop) == {"The shop uses Postgres 16.", "I prefer dark mode."}
    assert texts(in_blog) == {"The blog uses SQLite.", "I prefer dark mode."}
    assert texts(only_global) == {"I prefer dark mode."}
    assert texts(everything) == texts(in_shop) | texts(in_blog)
    assert into_blog["ids"]
    assert 'project: "all" is for reading' in refused and '"global"' in refused
    assert "project: '/' is not a project folder" in not_a_project


async def test_a_session_outside_any_project_reads_every_tier(
    memory: Memory, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = repository(tmp_path / "shop")
    monkeypatch.setenv("HOME", str(tmp_path))
    async with client(memory, settings, cwd=shop) as in_shop:
        await call(in_shop, "add_memory", note("The shop uses Postgres 16."))
    async with client(memory, settings, cwd=tmp_path) as at_home:  # the home directory is no project
        found = await call(at_home, "search_memory", {"query": "database", "user_id": "dev"})
        added = await call(at_home, "add_memory", note("I prefer dark mode."))
        record = (await call(at_home, "get_memory", {"ids": added["ids"], "user_id": "dev"}))["records"][0]

    assert [hit["text"] for hit in found["hits"]] == ["The shop uses Postgres 16."]
    assert (record["project"], record["tier"]) == (None, "global")
