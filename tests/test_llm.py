"""The LLM client through the real openai SDK against a scripted OpenAI-compatible server."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from itertools import pairwise
from typing import Any

import pytest
from pydantic import BaseModel

from lightmem_mcp.config import LLMSettings
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.llm import LLMCall, LLMClient, LLMError
from lightmem_mcp.ratelimit import RateLimiter
from lightmem_mcp.records import Scope
from lightmem_mcp.tokens import TokenCounter
from tests.openai_server import ChatRequest, FakeLLMServer, Reply, llm_server_fixture  # noqa: F401

SYSTEM = 'Extract standalone facts. Answer in JSON: {"facts": [{"text": "...", "source_ids": ["..."]}]}'
USER = "[m1] user: I moved to Lisbon last spring.\n[m2] user: My sister Ana still lives in Porto."
FACTS = {"facts": [{"text": "The user moved to Lisbon in spring", "source_ids": ["m1"]}]}
SECRET = "sk-test-secret"
# The fake server's usage estimate for one request: four characters a token.
PROMPT_TOKENS = (len(SYSTEM) + len(USER)) // 4


class Fact(BaseModel):
    text: str
    source_ids: list[str]


class Facts(BaseModel):
    facts: list[Fact]


class Recorder:
    """Collects what the client reports: finished calls and the delays it slept."""

    def __init__(self) -> None:
        self.calls: list[LLMCall] = []
        self.sleeps: list[float] = []

    def client(self, settings: LLMSettings) -> LLMClient:
        return LLMClient(settings, on_call=self.calls.append, sleep=self.sleeps.append)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def extract(client: LLMClient) -> Facts:
    return client.complete_json("extraction", SYSTEM, USER, Facts).value


def test_a_json_answer_is_parsed_into_the_schema_with_its_usage(llm_server: FakeLLMServer, recorder: Recorder) -> None:
    llm_server.script(Reply.json(FACTS, cached_tokens=12))
    client = recorder.client(llm_server.settings())

    result = client.complete_json("extraction", SYSTEM, USER, Facts)

    assert result.value == Facts.model_validate(FACTS)
    call = result.call
    assert (call.purpose, call.model, call.provider, call.attempts, call.ok) == (
        "extraction",
        "fake-model",
        "openai-compatible",
        1,
        True,
    )
    assert call.usage.prompt_tokens > 0
    assert call.usage.completion_tokens > 0
    assert call.usage.cached_tokens == 12
    assert recorder.calls == [call]
    [request] = llm_server.requests
    assert request.system == SYSTEM
    assert request.user == USER
    assert request.body["model"] == "fake-model"
    assert request.body["response_format"] == {"type": "json_object"}
    assert request.body["max_tokens"] == 4096


@pytest.mark.parametrize(
    "usage",
    [
        {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64},
        },
        {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "prompt_cache_hit_tokens": 64},
    ],
    ids=["openai", "deepseek"],
)
def test_cached_tokens_are_read_as_either_provider_reports_them(
    llm_server: FakeLLMServer, recorder: Recorder, usage: dict[str, Any]
) -> None:
    llm_server.script(Reply.json(FACTS, usage=usage))

    call = recorder.client(llm_server.settings()).complete_json("extraction", SYSTEM, USER, Facts).call

    assert (call.usage.prompt_tokens, call.usage.completion_tokens, call.usage.cached_tokens) == (100, 20, 64)


def test_the_answer_can_be_computed_from_the_prompt(llm_server: FakeLLMServer, recorder: Recorder) -> None:
    llm_server.script(
        lambda request: {"facts": [{"text": line, "source_ids": []} for line in request.user.splitlines()]}
    )

    facts = extract(recorder.client(llm_server.settings()))

    assert [fact.text for fact in facts.facts] == USER.splitlines()


@pytest.mark.parametrize(
    "failure",
    [
        Reply.error(500),
        Reply.error(503),
        Reply.blank(),
        Reply.malformed(),
        Reply.json({"facts": [{"source_ids": ["m1"]}]}),
        Reply.json({"facts": "none"}),
    ],
    ids=["500", "503", "blank", "malformed-json", "missing-field", "wrong-type"],
)
def test_a_failed_attempt_is_retried_and_its_usage_counted(
    llm_server: FakeLLMServer, recorder: Recorder, failure: Reply
) -> None:
    llm_server.script(failure, Reply.json(FACTS))

    result = recorder.client(llm_server.settings()).complete_json("extraction", SYSTEM, USER, Facts)

    assert result.value == Facts.model_validate(FACTS)
    assert result.call.attempts == 2
    assert len(llm_server.requests) == 2
    assert len(recorder.sleeps) == 1
    # An answer that came back but was unusable was still paid for; an HTTP error was not.
    paid_attempts = 1 if failure.status >= 400 else 2
    assert result.call.usage.prompt_tokens == paid_attempts * PROMPT_TOKENS
    assert recorder.calls == [result.call]


def test_retry_after_of_a_429_is_honoured(llm_server: FakeLLMServer, recorder: Recorder) -> None:
    llm_server.script(Reply.error(429, "rate limited", retry_after="2"), Reply.json(FACTS))

    result = recorder.client(llm_server.settings()).complete_json("extraction", SYSTEM, USER, Facts)

    assert result.call.attempts == 2
    assert recorder.sleeps == [2.0]


def test_backoff_doubles_between_retries(llm_server: FakeLLMServer, recorder: Recorder) -> None:
    llm_server.script(500, 500, 500, FACTS)

    result = recorder.client(llm_server.settings(max_retries=3, retry_base_delay_s=1.0)).complete_json(
        "extraction", SYSTEM, USER, Facts
    )

    assert result.call.attempts == 4
    assert [int(delay) for delay in recorder.sleeps] == [1, 2, 4]


def test_a_timeout_is_retried(llm_server: FakeLLMServer) -> None:
    llm_server.script(Reply.timeout(delay_s=5.0), Reply.json(FACTS))
    client = LLMClient(llm_server.settings(timeout_s=0.3))

    result = client.complete_json("extraction", SYSTEM, USER, Facts)

    assert result.value == Facts.model_validate(FACTS)
    assert result.call.attempts == 2


def test_an_unreachable_server_is_retried_then_reported(recorder: Recorder) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = LLMSettings(
        provider="openai-compatible", base_url=f"http://127.0.0.1:{port}/v1", model="m", retry_base_delay_s=0.01
    )

    with pytest.raises(LLMError, match=r"cannot reach http://127\.0\.0\.1") as raised:
        extract(recorder.client(settings))

    assert raised.value.call.attempts == settings.max_retries + 1
    assert raised.value.retryable


def test_a_persistent_outage_fails_after_the_retries_and_keeps_the_batch_pending(
    llm_server: FakeLLMServer, recorder: Recorder
) -> None:
    llm_server.script(*[Reply.error(500, "upstream overloaded")] * 3)
    client = recorder.client(llm_server.settings(max_retries=2))

    with pytest.raises(LLMError) as raised:
        extract(client)

    error = raised.value
    assert isinstance(error, BackendUnavailable)
    assert error.retryable
    assert "after 3 attempt(s)" in str(error)
    assert "HTTP 500: upstream overloaded" in str(error)
    assert "stays pending" in str(error)
    assert len(llm_server.requests) == 3
    [call] = recorder.calls
    assert (call.ok, call.attempts) == (False, 3)
    assert call.error is not None and "HTTP 500" in call.error


def test_failed_calls_still_report_the_usage_of_every_attempt(llm_server: FakeLLMServer, recorder: Recorder) -> None:
    llm_server.script(*[Reply.blank()] * 3)

    with pytest.raises(LLMError, match="blank"):
        extract(recorder.client(llm_server.settings(max_retries=2)))

    [call] = recorder.calls
    assert (call.ok, call.attempts) == (False, 3)
    assert call.usage.prompt_tokens == 3 * PROMPT_TOKENS


@pytest.mark.parametrize(
    ("status", "setting"),
    [
        (401, "LIGHTMEM_LLM_API_KEY"),
        (403, "LIGHTMEM_LLM_API_KEY"),
        (404, "LIGHTMEM_LLM_MODEL"),
        (400, "LIGHTMEM_LLM_MODEL"),
    ],
)
def test_a_client_error_fails_at_once_naming_the_setting_to_fix(
    llm_server: FakeLLMServer, recorder: Recorder, status: int, setting: str
) -> None:
    llm_server.script(Reply.error(status, "nope"))

    with pytest.raises(LLMError, match=setting) as raised:
        extract(recorder.client(llm_server.settings()))

    assert not raised.value.retryable
    assert f"HTTP {status}: nope" in str(raised.value)
    assert len(llm_server.requests) == 1
    assert recorder.sleeps == []
    assert recorder.calls[0].attempts == 1


def test_deepseek_preset_disables_thinking_and_asks_for_json(llm_server: FakeLLMServer) -> None:
    llm_server.script(FACTS)
    # DeepSeek's base URL has no /v1: the server answers /chat/completions as well.
    settings = llm_server.settings(provider="deepseek", base_url=f"http://127.0.0.1:{llm_server.port}", model=None)

    extract(LLMClient(settings))

    [request] = llm_server.requests
    assert request.path == "/chat/completions"
    assert request.body["model"] == "deepseek-flash"
    assert request.body["thinking"] == {"type": "disabled"}
    assert request.body["response_format"] == {"type": "json_object"}
    assert request.headers["authorization"] == f"Bearer {SECRET}"


def test_pangu_preset_sends_the_token_in_x_auth_token_and_no_authorization(llm_server: FakeLLMServer) -> None:
    llm_server.script(FACTS)

    extract(LLMClient(llm_server.settings(provider="pangu", model="pangu-38b")))

    [request] = llm_server.requests
    assert request.headers["x-auth-token"] == SECRET
    assert "authorization" not in request.headers
    assert "thinking" not in request.body


def test_a_keyless_local_server_gets_no_authorization_header(llm_server: FakeLLMServer) -> None:
    llm_server.script(FACTS)

    extract(LLMClient(llm_server.settings(api_key=None)))

    assert "authorization" not in llm_server.requests[0].headers


def test_openai_preset_limits_output_with_max_completion_tokens(llm_server: FakeLLMServer) -> None:
    llm_server.script(FACTS)

    extract(LLMClient(llm_server.settings(provider="openai", max_output_tokens=512)))

    body = llm_server.requests[0].body
    assert body["max_completion_tokens"] == 512
    assert "max_tokens" not in body


def test_a_fenced_json_answer_is_accepted(llm_server: FakeLLMServer) -> None:
    llm_server.script(Reply.text('```json\n{"facts": []}\n```'))

    assert extract(LLMClient(llm_server.settings())) == Facts(facts=[])


def test_the_key_never_appears_in_errors_logs_or_describe(
    llm_server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    llm_server.script(
        Reply.error(503, f"busy for key {SECRET}"),
        Reply.blank(),
        Reply.error(401, f"Incorrect API key provided: {SECRET}"),
    )
    client = LLMClient(llm_server.settings(max_retries=3))

    with pytest.raises(LLMError) as raised:
        extract(client)

    assert "LIGHTMEM_LLM_API_KEY" in str(raised.value)
    assert SECRET not in str(raised.value)
    assert SECRET not in repr(raised.value.call)
    assert caplog.records, "expected the retries to be logged"
    assert SECRET not in caplog.text
    assert SECRET not in str(client.describe())
    assert SECRET not in repr(client.describe())


def test_describe_names_the_endpoint_and_auth_header(llm_server: FakeLLMServer) -> None:
    client = LLMClient(llm_server.settings(provider="pangu", model="pangu-38b"))

    assert client.configured
    assert client.describe() == {
        "provider": "pangu",
        "configured": True,
        "base_url": llm_server.base_url,
        "model": "pangu-38b",
        "auth_header": "X-Auth-Token",
        "auth_scheme": None,
        "api_key_set": True,
        "timeout_s": 5.0,
        "max_retries": 2,
        "requests_per_minute": 0,
        "tokens_per_minute": 0,
    }


def test_without_a_provider_the_client_is_not_configured(recorder: Recorder) -> None:
    client = recorder.client(LLMSettings())

    assert not client.configured
    assert client.describe() == {"provider": "none", "configured": False}
    with pytest.raises(LLMError, match="LIGHTMEM_LLM_PROVIDER"):
        extract(client)


def test_a_prompt_that_does_not_mention_json_is_a_programming_error(llm_server: FakeLLMServer) -> None:
    with pytest.raises(ValueError, match="JSON"):
        LLMClient(llm_server.settings()).complete_json("extraction", "Extract facts.", USER, Facts)

    assert llm_server.requests == []


def test_an_unscripted_request_fails_loudly(recorder: Recorder) -> None:
    server = FakeLLMServer().start()
    try:
        with pytest.raises(LLMError, match="not scripted"):
            extract(recorder.client(server.settings(max_retries=0)))
    finally:
        server.stop()

    assert len(server.unexpected) == 1


# -- rate limits and the pre-call hook ---------------------------------------------------


class FakeClock:
    """A clock that moves only when slept on: rate-limit waits without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def stamped(stamps: list[float], clock: Any, content: Any = FACTS) -> Any:
    """A computed answer that notes the clock's time when the server answers."""

    def answer(request: ChatRequest) -> Any:
        stamps.append(clock())
        return content

    return answer


def test_requests_per_minute_spreads_the_requests_evenly(llm_server: FakeLLMServer) -> None:
    clock = FakeClock()
    stamps: list[float] = []
    settings = llm_server.settings(requests_per_minute=120)
    client = LLMClient(settings, limiter=RateLimiter.from_settings(settings, clock=clock.time, sleep=clock.sleep))
    llm_server.script(*[stamped(stamps, clock.time)] * 4)

    for _ in range(4):
        extract(client)

    # One every 60 / 120 = 0.5 s (and a millisecond, pyrate's window being inclusive).
    assert stamps == pytest.approx([0.0, 0.501, 1.002, 1.503])


def test_the_limits_come_from_the_settings_and_hold_at_the_server(llm_server: FakeLLMServer) -> None:
    arrivals: list[float] = []
    client = LLMClient(llm_server.settings(requests_per_minute=240, tokens_per_minute=100_000))
    llm_server.script(*[stamped(arrivals, time.monotonic)] * 3)

    for _ in range(3):
        extract(client)

    assert client.limiter is not None
    assert client.limiter.describe() == {"requests": 240, "tokens": 100_000, "period_s": 60.0}
    assert client.describe()["requests_per_minute"] == 240
    assert client.describe()["tokens_per_minute"] == 100_000
    # 0.25 s apart when admitted; a request admitted on time may still reach the server a little late.
    assert all(later - earlier >= 0.2 for earlier, later in pairwise(arrivals))


def test_no_limits_means_no_limiter(llm_server: FakeLLMServer) -> None:
    assert LLMClient(llm_server.settings()).limiter is None
    assert RateLimiter.from_settings(llm_server.settings()) is None


def test_every_retry_takes_a_request_slot(llm_server: FakeLLMServer) -> None:
    clock = FakeClock()
    stamps: list[float] = []
    settings = llm_server.settings(requests_per_minute=60, retry_base_delay_s=0.0)
    client = LLMClient(settings, limiter=RateLimiter.from_settings(settings, clock=clock.time, sleep=clock.sleep))
    llm_server.script(Reply(content=stamped(stamps, clock.time, "outage"), status=503), stamped(stamps, clock.time))

    assert extract(client) == Facts.model_validate(FACTS)
    assert stamps == pytest.approx([0.0, 1.001])


def test_tokens_per_minute_holds_back_a_big_prompt(llm_server: FakeLLMServer) -> None:
    clock = FakeClock()
    stamps: list[float] = []
    settings = llm_server.settings(tokens_per_minute=1_000)
    client = LLMClient(settings, limiter=RateLimiter.from_settings(settings, clock=clock.time, sleep=clock.sleep))
    small = "x" * 400  # ~100 tokens with the prompt: ~150 counted with the answer's share
    big = "x" * 3_000  # ~750 tokens + a quarter: more than the room the small calls leave
    llm_server.script(*[stamped(stamps, clock.time)] * 3)

    for user in (small, small, big):
        client.complete_json("extraction", SYSTEM, user, Facts)

    # The two small calls fit at once; the big one waits for the first small call to leave the window.
    assert stamps[:2] == [0.0, 0.0]
    assert stamps[2] == pytest.approx(60.001)


def test_a_call_bigger_than_the_whole_allowance_still_goes_through(llm_server: FakeLLMServer) -> None:
    clock = FakeClock()
    stamps: list[float] = []
    settings = llm_server.settings(tokens_per_minute=500)
    client = LLMClient(settings, limiter=RateLimiter.from_settings(settings, clock=clock.time, sleep=clock.sleep))
    huge = "x" * 20_000  # ~5,000 tokens: ten minutes' allowance
    llm_server.script(*[stamped(stamps, clock.time)] * 3)

    for _ in range(3):
        client.complete_json("extraction", SYSTEM, huge, Facts)

    # Each counts as the whole allowance: it waits for an empty minute, then goes.
    assert stamps == pytest.approx([0.0, 60.001, 120.002])


def test_tokens_are_counted_with_the_token_counter_when_given(llm_server: FakeLLMServer) -> None:
    counter = TokenCounter()

    with_counter = LLMClient(llm_server.settings(), counter=counter)
    without = LLMClient(llm_server.settings())

    assert with_counter.estimate_tokens(SYSTEM, USER) == counter.count(SYSTEM) + counter.count(USER)
    assert without.estimate_tokens(SYSTEM, USER) == math.ceil((len(SYSTEM) + len(USER)) / 4)


def test_a_429_pauses_every_caller_and_the_rate_limit_spreads_the_rest(llm_server: FakeLLMServer) -> None:
    arrivals: list[float] = []
    llm_server.script(
        Reply(content=stamped(arrivals, time.monotonic, "slow down"), status=429, headers={"Retry-After": "1"}),
        *[stamped(arrivals, time.monotonic)] * 4,
    )
    client = LLMClient(llm_server.settings(requests_per_minute=120, max_retries=3))
    answers: list[Facts] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            answers.append(extract(client))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Nothing lost: every caller answered, with one request more than callers (the refused one).
    assert errors == []
    assert answers == [Facts.model_validate(FACTS)] * 4
    assert len(llm_server.requests) == 5
    throttled, *after = arrivals
    # The next slot was 0.5 s later, but no caller went before the second the server asked for ...
    assert min(after) - throttled >= 0.95
    # ... and then not all at once: one every 0.5 s.
    assert all(later - earlier >= 0.45 for earlier, later in pairwise(after))


def test_before_call_sees_purpose_scope_and_estimate_once(llm_server: FakeLLMServer, recorder: Recorder) -> None:
    seen: list[tuple[str, Scope | None, int]] = []
    llm_server.script(Reply.error(503), Reply.json(FACTS))
    client = LLMClient(
        llm_server.settings(),
        on_call=recorder.calls.append,
        sleep=recorder.sleeps.append,
        before_call=lambda purpose, scope, tokens: seen.append((purpose, scope, tokens)),
    )

    result = client.complete_json("extraction", SYSTEM, USER, Facts, scope=Scope("ann"))

    assert result.call.attempts == 2
    assert seen == [("extraction", Scope("ann"), client.estimate_tokens(SYSTEM, USER))]


class BudgetSpent(Exception):
    pass


def test_a_raising_before_call_hook_stops_the_call_unsent_and_unrecorded(
    llm_server: FakeLLMServer, recorder: Recorder
) -> None:
    def refuse(purpose: str, scope: Scope | None, tokens: int) -> None:
        raise BudgetSpent(f"{purpose}: {tokens} tokens over today's budget")

    client = LLMClient(llm_server.settings(), on_call=recorder.calls.append, before_call=refuse)

    with pytest.raises(BudgetSpent, match="extraction"):
        extract(client)

    assert llm_server.requests == []
    assert recorder.calls == []


def test_before_call_is_not_asked_without_an_llm(recorder: Recorder) -> None:
    seen: list[str] = []
    client = LLMClient(LLMSettings(), before_call=lambda purpose, scope, tokens: seen.append(purpose))

    with pytest.raises(LLMError, match="LIGHTMEM_LLM_PROVIDER"):
        extract(client)

    assert seen == []


def test_the_limiter_refuses_negative_limits_naming_the_settings() -> None:
    with pytest.raises(ValueError, match="LIGHTMEM_LLM_REQUESTS_PER_MINUTE"):
        RateLimiter(-1, 0)
