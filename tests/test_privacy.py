"""Private by default: the data directory 0700 and its files 0600 whatever the umask, a `doctor`
warning when they are wider, and a tokens file written 0600 by `token new --write`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightmem_mcp.api import Message
from lightmem_mcp.auth import StaticTokenVerifier, TenantToken
from lightmem_mcp.config import AuthSettings, Settings
from lightmem_mcp.doctor import check_privacy, run_doctor
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.records import RecordFilter, Scope, StoredPoint
from lightmem_mcp.store.edge import EdgeStore
from lightmem_mcp.store.schema import TENANT_FIELD
from tests.conftest import open_memory
from tests.hosted_server import COMMAND


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The common default umask, which leaves new files world-readable; restored after the test."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[str, str]:
    """Octal mode of `root` and everything under it, by path relative to `root`."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): f"{stat.S_IMODE(p.stat().st_mode):04o}" for p in paths}


def wider(root: Path) -> dict[str, str]:
    """Entries that are not 0700 directories or 0600 files."""
    return {name: mode for name, mode in modes(root).items() if mode != ("0700" if (root / name).is_dir() else "0600")}


# The engine's vacuum optimizer rewrites a segment of at least this many vectors (its default
# vacuum_min_vector_number) once a fifth of them are deleted.
VACUUM_MIN_VECTORS = 1000


def rewrite_segments(store: EdgeStore, dimension: int) -> bool:
    """Have the engine write new segment files: another tenant's points written and deleted, enough
    for its vacuum optimizer, then the shard's own optimize. True if it wrote any."""
    vector = [1.0] + [0.0] * (dimension - 1)
    filler = [StoredPoint(str(uuid.uuid4()), vector, None, {TENANT_FIELD: "filler"}) for _ in range(VACUUM_MIN_VECTORS)]
    store.upsert(filler)
    store.delete(RecordFilter("filler"))
    return store._shard.optimize()


def store_something(settings: Settings, embedder: SentenceTransformerEmbedder) -> dict[str, str]:
    """Open the store, write, and return what is wider while it is still open; then close."""
    memory = open_memory(settings, embedder)
    try:
        memory.add(
            [Message(role="user", content=f"Note {i}: the spare key is under the blue pot.") for i in range(3)],
            Scope("maya"),
        )
        assert isinstance(memory.store, EdgeStore)
        assert rewrite_segments(memory.store, embedder.dimension)  # new segments, written by the engine
        return wider(settings.store.data_dir)
    finally:
        memory.close()


def test_a_fresh_start_under_umask_022_keeps_everything_owner_only(
    settings: Settings, embedder: SentenceTransformerEmbedder
) -> None:
    assert not settings.store.data_dir.exists()

    while_open = store_something(settings, embedder)

    everything = modes(settings.store.data_dir)
    assert len(everything) > 10  # the WAL, segments, payload storage: the files that hold message text
    assert while_open == {}
    assert wider(settings.store.data_dir) == {}


def test_an_existing_world_readable_store_is_made_private_when_opened(
    settings: Settings, embedder: SentenceTransformerEmbedder
) -> None:
    store_something(settings, embedder)
    store = settings.store.embedded_path
    for path in [store, *store.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # as an older version left it

    open_memory(settings, embedder).close()

    assert wider(store) == {}


def test_doctor_warns_about_a_readable_data_directory_and_tokens_file(
    settings: Settings, embedder: SentenceTransformerEmbedder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store_something(settings, embedder)
    assert check_privacy(settings).get("ok", True) is True
    data = settings.store.data_dir
    data.chmod(0o755)
    (settings.store.embedded_path / "lightmem-layout.json").chmod(0o644)
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text("")
    tokens.chmod(0o644)
    settings = settings.model_copy(update={"auth": AuthSettings(tokens_file=tokens)})

    report = check_privacy(settings)
    code = run_doctor(settings)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert report["ok"] is False
    assert f"{data} (0755)" in report["warning"]
    assert "lightmem-layout.json (0644)" in report["warning"]
    assert f"chmod -R go-rwx {data}" in report["warning"]
    assert f"tokens file {tokens} (0644)" in report["warning"]
    assert code == 0  # a warning: memories can still be stored and searched
    assert printed[0]["component"] == "privacy"
    assert printed[0]["ok"] is False


def token_new(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMMAND, "token", "new", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)},
        # The child inherits this test's umask 022, as from a login shell.
    )


@pytest.mark.anyio
async def test_token_new_write_creates_a_0600_tokens_file_and_prints_only_the_token(tmp_path: Path) -> None:
    done = token_new("--tenant", "acme", "--scopes", "read,write", "--write", "tokens.jsonl", cwd=tmp_path)
    tokens_file = tmp_path / "tokens.jsonl"

    assert done.returncode == 0, done.stderr
    (token,) = done.stdout.split()
    assert f"{stat.S_IMODE(tokens_file.stat().st_mode):04o}" == "0600"
    assert token not in tokens_file.read_text()
    verified = await StaticTokenVerifier(tokens_file, None).verify_token(token)
    assert isinstance(verified, TenantToken)
    assert (verified.tenant, verified.scopes) == ("acme", ["read", "write"])


def test_token_new_write_tightens_an_existing_file_and_appends_on_a_new_line(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.jsonl"
    tokens_file.write_text('# tokens of acme\n{"sha256": "' + "0" * 64 + '", "tenant": "old", "scopes": ["read"]}')
    tokens_file.chmod(0o644)

    done = token_new("--tenant", "acme", "--write", str(tokens_file), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "now 0600" in done.stderr
    assert f"{stat.S_IMODE(tokens_file.stat().st_mode):04o}" == "0600"
    lines = tokens_file.read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[2])["tenant"] == "acme"


def test_token_new_write_refuses_a_symlink_or_a_fifo_and_writes_nothing(tmp_path: Path) -> None:
    real = tmp_path / "real.jsonl"
    real.write_text("")
    (tmp_path / "link.jsonl").symlink_to(real)
    os.mkfifo(tmp_path / "fifo.jsonl")  # opened for writing without a reader, it would block forever

    link = token_new("--tenant", "acme", "--write", "link.jsonl", cwd=tmp_path)
    fifo = token_new("--tenant", "acme", "--write", "fifo.jsonl", cwd=tmp_path)

    assert link.returncode == 1 and "symbolic link" in link.stderr and link.stdout == ""
    assert fifo.returncode == 1 and "nothing written" in fifo.stderr and fifo.stdout == ""
    assert real.read_text() == ""
