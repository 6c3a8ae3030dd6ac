"""A scripted OpenAI-compatible chat server for tests: `/v1/chat/completions` on 127.0.0.1, in-process.

Each test scripts the answers it expects, in order, and reads back every request:

    llm_server.script(
        Reply.error(503),                                   # an outage, retried
        {"facts": [{"text": "Alice lives in Paris"}]},      # a dict: the assistant's JSON content
        lambda request: {"facts": [{"text": request.user}]},  # computed from the prompt
    )
    settings = llm_server.settings(provider="deepseek")      # LLMSettings pointing here
    ...
    assert llm_server.requests[-1].body["response_format"] == {"type": "json_object"}

A request that finds the script empty gets a 500 saying so, and the fixture fails the test.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from lightmem_mcp.config import LLMSettings

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")


@dataclass(frozen=True)
class ChatRequest:
    """One request the server received."""

    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages sent."""
        return list(self.body.get("messages", []))

    @property
    def system(self) -> str:
        """The system prompt, or ''."""
        return next((str(m["content"]) for m in self.messages if m.get("role") == "system"), "")

    @property
    def user(self) -> str:
        """The last user message, or ''."""
        return next((str(m["content"]) for m in reversed(self.messages) if m.get("role") == "user"), "")


Content = str | Mapping[str, Any] | list[Any]

# One numbered message of the extraction prompt: "[3] 2024-03-10 (Sun) 09:04 | user (Ann): text".
PROMPT_LINE = re.compile(r"^\[(\d+)\] (.+?) \| (\w+)(?: \((.+?)\))?: (.*)$")


def prompt_messages(request: ChatRequest) -> list[tuple[int, str]]:
    """(number, text) of each message an extraction request sent, in prompt order."""
    return [(int(m.group(1)), m.group(5)) for m in map(PROMPT_LINE.match, request.user.splitlines()) if m]


def facts_per_message(prefix: str) -> Callable[[ChatRequest], dict[str, Any]]:
    """An extraction LLM that states each numbered message back as `<prefix>: <text>`, citing it."""

    def answer(request: ChatRequest) -> dict[str, Any]:
        return {"facts": [{"fact": f"{prefix}: {text}", "sources": [n]} for n, text in prompt_messages(request)]}

    return answer


@dataclass(frozen=True)
class Reply:
    """One scripted answer: assistant content (or a function of the request), an HTTP error, or a stall."""

    content: Content | Callable[[ChatRequest], Content] = ""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    cached_tokens: int = 0
    usage: Mapping[str, Any] | None = None  # sent verbatim instead of the computed usage
    finish_reason: str = "stop"

    @classmethod
    def json(cls, value: Mapping[str, Any] | list[Any], **kwargs: Any) -> Reply:
        """The assistant answers `value` as JSON text."""
        return cls(content=value, **kwargs)

    @classmethod
    def text(cls, content: str, **kwargs: Any) -> Reply:
        """The assistant answers exactly `content`."""
        return cls(content=content, **kwargs)

    @classmethod
    def computed(cls, answer: Callable[[ChatRequest], Content], **kwargs: Any) -> Reply:
        """The assistant's content is `answer(request)`; a dict or list is sent as JSON text."""
        return cls(content=answer, **kwargs)

    @classmethod
    def error(cls, status: int, message: str | None = None, *, retry_after: str | None = None) -> Reply:
        """An HTTP error with an OpenAI-shaped error body, and a Retry-After header if given."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls(content=message or f"scripted HTTP {status}", status=status, headers=headers)

    @classmethod
    def timeout(cls, delay_s: float = 5.0) -> Reply:
        """Answer only after `delay_s`: longer than the client's timeout in a test."""
        return cls(content={}, delay_s=delay_s)

    @classmethod
    def blank(cls) -> Reply:
        """Empty assistant content, as DeepSeek's JSON mode sometimes returns."""
        return cls(content="")

    @classmethod
    def malformed(cls) -> Reply:
        """Content that is not JSON: an answer cut off mid-string."""
        return cls(content='{"facts": [{"text": "Alice moved to', finish_reason="length")


ScriptItem = Reply | Mapping[str, Any] | list[Any] | str | int | Callable[[ChatRequest], Content]


def as_reply(item: ScriptItem) -> Reply:
    """A dict or list is JSON content, a str is raw content, an int an HTTP error status, a callable computed."""
    if isinstance(item, Reply):
        return item
    if isinstance(item, bool):
        raise TypeError("a bool is not a scripted reply")
    if isinstance(item, int):
        return Reply.error(item)
    if callable(item):
        return Reply.computed(item)
    return Reply(content=item)


class FakeLLMServer:
    """An OpenAI-compatible chat completions server answering from a per-test script."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []
        self.unexpected: list[ChatRequest] = []
        self.broken: list[str] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, and each test stops a server.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-llm-server", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>/v1`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def settings(self, **overrides: Any) -> LLMSettings:
        """LLMSettings pointing at this server: openai-compatible, fast retries, a test key."""
        values: dict[str, Any] = {
            "provider": "openai-compatible",
            "base_url": self.base_url,
            "model": "fake-model",
            "api_key": SecretStr("sk-test-secret"),
            "timeout_s": 5.0,
            "max_retries": 2,
            "retry_base_delay_s": 0.01,
        }
        values.update(overrides)
        return LLMSettings(**values)

    def script(self, *items: ScriptItem) -> None:
        """Queue answers, served one per request in order."""
        with self._lock:
            self._script.extend(as_reply(item) for item in items)

    @property
    def pending(self) -> int:
        """Scripted answers not served yet."""
        with self._lock:
            return len(self._script)

    def start(self) -> FakeLLMServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled answers are abandoned."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next(self, request: ChatRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._script:
                return self._script.popleft()
            self.unexpected.append(request)
        return Reply.error(
            500, f"fake LLM server: request {len(self.requests)} was not scripted (the test's script is used up)"
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.split("?")[0] not in CHAT_PATHS:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
                    return
                headers = {name.lower(): value for name, value in self.headers.items()}
                request = ChatRequest(self.path, headers, body)
                reply = server._next(request)
                if reply.delay_s and server._stopping.wait(reply.delay_s):
                    return
                try:
                    status, payload = _render(reply, request)
                except Exception as exc:  # a bug in the test's answer function: make it loud
                    server.broken.append(f"{type(exc).__name__}: {exc}")
                    self._send(500, {"error": {"message": f"fake LLM server: answer function raised {exc!r}"}})
                    return
                self._send(status, payload, reply.headers)

            def _send(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a scripted timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean; tests read `requests` instead

        return Handler


def _render(reply: Reply, request: ChatRequest) -> tuple[int, dict[str, Any]]:
    content = reply.content(request) if callable(reply.content) else reply.content
    text = content if isinstance(content, str) else json.dumps(content)
    if reply.status >= 400:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(reply.status, "api_error")
        return reply.status, {"error": {"message": text, "type": kind, "code": str(reply.status)}}
    return 200, {
        "id": f"chatcmpl-fake-{len(text)}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": request.body.get("model", "fake-model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": dict(reply.usage) if reply.usage is not None else _usage(request, text, reply.cached_tokens),
    }


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """A usage block with exact figures, for `Reply(usage=...)`: cache hits reported both ways, as DeepSeek does."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "prompt_cache_hit_tokens": cached,
        "prompt_cache_miss_tokens": prompt - cached,
    }


def _usage(request: ChatRequest, answer: str, cached: int) -> dict[str, Any]:
    # About four characters a token, like the real tokenizers on English text; both the
    # OpenAI and the DeepSeek way of reporting cache hits, as DeepSeek itself does.
    prompt = max(1, sum(len(str(m.get("content", ""))) for m in request.messages) // 4)
    completion = max(1, len(answer) // 4) if answer else 0
    cached = min(cached, prompt)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "prompt_cache_hit_tokens": cached,
        "prompt_cache_miss_tokens": prompt - cached,
    }


@pytest.fixture(name="llm_server")
def llm_server_fixture() -> Iterator[FakeLLMServer]:
    """A started fake LLM server; the test fails if a request found the script used up or an answer function raised."""
    server = FakeLLMServer().start()
    try:
        yield server
    finally:
        server.stop()
    if server.unexpected:
        pytest.fail(f"the fake LLM server got {len(server.unexpected)} request(s) beyond its script")
    if server.broken:
        pytest.fail(f"a scripted answer function raised: {server.broken[0]}")
