"""One store, several servers, in one process: the owner and its front doors over the real channel.

The multi-process behaviour (real stdio clients, kill -9) is in test_shared_clients.py; here each
server is a `SharedMemory` of its own, so the protocol, the errors and the handover run fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import lightmem_mcp
from lightmem_mcp.api import Message
from lightmem_mcp.config import Settings, SharedSettings, StoreSettings
from lightmem_mcp.embedder import Embedder, SentenceTransformerEmbedder
from lightmem_mcp.errors import BackendUnavailable, InvalidInput
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import LLMCall, Scope, Usage
from lightmem_mcp.shared import OwnerFiles, SharedMemory, describe_owner, holding_store

ALICE = Scope("alice")
TEA = [
    Message(role="user", content="I drink green tea every morning before my run.", id="tea-1"),
    Message(role="assistant", content="Nice routine. Sencha or matcha?", id="tea-2"),
]


def shared_settings(data_dir: Path, channel: str = "auto") -> Settings:
    return Settings(
        store=StoreSettings(data_dir=data_dir),
        shared=SharedSettings(channel=channel, handover_timeout_s=20, warm_standby=False),  # type: ignore[arg-type]
    )


@pytest.fixture
def servers(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[list[SharedMemory]]:
    """Servers started on one data directory by `start()`; all closed at the end."""
    started: list[SharedMemory] = []
    yield started
    for server in reversed(started):
        server.close()


def start(settings: Settings, embedder: Embedder, started: list[SharedMemory]) -> SharedMemory:
    def open_memory(s: Settings, warm: Embedder | None) -> Memory:
        return Memory.open(s, embedder=embedder)

    server = SharedMemory.open(settings, open_memory)
    started.append(server)
    return server


def test_a_second_server_forwards_to_the_first_and_both_see_one_memory(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    owner = start(settings, embedder, servers)
    door = start(settings, embedder, servers)

    added = door.add(TEA, ALICE)
    from_owner = owner.search("what does alice drink in the morning", ALICE)
    from_door = door.search("what does alice drink in the morning", ALICE)

    assert (owner.role, door.role) == ("owner", "front door")
    assert added.source_ids == ["tea-1", "tea-2"]
    assert from_door == from_owner
    assert from_door.hits[0].source_ids == ["tea-1"]
    assert door.get(added.ids, ALICE) == owner.get(added.ids, ALICE)
    report = describe_owner(settings)
    assert report["owner_pid"] == os.getpid()
    assert report["front_doors"] == 1


def test_messages_without_ids_get_them_before_forwarding_so_a_resend_replaces(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    start(settings, embedder, servers)
    door = start(settings, embedder, servers)

    added = door.add([Message(role="user", content="My bike is a blue Brompton.")], ALICE)

    assert len(added.source_ids[0]) == 32  # fixed by the front door, then kept by the owner
    again = door.add([Message(role="user", content="My bike is a blue Brompton.", id=added.source_ids[0])], ALICE)
    assert again.ids == added.ids
    assert len(door.list(ALICE).records) == 1


def test_metadata_and_expiry_cross_the_channel_to_the_owner_and_back(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    owner = start(settings, embedder, servers)
    door = start(settings, embedder, servers)
    tags = {"habit": "morning", "cups": 2, "green": True, "strength": 0.5}

    door.add(TEA, ALICE, metadata=tags, ttl=3600)
    door.add([Message(role="user", content="I cycle to work.", id="bike-1")], ALICE, metadata={"habit": "commute"})

    (first, second) = sorted(owner.list(ALICE, metadata={"habit": "morning"}).records, key=lambda r: r.source_ids)
    assert first.metadata == second.metadata == tags
    assert first.expires_at is not None
    assert sorted(r.source_ids[0] for r in door.list(ALICE, metadata={"cups": 2, "green": True}).records) == [
        "tea-1",
        "tea-2",
    ]
    assert [r.source_ids for r in door.list(ALICE, metadata={"habit": "commute"}).records] == [["bike-1"]]
    with pytest.raises(InvalidInput) as refused:
        door.add(TEA, ALICE, metadata={"cups": float("nan")})
    assert refused.value.field == "metadata.cups"


def test_errors_and_progress_cross_the_channel_as_the_owner_raised_them(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    owner = start(settings, embedder, servers)
    door = start(settings, embedder, servers)
    door.add(TEA, ALICE)

    with pytest.raises(InvalidInput) as direct:
        owner.get(["not-an-id"], ALICE)
    with pytest.raises(InvalidInput) as forwarded:
        door.get(["not-an-id"], ALICE)
    steps: list[tuple[float, float, str]] = []
    summary = door.summarize(ALICE, progress=lambda done, total, note: steps.append((done, total, note)))

    assert str(forwarded.value) == str(direct.value)
    assert forwarded.value.field == "ids[0]"
    assert summary.summaries and steps
    assert steps[-1][0] == steps[-1][1]


def test_when_the_owner_leaves_a_front_door_takes_the_store_over(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    owner = start(settings, embedder, servers)
    door = start(settings, embedder, servers)
    added = door.add(TEA, ALICE)

    owner.close()
    servers.remove(owner)
    after = door.get(added.ids, ALICE)

    assert door.role == "owner"
    assert door.handovers == 1
    assert [r.source_ids for r in after.records] == [["tea-1"], ["tea-2"]]
    newcomer = start(settings, embedder, servers)  # and it serves the next server
    assert newcomer.role == "front door"
    assert newcomer.search("green tea", ALICE).hits[0].source_ids == ["tea-1"]


def test_a_server_of_another_version_is_refused_and_told_why(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = shared_settings(tmp_path / "data")
    start(settings, embedder, servers)
    running = lightmem_mcp.__version__
    monkeypatch.setattr(lightmem_mcp, "__version__", "99.0.0")

    with pytest.raises(BackendUnavailable) as refused:
        start(settings, embedder, servers)

    message = str(refused.value)
    assert f"served by lightmem-mcp {running}" in message
    assert "this server is lightmem-mcp 99.0.0" in message
    assert "quit the MCP clients that run the other version" in message


def test_the_loopback_channel_needs_the_secret_from_the_private_file(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    from lightmem_mcp.shared import _Connection

    settings = shared_settings(tmp_path / "data", channel="tcp")
    owner = start(settings, embedder, servers)
    door = start(settings, embedder, servers)
    door.add(TEA, ALICE)
    files = OwnerFiles.of(settings.store.embedded_path)
    info = files.read_info()

    assert info is not None and info.channel == "tcp" and info.secret
    assert files.info.stat().st_mode & 0o777 == 0o600
    assert owner.search("green tea", ALICE) == door.search("green tea", ALICE)
    with pytest.raises(BackendUnavailable, match="wrong secret"):
        _Connection.open(info.model_copy(update={"secret": "0" * 64}))


def test_a_command_that_opens_the_store_is_refused_while_a_server_owns_it(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    start(settings, embedder, servers)

    with pytest.raises(BackendUnavailable) as refused, holding_store(settings, "export"):
        pass

    assert f"pid {os.getpid()}" in str(refused.value)
    assert "quit the MCP clients" in str(refused.value)


NOBODY_CONNECTS = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": exc.__class__.__name__}))
    sys.exit(0)
s.sendall(json.dumps({"hello": {"protocol": 1, "version": sys.argv[2], "role": "front door"}}).encode() + b"\\n")
print(s.makefile("rb").readline().decode().strip())
"""


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to run a process as nobody")
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="runs the system Python as nobody")
def test_another_os_user_cannot_reach_the_owner(
    request: pytest.FixtureRequest, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    # Outside pytest's private temp folder, so that opening the store's folders below lets nobody in.
    data_dir = Path(tempfile.mkdtemp(prefix="lightmem-nobody-")) / "data"
    request.addfinalizer(lambda: shutil.rmtree(data_dir.parent, ignore_errors=True))
    settings = shared_settings(data_dir)
    start(settings, embedder, servers)
    files = OwnerFiles.of(settings.store.embedded_path)

    def as_nobody() -> dict[str, object]:
        done = subprocess.run(
            ["/usr/bin/python3", "-c", NOBODY_CONNECTS, str(files.socket), lightmem_mcp.__version__],
            capture_output=True,
            text=True,
            timeout=30,
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            check=True,
        )
        return dict(json.loads(done.stdout))

    # The folder (0700) and the socket (0600) keep other users out ...
    assert as_nobody() == {"connect": "PermissionError"}
    # ... and were they opened up by mistake, the owner still checks who connects.
    for path in (data_dir.parent, data_dir, files.folder):
        path.chmod(0o755)
    files.socket.chmod(0o666)
    refused = as_nobody()
    servers.pop().close()  # before the folder goes
    assert "another OS user" in str(refused.get("refused"))


@pytest.mark.skipif(sys.platform == "win32", reason="Unix socket modes")
def test_the_owner_files_are_private(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    start(settings, embedder, servers)
    files = OwnerFiles.of(settings.store.embedded_path)

    assert files.folder.stat().st_mode & 0o777 == 0o700
    for path in (files.lock, files.info, files.socket):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_an_idle_front_door_takes_over_at_once_so_background_work_resumes(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    owner = start(settings, embedder, servers)
    door = start(settings, embedder, servers)

    owner.close()
    servers.remove(owner)
    deadline = time.monotonic() + 30
    while door.role != "owner" and time.monotonic() < deadline:  # no call made: the hang-up alone
        time.sleep(0.05)

    assert door.role == "owner"
    assert describe_owner(settings)["owner_pid"] == os.getpid()


def test_one_front_door_at_a_time_keeps_the_model_loaded_for_the_takeover(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    settings = settings.model_copy(update={"shared": settings.shared.model_copy(update={"warm_standby": True})})
    start(settings, embedder, servers)
    first = start(settings, embedder, servers)
    second = start(settings, embedder, servers)

    assert first.standby and not second.standby  # the model (~400 MB) once, not per window
    first.close()
    servers.remove(first)
    deadline = time.monotonic() + 10
    while not second.standby and time.monotonic() < deadline:
        time.sleep(0.05)
    assert second.standby  # the next front door is the successor now


def test_what_resources_prompts_and_completions_read_crosses_the_channel(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    owner = start(settings, embedder, servers)
    door = start(settings, embedder, servers)
    door.add(TEA, Scope("alice", session_id="kitchen"))
    written = door.summarize(ALICE, window="day")

    assert [s.id for s in door.summaries(ALICE, "day")] == [s.id for s in written.summaries]
    assert door.summaries(ALICE, "week") == []
    assert door.forget_preview(ALICE) == owner.forget_preview(ALICE) == {"turn": 2, "summary": 1}
    assert door.suggest(ALICE, "session_id", "kit") == ["kitchen"]


def test_what_a_memory_browser_reads_crosses_the_channel(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, servers: list[SharedMemory]
) -> None:
    settings = shared_settings(tmp_path / "data")
    opened: list[Memory] = []

    def open_memory(s: Settings, warm: Embedder | None) -> Memory:
        opened.append(Memory.open(s, embedder=embedder))
        return opened[-1]

    servers.append(SharedMemory.open(settings, open_memory))
    door = start(settings, embedder, servers)
    (memory,) = opened  # the owner's
    door.add([Message(role="user", content="I drink green tea every morning.", id="tea-1", name="Ann")], ALICE)
    door.add([Message(role="user", content="Coffee after lunch, though.", id="cof-1", name="Bo")], ALICE)
    call = LLMCall(
        call_id="c1",
        purpose="summary",
        provider="openai-compatible",
        model="fake-model",
        usage=Usage(prompt_tokens=100, completion_tokens=10),
        attempts=1,
        seconds=0.1,
        started_at=datetime(2026, 11, 30, tzinfo=UTC),
        ok=True,
        scope=ALICE,
    )
    memory.ledger.llm_called(call)

    assert [r.source_ids for r in door.list(ALICE, speakers=["Ann"]).records] == [["tea-1"]]
    assert door.list(ALICE, speakers=["Bo"]) == memory.list(ALICE, speakers=["Bo"])
    assert door.activity(ALICE, "day", 3) == memory.activity(ALICE, "day", 3)
    assert door.activity(ALICE).total == 2
    assert door.llm_calls(ALICE, ["c1", "c2"]) == memory.llm_calls(ALICE, ["c1", "c2"])
    assert [c.id for c in door.llm_calls(ALICE, ["c1"])] == ["c1"]
    first, owned = door.export_page(ALICE, limit=2), memory.export_page(ALICE, limit=2)
    assert (first.lines, first.next) == (owned.lines, owned.next)  # the headers differ by exported_at alone
    assert first.header is not None and first.next is not None
    assert door.export_page(ALICE, first.next, 2) == memory.export_page(ALICE, first.next, 2)
