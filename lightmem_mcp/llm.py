"""The LLM backend: one OpenAI-compatible chat client with provider presets, JSON answers and its own retries."""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ValidationError

from lightmem_mcp.config import LLMSettings
from lightmem_mcp.errors import BackendUnavailable
from lightmem_mcp.ratelimit import RateLimiter
from lightmem_mcp.records import LLMCall, Scope, Usage

if TYPE_CHECKING:
    from openai import APIStatusError, OpenAI
    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
    from openai.types.completion_usage import CompletionUsage

    from lightmem_mcp.tokens import TokenCounter

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

# Statuses worth another try, as the openai SDK's own retry loop has them.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
MAX_DELAY_S = 60.0
# The SDK insists on an api_key string; this one never leaves the process because the
# Authorization header is either ours (from the settings) or explicitly omitted.
_PLACEHOLDER_KEY = "lightmem-unused"
# The rate limiter counts a call's tokens before the answer exists: the prompt plus this share of
# it (at most max_output_tokens). Extraction answers restate the user's turns in fewer words; the
# full max_output_tokens would hold back far more than answers use.
_ANSWER_SHARE = 0.25


class LLMError(BackendUnavailable):
    """An LLM call failed: a setting to fix (`retryable` False) or an outage that outlasted the retries."""

    def __init__(self, message: str, call: LLMCall, *, retryable: bool) -> None:
        super().__init__(message)
        self.call = call
        self.retryable = retryable


@dataclass(frozen=True)
class LLMResult(Generic[T]):
    """A validated answer and the call that produced it."""

    value: T
    call: LLMCall


@dataclass(frozen=True)
class _Failure:
    """Why an attempt failed, and how long the server asked us to wait."""

    problem: str
    retry_after_s: float | None = None
    throttled: bool = False  # a 429: the server wants fewer requests from every caller, not only this one


class LLMClient:
    """Asks an OpenAI-compatible chat API for JSON answers validated against a pydantic schema."""

    def __init__(
        self,
        settings: LLMSettings,
        *,
        on_call: Callable[[LLMCall], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        before_call: Callable[[str, Scope | None, int], None] | None = None,
        counter: TokenCounter | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._settings = settings
        self._on_call = on_call
        self._sleep = sleep
        self._before_call = before_call
        self._counter = counter
        # Requests and tokens per minute (LIGHTMEM_LLM_REQUESTS_PER_MINUTE / _TOKENS_PER_MINUTE), shared by
        # every caller of this client; None: no limits. Replaceable, e.g. by a benchmark's shorter window.
        self.limiter = limiter if limiter is not None else RateLimiter.from_settings(settings)
        self._sdk: OpenAI | None = None
        self._sdk_lock = threading.Lock()

    @property
    def configured(self) -> bool:
        """Whether an LLM is set up; without one, extraction is off."""
        return self._settings.provider != "none"

    @property
    def provider(self) -> str:
        """The configured provider (none when no LLM is set up)."""
        return self._settings.provider

    @property
    def model(self) -> str:
        """The model id requests name."""
        return self._settings.model or ""

    def describe(self) -> dict[str, object]:
        """Provider, endpoint, model and auth header name for `doctor`; never the key."""
        s = self._settings
        if not self.configured:
            return {"provider": "none", "configured": False}
        return {
            "provider": s.provider,
            "configured": True,
            "base_url": _without_userinfo(s.base_url or ""),
            "model": s.model,
            "auth_header": s.auth_header,
            "auth_scheme": s.auth_scheme or None,
            "api_key_set": s.api_key is not None,
            "timeout_s": s.timeout_s,
            "max_retries": s.max_retries,
            "requests_per_minute": s.requests_per_minute,
            "tokens_per_minute": s.tokens_per_minute,
        }

    def estimate_tokens(self, system: str, user: str) -> int:
        """Prompt tokens of a call before it is made: the client's TokenCounter, else about 4 characters a token."""
        if self._counter is not None:
            return self._counter.count(system) + self._counter.count(user)
        return math.ceil((len(system) + len(user)) / 4)

    def close(self) -> None:
        """Close the HTTP connections."""
        with self._sdk_lock:
            if self._sdk is not None:
                self._sdk.close()
                self._sdk = None

    def complete_json(
        self, purpose: str, system: str, user: str, schema: type[T], *, scope: Scope | None = None, turns: int = 0
    ) -> LLMResult[T]:
        """One JSON-mode chat completion parsed into `schema`, retried on outages and bad answers. The
        call, answered or not, is handed to `on_call` with the scope it was made for and the turns it
        took (the usage ledger). `before_call` sees (purpose, scope, estimated prompt tokens) once, before
        the first attempt; if it raises, the exception propagates and nothing is sent or recorded."""
        if "json" not in (system + user).lower():
            # JSON mode requires it: DeepSeek and OpenAI answer 400 otherwise.
            raise ValueError("the prompt must mention JSON for JSON mode")
        call_id = uuid.uuid4().hex
        started_at = datetime.now(UTC)
        t0 = time.monotonic()
        usage = Usage()
        attempts = 0

        def record(ok: bool, error: str | None = None) -> LLMCall:
            call = LLMCall(
                call_id=call_id,
                purpose=purpose,
                provider=self._settings.provider,
                model=self.model,
                usage=usage,
                attempts=attempts,
                seconds=round(time.monotonic() - t0, 6),
                started_at=started_at,
                ok=ok,
                error=error,
                scope=scope,
                turns=turns,
            )
            if self._on_call is not None:
                try:
                    self._on_call(call)
                except Exception:  # accounting must not turn a good answer into a failure
                    log.exception("on_call hook failed for LLM call %s", call_id)
            return call

        if not self.configured:
            message = "no LLM is configured: set LIGHTMEM_LLM_PROVIDER (deepseek, huawei-maas, pangu, openai, ...)"
            raise LLMError(message, record(False, message), retryable=False)

        prompt_tokens = self.estimate_tokens(system, user)
        if self._before_call is not None:
            self._before_call(purpose, scope, prompt_tokens)
        weight = prompt_tokens + min(self._settings.max_output_tokens, int(prompt_tokens * _ANSWER_SHARE))
        max_attempts = self._settings.max_retries + 1
        failure = _Failure("no attempt made")
        for attempt in range(1, max_attempts + 1):
            attempts = attempt
            if self.limiter is not None:
                # The SDK client first (its first build takes a while), so the request leaves right
                # after its slot; every attempt is a request to the endpoint, retries included.
                self._client()
                waited = self.limiter.acquire(weight)
                if waited >= 0.1:
                    log.debug("LLM call for %s waited %.2fs for the client-side rate limit", purpose, waited)
            outcome = self._attempt(system, user, schema)
            if isinstance(outcome, _Fatal):
                message = f"LLM call for {purpose} failed: {outcome.message}; the {purpose} batch stays pending"
                log.error("%s", message)
                raise LLMError(message, record(False, outcome.message), retryable=False)
            usage += outcome.usage
            if outcome.value is not None:
                return LLMResult(outcome.value, record(True))
            failure = outcome.failure or _Failure("no answer")
            if attempt == max_attempts:
                break
            delay = self._delay(attempt, failure.retry_after_s)
            log.warning(
                "LLM call for %s, attempt %d of %d: %s; retrying in %.2fs",
                purpose,
                attempt,
                max_attempts,
                failure.problem,
                delay,
            )
            if self.limiter is not None and failure.throttled:
                # Every caller waits it out, this one included (in its next acquire): no storm of retries.
                self.limiter.pause(delay)
            else:
                self._sleep(delay)

        message = (
            f"LLM call for {purpose} failed after {attempts} attempt(s): {failure.problem}; "
            f"the {purpose} batch stays pending and is retried later"
        )
        log.warning("%s", message)
        raise LLMError(message, record(False, failure.problem), retryable=True)

    def _attempt(self, system: str, user: str, schema: type[T]) -> _Outcome[T] | _Fatal:
        import openai

        s = self._settings
        try:
            completion = self._create(system, user)
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status in RETRYABLE_STATUSES or status >= 500:
                problem = f"HTTP {status}: {self._reason(exc)}"
                return _Outcome(failure=_Failure(problem, _retry_after(exc), throttled=status == 429))
            return _Fatal(self._explain_status(exc))
        except openai.APITimeoutError:
            return _Outcome(failure=_Failure(f"no answer within {s.timeout_s:g}s (LIGHTMEM_LLM_TIMEOUT_S)"))
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            reason = self._redact(str(cause)) or type(cause).__name__
            return _Outcome(failure=_Failure(f"cannot reach {_without_userinfo(s.base_url or '')}: {reason}"))
        except openai.APIError as exc:  # e.g. a proxy's HTML page where JSON was due
            return _Outcome(failure=_Failure(f"unusable response: {self._redact(exc.message)[:300]}"))
        usage = _usage_of(completion.usage)
        choice = completion.choices[0] if completion.choices else None
        content = (choice.message.content or "").strip() if choice else ""
        if not content:
            return _Outcome(usage=usage, failure=_Failure("the answer was blank"))
        try:
            data = json.loads(_strip_fences(content))
        except json.JSONDecodeError as exc:
            truncated = choice is not None and choice.finish_reason == "length"
            hint = f" (cut off at LIGHTMEM_LLM_MAX_OUTPUT_TOKENS={s.max_output_tokens})" if truncated else ""
            return _Outcome(usage=usage, failure=_Failure(f"the answer is not valid JSON{hint}: {exc.msg}"))
        try:
            return _Outcome(usage=usage, value=schema.model_validate(data))
        except ValidationError as exc:
            return _Outcome(usage=usage, failure=_Failure(f"the JSON does not fit {schema.__name__}: {_brief(exc)}"))

    def _create(self, system: str, user: str) -> ChatCompletion:
        from openai import Omit

        s = self._settings
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        sends_authorization = s.api_key is not None and (s.auth_header or "").lower() == "authorization"
        extra_body: dict[str, object] = {}
        if s.provider == "deepseek":
            # DeepSeek's newer models think by default: slower and pricier, and no better at extraction.
            extra_body["thinking"] = {"type": "disabled"}
        # OpenAI's newer models reject max_tokens; the compatible APIs mostly know only max_tokens.
        limit = {"max_completion_tokens" if s.provider == "openai" else "max_tokens": s.max_output_tokens}
        return self._client().chat.completions.create(
            model=self.model,
            messages=messages,
            response_format={"type": "json_object"},
            temperature=s.temperature,
            extra_headers=None if sends_authorization else {"Authorization": Omit()},
            extra_body={**limit, **extra_body},
        )

    def _client(self) -> OpenAI:
        with self._sdk_lock:
            if self._sdk is None:
                # Imported here: the openai package takes ~0.5 s to import, and a stdio
                # server must answer `initialize` before anything asks the LLM.
                from openai import OpenAI

                s = self._settings
                headers: dict[str, str] = {}
                if s.api_key is not None and s.auth_header:
                    token = s.api_key.get_secret_value()
                    headers[s.auth_header] = f"{s.auth_scheme} {token}" if s.auth_scheme else token
                self._sdk = OpenAI(
                    api_key=_PLACEHOLDER_KEY,
                    base_url=s.base_url,
                    timeout=s.timeout_s,
                    max_retries=0,
                    default_headers=headers,
                )
            return self._sdk

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), MAX_DELAY_S)
        delay = min(self._settings.retry_base_delay_s * 2.0 ** (attempt - 1), MAX_DELAY_S)
        return delay + random.uniform(0, delay / 10)

    def _explain_status(self, exc: APIStatusError) -> str:
        s = self._settings
        status = exc.status_code
        what = f"HTTP {status}: {self._reason(exc)}"
        if status == 401:
            fix = "check LIGHTMEM_LLM_API_KEY"
            if s.auth_header != "Authorization" or s.auth_scheme != "Bearer":
                fix += (
                    f" and LIGHTMEM_LLM_AUTH_HEADER / LIGHTMEM_LLM_AUTH_SCHEME"
                    f" (now {s.auth_header!r} / {s.auth_scheme!r})"
                )
        elif status == 403:
            fix = f"check that LIGHTMEM_LLM_API_KEY may use model {s.model!r} here (keys can be region-bound)"
        elif status == 404:
            url = _without_userinfo(s.base_url or "")
            fix = f"check LIGHTMEM_LLM_BASE_URL ({url}) and LIGHTMEM_LLM_MODEL ({s.model!r})"
        else:
            fix = (
                f"check LIGHTMEM_LLM_MODEL ({s.model!r}) supports JSON mode and "
                f"LIGHTMEM_LLM_MAX_OUTPUT_TOKENS ({s.max_output_tokens}) is within its limit"
            )
        return f"the LLM API refused the request ({what}): {fix}"

    def _reason(self, exc: APIStatusError) -> str:
        body = exc.body
        message: object = None
        if isinstance(body, dict):
            error: object = body.get("error", body)
            message = error.get("message") if isinstance(error, dict) else error
        text = str(message) if message else (exc.response.reason_phrase or "no message")
        return self._redact(text)[:300]

    def _redact(self, text: str) -> str:
        key = self._settings.api_key
        secret = key.get_secret_value() if key is not None else ""
        return text.replace(secret, "***") if secret else text


@dataclass
class _Outcome(Generic[T]):
    """An attempt that reached the API or failed in a way worth retrying."""

    usage: Usage = field(default_factory=Usage)
    value: T | None = None
    failure: _Failure | None = None


@dataclass
class _Fatal:
    """An attempt that no retry can fix."""

    message: str


def _usage_of(usage: CompletionUsage | None) -> Usage:
    if usage is None:
        return Usage()
    extra: dict[str, Any] = usage.model_extra or {}
    # DeepSeek reports cache hits as prompt_cache_hit_tokens, OpenAI under prompt_tokens_details.
    cached = extra.get("prompt_cache_hit_tokens")
    if not isinstance(cached, int):
        details = usage.prompt_tokens_details
        cached = (details.cached_tokens if details is not None else None) or 0
    return Usage(
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        cached_tokens=cached,
    )


def _retry_after(exc: APIStatusError) -> float | None:
    headers = exc.response.headers
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (when - datetime.now(UTC)).total_seconds()


def _strip_fences(content: str) -> str:
    # Some OpenAI-compatible servers wrap JSON-mode answers in a ```json fence anyway.
    if content.startswith("```"):
        content = content.removeprefix("```json").removeprefix("```").removesuffix("```")
    return content.strip()


def _brief(exc: ValidationError) -> str:
    # Field paths and messages only: the input values are the user's conversation.
    problems = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:3]]
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (+{more} more)" if more > 0 else "")


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
