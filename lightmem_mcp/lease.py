"""Leases: one replica at a time does a piece of work for a key (extraction or consolidation of a scope).

Usage, the same for every implementation:

    with leases.hold("extract:" + scope_key(scope), ttl_s=60) as held:
        if held:
            ...  # this replica does the work
        # else another replica holds the lease and does it: skip

`hold` never waits for the lease and never raises for a coordination problem: when the lease is
taken elsewhere, or the backend cannot be reached, it yields False and the work is skipped (the
turns stay pending and are picked up later). While held, a background thread renews the lease
every third of its TTL, so work longer than the TTL keeps it; a replica that dies stops renewing
and its lease expires after at most `ttl_s`. Work under a lease must still be idempotent: a lease
that lapses (a long GC pause, a partition) can let a second replica start the same work.

`LocalLeases` coordinates the threads of one process. `RedisLeases` coordinates replicas through
one Redis (`LIGHTMEM_REDIS_URL`): `SET key token NX PX ttl` to take a lease, and Lua scripts that
renew or delete it only while it still holds this holder's token. `open_leases` picks one from
the settings.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol

from lightmem_mcp.config import LeaseSettings
from lightmem_mcp.errors import ConfigError
from lightmem_mcp.records import Scope

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

KEY_PREFIX = "lightmem:lease:"

# Deletes / extends the key only while it holds our token: never another holder's lease.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)


class Leases(Protocol):
    """Exclusive, expiring, non-blocking leases on string keys."""

    def hold(self, key: str, ttl_s: float) -> AbstractContextManager[bool]:
        """Try to take the lease on `key`; yields whether this caller holds it, and releases it on exit."""
        ...


def scope_key(scope: Scope) -> str:
    """A short, stable key for a scope that carries no user id in clear."""
    parts = [scope.user_id, scope.agent_id or "", scope.session_id or ""]
    if scope.project:  # the global tier keeps the key it had before projects existed
        parts.append(scope.project)
    raw = "\x1f".join(parts)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class LocalLeases:
    """Leases among the threads of this process (one replica, or no shared Redis)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: set[str] = set()

    @contextmanager
    def hold(self, key: str, ttl_s: float) -> Iterator[bool]:
        """Take `key` unless another thread holds it; a process holds its leases until it exits them."""
        with self._guard:
            held = key not in self._held
            if held:
                self._held.add(key)
        try:
            yield held
        finally:
            if held:
                with self._guard:
                    self._held.discard(key)


class RedisLeases:
    """Leases among replicas, kept in one Redis."""

    def __init__(self, client: Redis) -> None:
        self._redis = client
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    @classmethod
    def from_url(cls, url: str) -> RedisLeases:
        """Connect lazily to the Redis at `url` (redis://, rediss:// or unix://)."""
        try:
            from redis import Redis
        except ImportError as exc:
            raise ConfigError(
                "LIGHTMEM_REDIS_URL is set but the redis client is not installed: pip install 'lightmem-mcp[redis]'"
            ) from exc
        # Short timeouts: a lease is an optimisation over idempotent work, never worth a stall.
        return cls(Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    @contextmanager
    def hold(self, key: str, ttl_s: float) -> Iterator[bool]:
        """Take `key` with SET NX PX; renew it while held; delete it on exit if it is still ours."""
        name = KEY_PREFIX + key
        token = secrets.token_hex(16)
        ttl_ms = max(1, int(ttl_s * 1000))
        try:
            held = bool(self._redis.set(name, token, nx=True, px=ttl_ms))
        except Exception as exc:  # redis.RedisError, OSError: coordination is down, so do not work
            log.warning("cannot take lease %s from Redis (%s); skipping the work for now", key, exc)
            held = False
        if not held:
            yield False
            return
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._keep, args=(name, token, ttl_ms, stop), name="lightmem-lease", daemon=True
        )
        renewer.start()
        try:
            yield True
        finally:
            stop.set()
            renewer.join()
            try:
                self._release(keys=[name], args=[token])
            except Exception as exc:  # it expires by itself
                log.warning("cannot release lease %s (%s); it expires within %.0fs", key, exc, ttl_s)

    def _keep(self, name: str, token: str, ttl_ms: int, stop: threading.Event) -> None:
        while not stop.wait(ttl_ms / 3000):
            try:
                renewed = self._renew(keys=[name], args=[token, ttl_ms])
            except Exception as exc:
                log.warning("cannot renew lease %s (%s); retrying", name, exc)
                continue
            if not renewed:
                log.warning("lease %s expired while its work ran; another replica may repeat it", name)
                return

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()


def open_leases(settings: LeaseSettings) -> LocalLeases | RedisLeases:
    """Redis leases when `LIGHTMEM_REDIS_URL` is set, else in-process ones."""
    if settings.redis_url is None:
        return LocalLeases()
    return RedisLeases.from_url(settings.redis_url.get_secret_value())
