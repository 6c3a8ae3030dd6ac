"""Who calls the HTTP transports: bearer tokens that each name a tenant and grant scopes.

Two verifiers plug into the MCP SDK's `TokenVerifier` (so clients get its 401 challenges and the
protected-resource metadata): static tokens stored as SHA-256 hashes (`LIGHTMEM_AUTH_TOKENS_FILE`
or `LIGHTMEM_AUTH_TOKENS`), and JWTs checked against an identity provider's JWKS.

A tokens file has one JSON object per line (blank lines and `#` comments are skipped):

    {"sha256": "<hex of the token>", "tenant": "acme", "scopes": ["read", "write"], "name": "ci-bot"}

`lightmem-mcp token new --tenant acme --scopes read,write` prints a fresh token and its line.
The file is read again when it changes, so tokens can be added or revoked without a restart.

Scopes: `read` for the read-only tools, `write` for those that store or delete, `admin` for
work across tenants; `admin` grants the other two, `write` does not grant `read`.

The tenant is the user: a tool call made with a token acts for the token's tenant, and a
`user_id` argument naming anyone else is refused. Without a token (stdio, or
`LIGHTMEM_AUTH_MODE=none`) the `user_id` argument is taken as given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import jwt
from mcp.server.auth.middleware.auth_context import auth_context_var, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext

from lightmem_mcp.config import AuthSettings
from lightmem_mcp.errors import ConfigError, LightMemError

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")
DEFAULT_USER = "default"
TOKEN_PREFIX = "lmk_"
# Asymmetric algorithms only: a JWKS publishes public keys, never a shared secret.
_JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
_MAX_TENANT = 256


class Forbidden(LightMemError):
    """The caller's token does not allow this call."""


class TenantToken(AccessToken):
    """A verified token and the tenant it acts for."""

    tenant: str


@dataclass(frozen=True)
class TokenEntry:
    """One static token, as the tokens file lists it (the token itself is never stored)."""

    sha256: str
    tenant: str
    scopes: tuple[str, ...]
    name: str | None = None


def hash_token(token: str) -> str:
    """The SHA-256 hex digest a tokens file stores for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits); the prefix lets secret scanners recognise it."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_line(token: str, tenant: str, scopes: Sequence[str], name: str | None = None) -> str:
    """The tokens-file line for `token`: its hash, tenant and scopes."""
    entry: dict[str, object] = {"sha256": hash_token(token), "tenant": tenant, "scopes": list(scopes)}
    if name:
        entry["name"] = name
    line = json.dumps(entry)
    parse_token_lines(line, "the new token")  # the same checks the server makes
    return line


def parse_token_lines(text: str, source: str) -> dict[str, TokenEntry]:
    """Token entries by hash from JSON lines (or one JSON array); raises `ConfigError` naming the line."""
    stripped = text.strip()
    items: list[tuple[str, object]] = []
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not a JSON array ({exc.msg})") from None
        items = [(f"{source}, entry {number}", item) for number, item in enumerate(parsed, 1)]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                items.append((f"{source}, line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{source}, line {number}: not JSON ({exc.msg})") from None
    entries: dict[str, TokenEntry] = {}
    for where, item in items:
        entry = _entry(item, where)
        entries[entry.sha256] = entry
    return entries


def _entry(item: object, where: str) -> TokenEntry:
    example = '{"sha256": "<64 hex digits>", "tenant": "acme", "scopes": ["read", "write"]}'
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected an object like {example}")
    digest, tenant, scopes, name = item.get("sha256"), item.get("tenant"), item.get("scopes"), item.get("name")
    unknown = sorted(set(item) - {"sha256", "tenant", "scopes", "name"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {example}")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(
            f"{where}: sha256 must be the 64 lowercase hex digits of the token's SHA-256 "
            "(lightmem-mcp token new prints it)"
        )
    if not isinstance(tenant, str) or not _valid_tenant(tenant):
        raise ConfigError(f"{where}: tenant must be a non-blank string of at most {_MAX_TENANT} printable characters")
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        raise ConfigError(f"{where}: scopes must be a non-empty list of {', '.join(SCOPES)}")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string")
    return TokenEntry(digest, tenant, tuple(scopes), name)


def _valid_tenant(tenant: str) -> bool:
    return bool(tenant.strip()) and len(tenant) <= _MAX_TENANT and all(ord(c) >= 32 for c in tenant)


class StaticTokenVerifier(TokenVerifier):
    """Tokens looked up by their SHA-256 in a file (re-read when it changes) and / or an env var."""

    def __init__(self, file: Path | None, inline: str | None) -> None:
        self._file = file
        self._inline = parse_token_lines(inline, "LIGHTMEM_AUTH_TOKENS") if inline else {}
        self._lock = threading.Lock()
        self._file_stamp: tuple[float, int] | None = None
        self._from_file: dict[str, TokenEntry] = {}
        if file is not None:
            self._reload(strict=True)
        if not self._inline and not self._from_file:
            raise ConfigError(
                "LIGHTMEM_AUTH_MODE=tokens but no token is configured: create one with "
                "`lightmem-mcp token new --tenant NAME --scopes read,write` and add its line to "
                "LIGHTMEM_AUTH_TOKENS_FILE (or LIGHTMEM_AUTH_TOKENS)"
            )

    async def verify_token(self, token: str) -> AccessToken | None:
        """The tenant token for a known token, else None (a 401)."""
        if self._file is not None:
            self._reload(strict=False)
        digest = hash_token(token)
        entry = self._inline.get(digest) or self._from_file.get(digest)
        if entry is None:
            return None
        # The client id names the token (by a hash prefix), so an SSE session stays bound to it.
        return TenantToken(
            token=token, client_id=f"token:{digest[:16]}", scopes=list(entry.scopes), tenant=entry.tenant
        )

    def _reload(self, strict: bool) -> None:
        assert self._file is not None
        try:
            stat = os.stat(self._file)
        except OSError as exc:
            if strict:
                raise ConfigError(f"LIGHTMEM_AUTH_TOKENS_FILE={self._file}: cannot read it ({exc.strerror})") from None
            return  # a file being replaced: keep the tokens we have
        stamp = (stat.st_mtime, stat.st_size)
        with self._lock:
            if stamp == self._file_stamp:
                return
            try:
                self._from_file = parse_token_lines(
                    self._file.read_text(encoding="utf-8"), f"LIGHTMEM_AUTH_TOKENS_FILE={self._file}"
                )
            except (ConfigError, OSError) as exc:
                if strict:
                    raise ConfigError(str(exc)) from None
                log.error("tokens file not reloaded, the previous tokens stay in force: %s", exc)
            self._file_stamp = stamp
            log.info("tokens file loaded: %d token(s)", len(self._from_file))


class JWTVerifier(TokenVerifier):
    """JWTs signed by an identity provider: signature (JWKS), issuer, audience and expiry checked."""

    def __init__(self, settings: AuthSettings) -> None:
        assert settings.jwks_url and settings.issuer and settings.audience  # the settings validator saw to it
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._tenant_claim = settings.tenant_claim
        self._prefix = settings.scope_prefix
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=settings.jwks_cache_s, timeout=10)

    async def verify_token(self, token: str) -> AccessToken | None:
        """The tenant token for a valid JWT, else None (a 401); the JWKS is fetched off the event loop."""
        return await anyio.to_thread.run_sync(self._verify, token)

    def _verify(self, token: str) -> TenantToken | None:
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=_JWT_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                leeway=30,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("cannot fetch the JWKS to check a token: %s", exc)
            return None
        except jwt.PyJWTError as exc:
            log.info("token refused: %s", exc)
            return None
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not _valid_tenant(tenant):
            log.info("token refused: claim %r (LIGHTMEM_AUTH_TENANT_CLAIM) is missing or blank", self._tenant_claim)
            return None
        subject = claims.get("sub")
        client = claims.get("client_id") or claims.get("azp") or subject or tenant
        return TenantToken(
            token=token,
            client_id=str(client),
            scopes=self._scopes(claims),
            expires_at=int(claims["exp"]),
            subject=str(subject) if subject is not None else None,
            claims={"iss": claims["iss"]},
            tenant=tenant,
        )

    def _scopes(self, claims: dict[str, Any]) -> list[str]:
        granted: list[str] = []
        for name in ("scope", "scp"):
            value = claims.get(name)
            if isinstance(value, str):
                granted.extend(value.split())
            elif isinstance(value, list):
                granted.extend(str(v) for v in value)
        return [s.removeprefix(self._prefix) for s in dict.fromkeys(granted) if s.startswith(self._prefix)]


def build_verifier(settings: AuthSettings) -> TokenVerifier | None:
    """The verifier for the configured mode; None when auth is off. Raises `ConfigError`."""
    if settings.mode == "none":
        return None
    if settings.mode == "jwt":
        return JWTVerifier(settings)
    inline = settings.tokens.get_secret_value() if settings.tokens is not None else None
    return StaticTokenVerifier(settings.tokens_file, inline)


def tenant_of(token: AccessToken) -> str:
    """The tenant a verified token acts for."""
    if isinstance(token, TenantToken):
        return token.tenant
    return token.subject or token.client_id


def acting_user(user_id: str) -> str:
    """The user a tool call acts for: the token's tenant when there is a token, else `user_id`."""
    token = get_access_token()
    if token is None:
        return user_id
    tenant = tenant_of(token)
    if user_id not in (DEFAULT_USER, tenant):
        raise Forbidden(
            f"user_id: {user_id!r} is not the tenant of this token; omit user_id (your token acts for "
            f"{tenant!r}): memories of other tenants cannot be reached"
        )
    return tenant


def check_access(access: str) -> None:
    """Raise `Forbidden` unless the caller's token grants `access` (no token: stdio or auth off)."""
    token = get_access_token()
    if token is None:
        return
    if access not in token.scopes and "admin" not in token.scopes:
        raise Forbidden(f"forbidden: this token lacks the {access!r} scope")


class RequestToken(ServerMiddleware[Any]):
    """MCP middleware: a request sees the token of its own HTTP request.

    Over SSE, tool calls run in the task of the long-lived GET stream, whose token the SDK put in
    context; each POSTed message carries its own (the same principal, perhaps a refreshed token).
    """

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Bind the token of the HTTP request that carried this message, if any."""
        scope = getattr(ctx.request, "scope", None)
        user = scope.get("user") if isinstance(scope, dict) else None
        if not isinstance(user, AuthenticatedUser):
            return await call_next(ctx)
        bound = auth_context_var.set(user)
        try:
            return await call_next(ctx)
        finally:
            auth_context_var.reset(bound)
