"""Static tokens and their file, the `token new` command, JWT scopes, and the tenant / scope rules of tool calls."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

from lightmem_mcp.auth import (
    StaticTokenVerifier,
    TenantToken,
    acting_user,
    check_access,
    hash_token,
    new_token,
    parse_token_lines,
    token_line,
)
from lightmem_mcp.errors import ConfigError, LightMemError
from tests.hosted_server import COMMAND

pytestmark = pytest.mark.anyio


async def test_a_token_from_token_new_is_accepted_with_its_tenant_and_scopes(tmp_path: Path) -> None:
    done = subprocess.run(
        [COMMAND, "token", "new", "--tenant", "acme", "--scopes", "read,write", "--name", "ci"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    lines = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    token, entry = lines
    tokens_file = tmp_path / "tokens.jsonl"
    tokens_file.write_text("# tokens of the acme deployment\n" + entry + "\n")

    verified = await StaticTokenVerifier(tokens_file, None).verify_token(token)

    assert token.startswith("lmk_")
    assert json.loads(entry) == {
        "sha256": hash_token(token),
        "tenant": "acme",
        "scopes": ["read", "write"],
        "name": "ci",
    }
    assert token not in tokens_file.read_text()
    assert isinstance(verified, TenantToken)
    assert (verified.tenant, verified.scopes) == ("acme", ["read", "write"])
    assert await StaticTokenVerifier(tokens_file, None).verify_token(token + "x") is None


async def test_the_tokens_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    first, second = new_token(), new_token()
    tokens_file = tmp_path / "tokens.jsonl"
    tokens_file.write_text(token_line(first, "acme", ["read"]) + "\n")
    verifier = StaticTokenVerifier(tokens_file, None)
    before = await verifier.verify_token(second)

    tokens_file.write_text(token_line(second, "acme", ["read"]) + "\n# the first one is revoked\n")
    os.utime(tokens_file, (1, 1))  # a new mtime even on a coarse clock
    after_second, after_first = await verifier.verify_token(second), await verifier.verify_token(first)

    tokens_file.write_text("{not json\n")
    os.utime(tokens_file, (2, 2))
    kept = await verifier.verify_token(second)  # a broken edit keeps the tokens in force

    assert before is None
    assert after_second is not None
    assert after_first is None
    assert kept is not None


async def test_tokens_in_the_env_var_need_no_file() -> None:
    token = new_token()
    verifier = StaticTokenVerifier(None, json.dumps([json.loads(token_line(token, "acme", ["admin"]))]))

    verified = await verifier.verify_token(token)

    assert verified is not None
    assert verified.scopes == ["admin"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"sha256": "abc", "tenant": "t", "scopes": ["read"]}', "line 2: sha256 must be"),
        ('{"sha256": "' + "a" * 64 + '", "tenant": " ", "scopes": ["read"]}', "line 2: tenant must be"),
        ('{"sha256": "' + "a" * 64 + '", "tenant": "t", "scopes": ["delete"]}', "line 2: scopes must be"),
        ('{"sha256": "' + "a" * 64 + '", "tenant": "t", "scopes": ["read"], "role": "x"}', "unknown field(s) role"),
        ("sha256=abc", "line 2: not JSON"),
    ],
)
def test_a_bad_tokens_line_is_refused_with_its_line_number(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="line 2") as refused:
        parse_token_lines("# header\n" + text, "tokens.jsonl")

    assert problem.replace("line 2: ", "") in str(refused.value)


def test_tokens_mode_without_any_token_says_how_to_make_one(tmp_path: Path) -> None:
    empty = tmp_path / "tokens.jsonl"
    empty.write_text("# nothing yet\n")

    with pytest.raises(ConfigError, match="lightmem-mcp token new"):
        StaticTokenVerifier(empty, None)
    with pytest.raises(ConfigError, match="cannot read it"):
        StaticTokenVerifier(tmp_path / "missing.jsonl", None)


def bind(tenant: str, scopes: list[str]) -> object:
    token = TenantToken(token="t", client_id="c", scopes=scopes, tenant=tenant)
    return auth_context_var.set(AuthenticatedUser(token))


def test_with_a_token_the_tenant_is_the_user_and_scopes_gate_access() -> None:
    assert acting_user("anyone") == "anyone"  # no token: stdio, or auth off
    check_access("admin")

    bound = bind("acme", ["read"])
    try:
        assert acting_user("default") == "acme"
        assert acting_user("acme") == "acme"
        with pytest.raises(LightMemError, match="'other' is not the tenant of this token"):
            acting_user("other")
        check_access("read")
        with pytest.raises(LightMemError, match="forbidden: this token lacks the 'write' scope"):
            check_access("write")
    finally:
        auth_context_var.reset(bound)  # type: ignore[arg-type]

    bound = bind("acme", ["admin"])
    try:
        check_access("write")
        check_access("read")
    finally:
        auth_context_var.reset(bound)  # type: ignore[arg-type]
