"""Secrets kept out of memory: API keys, tokens, passwords and private keys in a message are replaced
by `[REDACTED:<kind>]` before the message is compressed, embedded, stored or sent to an LLM.

Two sources of findings, merged span by span:
- patterns for the credentials this project meets, which cover the whole secret: OpenAI / DeepSeek
  `sk-…` keys, AWS and Huawei Cloud access keys (AK/SK), bearer tokens, JWTs, PEM and PuTTY private
  keys, `password=`-style assignments, npm tokens, this server's own `lmk_…` tokens;
- the patterns of Yelp's detect-secrets (GitHub, GitLab, Slack, Stripe, PyPI, Azure, Twilio, …
  tokens, credentials in URLs, quoted high-entropy strings), used offline: nothing is verified
  against a provider.

Precision is kept for ordinary conversation: hex strings (colours, git SHAs, hashes) and uuids are
never secrets by their shape alone, a bare 40-character key counts only beside an access key or the
words that name one, and the word after "password is" counts only when it holds a digit or symbol.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from detect_secrets.filters.heuristic import is_potential_uuid, is_sequential_string, is_templated_secret
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

from lightmem_mcp.config import RedactionSettings

MARKER = "[REDACTED:{kind}]"
CUSTOM_KIND = "custom"


@dataclass(frozen=True)
class Redacted:
    """A text with its secrets replaced, and how many secrets of each kind it held."""

    text: str
    kinds: dict[str, int]

    @property
    def count(self) -> int:
        """Secrets replaced."""
        return sum(self.kinds.values())


@dataclass(frozen=True)
class _Rule:
    """One pattern: the `secret` group (else the whole match) is replaced when `accept` approves it
    and, for shapes that mean nothing alone, the text also matches `context`."""

    kind: str
    regex: re.Pattern[str]
    accept: Callable[[str], bool] = lambda value: True
    context: re.Pattern[str] | None = None
    # Characters cut from the end of a match: the full stop after "my password is hunter2." is prose.
    trailing: str = ""


def _classes(value: str) -> int:
    return sum((any(c.islower() for c in value), any(c.isupper() for c in value), any(c.isdigit() for c in value)))


def _credential_like(value: str) -> bool:
    """Letters and digits mixed (or a long run of mixed case): keys are; words, numbers, paths are not."""
    if len(value) < 8 or _PATH.search(value) or _PLACEHOLDER.search(value):
        return False
    letters = sum(c.isalpha() for c in value)
    if _has_digit(value) and letters:
        return True
    return len(value) >= 16 and sum(c.isupper() for c in value) >= 3 and sum(c.islower() for c in value) >= 3


def _all_classes(value: str) -> bool:
    return _classes(value) == 3


def _has_digit(value: str) -> bool:
    return any(c.isdigit() for c in value)


_PLACEHOLDERS = frozenset({"null", "none", "nil", "true", "false", "undefined", "empty"})
# Values that stand for a secret rather than being one: `your-password`, `<token>`, `xxxx`, `****`.
_PLACEHOLDER = re.compile(r"(?i)^(?:your|my)[-_]|^<|example|placeholder|x{4,}|\*{3,}")
# A file that holds the secret (`credentials = ./key.json`) is not the secret.
_PATH = re.compile(
    r"^(?:\.{0,2}/|~/|[A-Za-z]:\\)|\\|\.(?:json|pem|key|crt|cer|p12|pfx|ya?ml|txt|env|ini|cfg|conf|toml)$"
)


def _password_value(value: str) -> bool:
    """Anything after `password=` except a placeholder, a template or a value already masked."""
    return (
        len(value) >= 3
        and value.lower() not in _PLACEHOLDERS
        and len(set(value)) > 1
        and not value.startswith(("$", "%", "<", "{", "[REDACTED"))
        and not _PLACEHOLDER.search(value)
    )


def _spoken_password(value: str) -> bool:
    """After "password is": `hunter2` is a password, `expired` is not."""
    return len(value) >= 4 and any(not c.isalpha() for c in value) and _password_value(value)


_TOKEN_CHARS = r"A-Za-z0-9\-._~+/"
# What may come before a keyword: `db_`, `HUAWEICLOUD_SDK_`, `X-Auth-`, or camelCase (`authToken`, `dbPassword`).
_PREFIX = r"(?<![A-Za-z0-9])(?:[A-Za-z0-9]+[_.-]|[a-z0-9]+(?=[A-Z])|[A-Z][a-z0-9]+(?=[A-Z])){0,4}"
# Words after which a value is a credential.
_KEYWORDS = (
    r"password|passwd|passphrase|passcode|pwd|secret|token|api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|"
    r"secret[_-]?(?:access[_-]?)?key|private[_-]?key|client[_-]?secret|credentials?|app[_-]?code|ak|sk"
)
_KEY_CONTEXT = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:aws|ak|sk|huawei(?:cloud)?|obs|iam|access[ _-]?keys?(?:[ _-]?ids?)?|"
    r"secret[ _-]?(?:access[ _-]?)?keys?)(?![A-Za-z])|AKIA|ASIA"
)

_RULES: tuple[_Rule, ...] = (
    _Rule(
        "private_key",
        re.compile(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.DOTALL,
        ),
    ),
    _Rule("private_key", re.compile(r"PuTTY-User-Key-File-\d+:.*?(?:Private-MAC:[ \t]*[0-9a-fA-F]+|\Z)", re.DOTALL)),
    # OpenAI (sk-…, sk-proj-…), DeepSeek (sk- and 32 hex), Anthropic (sk-ant-…) and other `sk-` keys.
    _Rule("sk_api_key", re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}"), _has_digit),
    _Rule("lightmem_token", re.compile(r"(?<![A-Za-z0-9_])lmk_[A-Za-z0-9_-]{40,}")),
    _Rule("npm_token", re.compile(r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])")),
    _Rule(
        "aws_access_key_id",
        re.compile(r"(?<![A-Za-z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    ),
    _Rule(
        "json_web_token",
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
    ),
    _Rule(
        "bearer_token",
        re.compile(rf"(?i)\bbearer[ \t]+(?P<secret>[{_TOKEN_CHARS}]{{12,}}=*)"),
        _credential_like,
    ),
    _Rule(
        "authorization_header",
        re.compile(
            rf"(?i)\bauthorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:(?:basic|bearer|token|digest|apikey)[ \t]+)?"
            rf"(?P<secret>[{_TOKEN_CHARS}]{{8,}}=*)"
        ),
        _credential_like,
    ),
    # AWS secret keys and Huawei Cloud SKs: 40 characters, meaningful only beside an access key or its name.
    _Rule(
        "secret_access_key",
        re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
        _all_classes,
        _KEY_CONTEXT,
    ),
    # Huawei Cloud AKs: 20 upper-case letters and digits, likewise only where access keys are spoken of.
    _Rule(
        "access_key_id",
        re.compile(r"(?<![A-Za-z0-9])[A-Z0-9]{20}(?![A-Za-z0-9])"),
        lambda value: _has_digit(value) and not value.isdigit(),
        _KEY_CONTEXT,
    ),
    # `password=…`, `"api_key": "…"`, `HUAWEICLOUD_SDK_SK: …`, `X-Auth-Token: …`.
    _Rule(
        "password",
        re.compile(
            rf"{_PREFIX}(?i:password|passwd|passphrase|passcode|pwd)[\"']?"
            r"[ \t]*(?::=|=>|=|:)[ \t]*[\"']?(?P<secret>[^\s\"'`,;]+)"
        ),
        _password_value,
    ),
    _Rule(
        "credential",
        re.compile(
            rf"{_PREFIX}(?i:{_KEYWORDS})[\"']?"
            rf"[ \t]*(?::=|=>|=|:)[ \t]*[\"']?(?P<secret>[{_TOKEN_CHARS}=]+)"
        ),
        _credential_like,
    ),
    # "my password is hunter2."
    _Rule(
        "password",
        re.compile(r"(?i)\bpass(?:word|phrase|code)[ \t]+(?:is|was)[ \t]*:?[ \t]*[\"'“]?(?P<secret>[^\s\"'”]+)"),
        _spoken_password,
        trailing=".,!?;:)",
    ),
)

# detect-secrets' detectors but seven: ArtifactoryDetector (it takes words such as "APACHESPARK" for
# passwords), HexHighEntropyString (git SHAs and hashes), IPPublicDetector (an address is no credential),
# PrivateKeyDetector (a key's first line only: the private_key rule takes the whole key), KeywordDetector
# (the password and credential rules cover its assignments, unquoted ones too, at a fraction of its cost,
# which was more than all the others' together), JwtTokenDetector and NpmDetector (quadratic on crafted
# input, 0.2-0.4 s for one 32,000-character message: the json_web_token and npm_token rules replace them).
_DETECTORS: tuple[RegexBasedDetector, ...] = (
    AWSKeyDetector(),
    AzureStorageKeyDetector(),
    BasicAuthDetector(),
    CloudantDetector(),
    DiscordBotTokenDetector(),
    GitHubTokenDetector(),
    GitLabTokenDetector(),
    IbmCloudIamDetector(),
    IbmCosHmacDetector(),
    MailchimpDetector(),
    OpenAIDetector(),
    PypiTokenDetector(),
    SendGridDetector(),
    SlackDetector(),
    SoftlayerDetector(),
    SquareOAuthDetector(),
    StripeDetector(),
    TelegramBotTokenDetector(),
    TwilioKeyDetector(),
)
# Quoted strings of base64 characters above 4.5 bits of entropy per character: detect-secrets' default.
_ENTROPY = Base64HighEntropyString(limit=4.5)
_HEX = re.compile(r"[0-9a-fA-F]+")
# Subresource-integrity digests (`integrity="sha384-…"`) are public.
_DIGEST = re.compile(r"sha(?:256|384|512)-")


class SecretRedactor:
    """Finds secrets in text and replaces each with `[REDACTED:<kind>]`; idempotent."""

    def __init__(self, settings: RedactionSettings) -> None:
        self.enabled = settings.enabled
        self._rules = _RULES + tuple(_Rule(CUSTOM_KIND, re.compile(p)) for p in settings.patterns)

    def redact(self, text: str) -> Redacted:
        """`text` with every secret found replaced, and the count by kind (empty when none, or disabled)."""
        if not self.enabled:
            return Redacted(text, {})
        spans = _merge([*self._rule_spans(text), *_detector_spans(text)])
        if not spans:
            return Redacted(text, {})
        parts: list[str] = []
        kinds: Counter[str] = Counter()
        cursor = 0
        for start, end, kind in spans:
            parts += [text[cursor:start], MARKER.format(kind=kind)]
            kinds[kind] += 1
            cursor = end
        parts.append(text[cursor:])
        return Redacted("".join(parts), dict(sorted(kinds.items())))

    def _rule_spans(self, text: str) -> Iterator[tuple[int, int, str]]:
        for rule in self._rules:
            if rule.context is not None and not rule.context.search(text):
                continue
            group = "secret" if "secret" in rule.regex.groupindex else 0
            for match in rule.regex.finditer(text):
                start, end = match.span(group)
                while end > start and text[end - 1] in rule.trailing:
                    end -= 1
                if end > start and rule.accept(text[start:end]) and not _is_marker(text, start):
                    yield start, end, rule.kind


def _detector_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """detect-secrets' patterns, matched here rather than through `analyze_string`, which reports values
    without their place, and for some patterns (GitHub's, GitLab's) only the captured prefix (`ghp`)."""
    for detector in _DETECTORS:
        kind = _kind_of(detector)
        for regex in detector.denylist:
            for match in regex.finditer(text):
                start, end = _secret_span(match)
                if _plausible(text[start:end]):
                    yield start, end, kind
    for match in _ENTROPY.regex.finditer(text):
        value = match.group(2)
        entropy = _ENTROPY.calculate_shannon_entropy(value)
        if _plausible(value) and not _DIGEST.match(value) and entropy > _ENTROPY.entropy_limit:
            yield *match.span(2), "high_entropy_string"


def _secret_span(match: re.Match[str]) -> tuple[int, int]:
    """The captured secret where a pattern captures one after its context (`aws…key = "(…)"`,
    `://user:(…)@`), else the whole match: a group that opens the match is a prefix (`(ghp|gho)_…`)."""
    groups = [match.span(i) for i in range(1, match.re.groups + 1) if match.start(i) > match.start()]
    return max(groups, key=lambda span: span[1] - span[0], default=match.span())


def _plausible(value: str) -> bool:
    """detect-secrets' own false-positive filters, and hex (colours, SHAs, hashes) never by shape alone."""
    return (
        len(value) >= 4
        and not value.startswith(("$", "[REDACTED"))
        and not _HEX.fullmatch(value)
        and not is_potential_uuid(value)
        and not is_sequential_string(value)
        and not is_templated_secret(value)
    )


def _kind_of(detector: RegexBasedDetector) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(detector.secret_type).lower()).strip("_")


def _is_marker(text: str, start: int) -> bool:
    return text.startswith("[REDACTED:", start)


def _merge(spans: Sequence[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping findings become one, named by the finding that starts first (the longest on a tie)."""
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(spans, key=lambda s: (s[0], -s[1])):
        if merged and start < merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], end), last[2])
        else:
            merged.append((start, end, kind))
    return merged
