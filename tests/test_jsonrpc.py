"""Which JSON-RPC frames reach the SDK, and which ids an error may carry back."""

from __future__ import annotations

import json

import pytest
from mcp.types import JSONRPCError, JSONRPCRequest

from lightmem_mcp.jsonrpc import MAX_ID_CHARS, Refusal, admit


def frame(request_id: object, method: str = "ping") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method}).encode()


@pytest.mark.parametrize("request_id", ["i" * MAX_ID_CHARS, 2**63 - 1, -(2**63), 0])
def test_a_request_with_an_id_of_sane_size_is_admitted(request_id: object) -> None:
    admitted = admit(frame(request_id))

    assert isinstance(admitted, JSONRPCRequest)
    assert admitted.id == request_id


@pytest.mark.parametrize("request_id", ["i" * (MAX_ID_CHARS + 1), 2**63, -(2**63) - 1, 10**4000])
def test_a_request_with_an_oversize_id_is_refused_without_echoing_it(request_id: object) -> None:
    refused = admit(frame(request_id))

    assert isinstance(refused, Refusal)
    assert refused.answer.id is None
    assert refused.answer.error.code == -32600
    assert "at most 1024 characters" in refused.answer.error.message


def test_an_id_that_is_itself_a_lone_surrogate_is_not_echoed() -> None:
    refused = admit(b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}')

    assert isinstance(refused, Refusal)
    assert (refused.answer.id, refused.answer.error.code) == (None, -32700)


def test_a_malformed_response_gets_a_null_id_so_no_pending_request_of_the_client_matches_it() -> None:
    refused = admit(b'{"jsonrpc":"2.0","id":5,"error":{"message":"no code"}}')

    assert isinstance(refused, Refusal)
    assert refused.answer.id is None


def test_an_error_response_from_the_client_is_a_message_not_a_refusal() -> None:
    admitted = admit(b'{"jsonrpc":"2.0","id":5,"error":{"code":-32601,"message":"no sampling here"}}')

    assert isinstance(admitted, JSONRPCError)
    assert admitted.id == 5


def test_a_request_nested_past_the_interpreters_recursion_limit_is_refused_with_a_null_id() -> None:
    deep = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"

    refused = admit(deep)

    assert isinstance(refused, Refusal)
    assert (refused.answer.id, refused.answer.error.code) == (None, -32700)
