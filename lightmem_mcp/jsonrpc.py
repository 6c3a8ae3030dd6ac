"""Which JSON-RPC frames the server admits, and the error that answers any other.

Every request gets an answer: a frame that cannot be parsed gets a parse error (-32700), one that
parses but is not a JSON-RPC 2.0 message an invalid-request error (-32600). The error carries the
request's id when it can be read back safely, else null. An id is echoed only when it is a string of
at most `MAX_ID_CHARS` characters or a 64-bit integer, so a client cannot make the server send back
a megabyte it chose; a request with a larger id is refused with a null id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypeGuard

import pydantic_core
from mcp.types import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    RequestId,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

MAX_ID_CHARS = 1024
_INT_ID_BOUND = 2**63
_NOT_A_MESSAGE = "Invalid Request: expected one JSON-RPC 2.0 request, notification or response object"
_ID_TOO_LARGE = (
    f"Invalid Request: a request id must be a string of at most {MAX_ID_CHARS} characters or a 64-bit integer"
)


@dataclass(frozen=True)
class Refusal:
    """A frame the server will not handle, and the error that answers it."""

    answer: JSONRPCError


def admit(frame: bytes) -> JSONRPCMessage | Refusal:
    """The message in one frame (a stdio line, an HTTP body), or the refusal that answers it."""
    try:
        raw = pydantic_core.from_json(frame)
    except ValueError as exc:
        # The SDK's parser refuses lone surrogates and deep nesting; the standard library's reads
        # both, so the id of such a request can still be echoed and its caller stops waiting.
        return refusal(PARSE_ERROR, f"Parse error: {exc}", _recover_id(frame))
    if (too_large := id_refusal(raw)) is not None:
        return too_large
    try:
        return jsonrpc_message_adapter.validate_python(raw, by_name=False)
    except ValidationError:
        return refusal(INVALID_REQUEST, _NOT_A_MESSAGE, request_id(raw))


def id_refusal(raw: object) -> Refusal | None:
    """The error for a parsed request whose string or integer id is too large to echo; None otherwise."""
    if not isinstance(raw, dict) or "method" not in raw:
        return None
    rid = raw.get("id")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or echoable(rid):
        return None  # no id (a notification), a sane one, or a wrong type the SDK refuses itself
    return refusal(INVALID_REQUEST, _ID_TOO_LARGE, None)


def request_id(raw: object) -> RequestId | None:
    """The id of what was meant as a request, when it is safe to echo; None (JSON-RPC's null) otherwise.

    Only an object with a `method` counts: an error carrying the id of a malformed *response* would
    be matched by the client against one of its own pending requests.
    """
    if not isinstance(raw, dict) or "method" not in raw:
        return None
    rid = raw.get("id")
    return rid if echoable(rid) else None


def echoable(rid: object) -> TypeGuard[RequestId]:
    """Whether `rid` is an id the server may send back: a short, valid-UTF-8 string or a 64-bit integer."""
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -_INT_ID_BOUND <= rid < _INT_ID_BOUND
    if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS:
        try:
            rid.encode("utf-8")  # a lone surrogate cannot be written back
        except UnicodeEncodeError:
            return False
        return True
    return False


def refusal(code: int, message: str, rid: RequestId | None) -> Refusal:
    """A refusal answered with JSON-RPC error `code`."""
    return Refusal(JSONRPCError(jsonrpc="2.0", id=rid, error=ErrorData(code=code, message=message)))


def _recover_id(frame: bytes) -> RequestId | None:
    try:
        raw = json.loads(frame.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):  # not JSON at all, or nested past the interpreter's limit
        return None
    return request_id(raw)
