"""Secrets never become memories: found and replaced before anything is compressed, embedded, stored
or sent to the LLM, recorded on the record and counted in `stats`; ordinary conversation left alone.

Every key below is fake: made for these tests, in the providers' formats."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from lightmem_mcp.api import Message
from lightmem_mcp.config import PipelineSettings, RedactionSettings, Settings, StoreSettings, load_settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import ConfigError
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import RecordFilter, Scope
from lightmem_mcp.redact import SecretRedactor
from tests.conftest import open_memory
from tests.openai_server import FakeLLMServer, facts_per_message

OPENAI_KEY = "sk-proj-T4kq9ZrW2mX7vB1nC8yL5dF3gH6jK0pQ"
DEEPSEEK_KEY = "sk-5f0c3a9e7b2d4c1f8a6e0b9d3c7f2a41"
AWS_KEY_ID = "AKIAZ7Q4VX2LM9TN3HRC"
AWS_SECRET = "q8Rz3Kx/7VbN2mW5tY9uLp4Hs6Dj1Fg0ZcXaEiOk"
HUAWEI_AK = "HPUAZ6ML3QX9RWT2VBN8"
HUAWEI_SK = "Wq7Xr2Lm9Kp4Tz8Vb3Ns6Yd1Hc5Jf0GgAeQuRiSo"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYXlhIiwiaWF0IjoxNzE2MjM5MDIyfQ."
    "Zk3v9QeL2xR7mT0pW5nB8cY1dH6jF4gK2sA9uE3oI7w"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)

MAYA = Scope("maya")


@pytest.fixture
def redactor() -> SecretRedactor:
    return SecretRedactor(RedactionSettings())


@pytest.mark.parametrize(
    ("text", "secret", "kind"),
    [
        (f"my OpenAI key is {OPENAI_KEY}, keep it", OPENAI_KEY, "sk_api_key"),
        (f"DeepSeek: {DEEPSEEK_KEY}", DEEPSEEK_KEY, "sk_api_key"),
        (f"aws keys {AWS_KEY_ID} and {AWS_SECRET}", AWS_KEY_ID, "aws_access_key_id"),
        (f"aws keys {AWS_KEY_ID} and {AWS_SECRET}", AWS_SECRET, "secret_access_key"),
        (f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", AWS_SECRET, "secret_access_key"),
        (f"HUAWEICLOUD_SDK_AK={HUAWEI_AK}\nHUAWEICLOUD_SDK_SK={HUAWEI_SK}", HUAWEI_AK, "access_key_id"),
        (f"HUAWEICLOUD_SDK_AK={HUAWEI_AK}\nHUAWEICLOUD_SDK_SK={HUAWEI_SK}", HUAWEI_SK, "secret_access_key"),
        (f"our Huawei Cloud AK/SK are {HUAWEI_AK} / {HUAWEI_SK}", HUAWEI_SK, "secret_access_key"),
        (f"curl -H 'Authorization: Bearer {JWT}' https://api.example.com", JWT, "json_web_token"),
        ("curl -H 'Authorization: Bearer 9f8Kq2LmZx7TvW3rNb5Y' https://x", "9f8Kq2LmZx7TvW3rNb5Y", "bearer_token"),
        (
            f"the deploy key:\n{PEM}\nthanks",
            "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
            "private_key",
        ),
        ("DATABASE_URL set, db_password=Tr0ub4dor&3 works", "Tr0ub4dor&3", "password"),
        ('config = {"api_key": "a8F3kLm29QpXz7Vb"}', "a8F3kLm29QpXz7Vb", "credential"),
        (
            "X-Auth-Token: MIIZfQYJKoZIhvcNAQcCoIIZbjCCGWoCAQExDTALBglghk",
            "MIIZfQYJKoZIhvcNAQcCoIIZbjCCGWoCAQExDTALBglghk",
            "credential",
        ),
        ("my wifi password is hunter2.", "hunter2", "password"),
        ("postgres://app:S3cr3tPa55@db.internal:5432/app", "S3cr3tPa55", "basic_auth_credentials"),
        (
            "GitHub token ghp_R8mK2xQ7vL4nT9wZ3bY6cJ1dF5gH0sP2aE8u",
            "ghp_R8mK2xQ7vL4nT9wZ3bY6cJ1dF5gH0sP2aE8u",
            "github_token",
        ),
    ],
)
def test_each_kind_of_secret_is_replaced_by_its_marker(
    redactor: SecretRedactor, text: str, secret: str, kind: str
) -> None:
    redacted = redactor.redact(text)

    assert secret not in redacted.text
    assert f"[REDACTED:{kind}]" in redacted.text
    assert redacted.kinds[kind] >= 1


def test_the_words_around_a_secret_are_kept_and_redacting_twice_changes_nothing(redactor: SecretRedactor) -> None:
    text = f"Please remember my DeepSeek key {DEEPSEEK_KEY} for the staging project.\nmy password is hunter2."

    once = redactor.redact(text)
    twice = redactor.redact(once.text)

    assert once.text == (
        "Please remember my DeepSeek key [REDACTED:sk_api_key] for the staging project.\n"
        "my password is [REDACTED:password]."
    )
    assert once.kinds == {"password": 1, "sk_api_key": 1}
    assert (twice.text, twice.kinds) == (once.text, {})


@pytest.mark.parametrize(
    "text",
    [
        "I adopted a grey cat called Luna from the shelter last Saturday.",
        "The living room is painted #ff8800 with accents in #1e90ff and #FFF.",
        "The bug was fixed in commit 3f2a9c1e5b7d4f6a8c0e2b4d6f8a0c2e4b6d8f0a, see also a1b2c3d.",
        "My order id is 123e4567-e89b-12d3-a456-426614174000, it shipped on Monday.",
        "I learned sk-learn (scikit-learn) last year and the API key rotation policy is 90 days.",
        "My password is expired and the token is valid until Friday; the secret is to start early.",
        "Token: 4096 tokens fit the window. The key: remember to breathe. Daily pass: 5.00 pounds.",
        "Set GOOGLE_APPLICATION_CREDENTIALS=/app/credentials/google.json and password=<your password>.",
        'integrity="sha384-9aIt2nRpC12Uk9gS9baDl411NQApFmC26EwAOH8WgZl5MYYxFfc+NcPb1dKGj7Sk" crossorigin',
        "Flight LH1234 leaves at 07:45 from gate B22; my seat is 14C and the booking code is XK7P2Q.",
    ],
)
def test_ordinary_conversation_is_left_alone(redactor: SecretRedactor, text: str) -> None:
    redacted = redactor.redact(text)

    assert (redacted.text, redacted.kinds) == (text, {})


def test_redaction_can_be_turned_off_and_given_patterns_of_ones_own() -> None:
    text = f"key {OPENAI_KEY}, internal ticket token ACME-7731-ZZ"

    off = SecretRedactor(RedactionSettings(enabled=False)).redact(text)
    own = SecretRedactor(RedactionSettings(patterns=[r"ACME-\d{4}-[A-Z]{2}"])).redact(text)

    assert (off.text, off.kinds) == (text, {})
    assert own.text == "key [REDACTED:sk_api_key], internal ticket token [REDACTED:custom]"


def test_a_bad_pattern_is_refused_at_start_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTMEM_REDACTION_PATTERNS", '["(unclosed"]')
    with pytest.raises(ConfigError, match=r"LIGHTMEM_REDACTION_PATTERNS.*not a Python regular expression"):
        load_settings()
    monkeypatch.setenv("LIGHTMEM_REDACTION_PATTERNS", '["x*"]')
    with pytest.raises(ConfigError, match=r"LIGHTMEM_REDACTION_PATTERNS.*matches the empty string"):
        load_settings()
    monkeypatch.setenv("LIGHTMEM_REDACTION_ENABLED", "false")
    monkeypatch.delenv("LIGHTMEM_REDACTION_PATTERNS")
    assert load_settings().redaction.enabled is False


# -- in the service: nothing downstream ever sees the secret ---------------------------------

SECRETS = (OPENAI_KEY, AWS_KEY_ID, AWS_SECRET)
LEAKY = (
    f"For the deploy script, my OpenAI key is {OPENAI_KEY} and the AWS access key is {AWS_KEY_ID} "
    f"with secret {AWS_SECRET}; the bucket is maya-photos in eu-west-1."
)


@pytest.fixture
def memory(settings: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    configured = settings.model_copy(
        update={"llm": llm_server.settings(), "pipeline": PipelineSettings(buffer_tokens=10_000)}
    )
    service = open_memory(configured, embedder)
    yield service
    service.close()


def test_a_message_with_keys_is_stored_redacted_and_no_output_carries_them(
    memory: Memory, llm_server: FakeLLMServer
) -> None:
    llm_server.script(facts_per_message("Maya said"))
    added = memory.add(
        [
            Message(role="user", content=LEAKY, id="m1"),
            Message(role="assistant", content="Noted, I will use them for the deploy.", id="m2"),
        ],
        MAYA,
    )
    memory.flush(MAYA)

    (request,) = llm_server.requests
    prompt = json.dumps(request.body)
    searched = [
        memory.search(query, MAYA, limit=10).model_dump_json()
        for query in (f"OpenAI key {OPENAI_KEY}", AWS_KEY_ID, AWS_SECRET, "deploy script keys")
    ]
    got = memory.get(added.ids, MAYA)
    listed = memory.list(MAYA, limit=10).model_dump_json()
    stats = memory.stats(MAYA)
    exported = io.StringIO()
    memory.export_records(exported, MAYA)
    stored = [json.dumps(p.payload) for p in memory.store.scan(RecordFilter(MAYA.user_id))]

    outputs = [prompt, *searched, got.model_dump_json(), listed, stats.model_dump_json(), exported.getvalue(), *stored]
    for secret in SECRETS:
        assert not [out for out in outputs if secret in out], secret
    turn = next(r for r in got.records if r.source_ids == ["m1"])
    assert turn.original_text == turn.text  # the original words carry the redaction too
    assert "my OpenAI key is [REDACTED:sk_api_key] and the AWS access key is [REDACTED:aws_access_key_id]" in turn.text
    assert "[REDACTED:sk_api_key]" in prompt  # the LLM saw the marker, never the key
    fact = memory.search("deploy script OpenAI key", MAYA, limit=10).hits
    assert any(hit.kind == "fact" and "[REDACTED:secret_access_key]" in hit.text for hit in fact)


def test_the_record_and_stats_say_what_was_redacted(memory: Memory) -> None:
    memory.add(
        [
            Message(role="user", content=LEAKY, id="m1"),
            Message(role="user", content=f"and the DeepSeek one is {DEEPSEEK_KEY}", id="m2"),
            Message(role="user", content="The bucket holds last summer's photos.", id="m3"),
        ],
        MAYA,
    )

    turns = memory.store.scan(RecordFilter("maya", kinds=("turn",)))
    payloads = {cast(list[str], p.payload["source_ids"])[0]: p.payload for p in turns}
    stats = memory.stats(MAYA).redactions

    assert payloads["m1"]["redactions"] == {"aws_access_key_id": 1, "secret_access_key": 1, "sk_api_key": 1}
    assert payloads["m2"]["redactions"] == {"sk_api_key": 1}
    assert payloads["m3"]["redactions"] == {}
    assert (stats.turns, stats.secrets) == (2, 4)
    assert stats.by_kind == {"aws_access_key_id": 1, "secret_access_key": 1, "sk_api_key": 2}


def test_with_redaction_off_the_message_is_kept_as_sent(
    settings: Settings, embedder: SentenceTransformerEmbedder
) -> None:
    memory = open_memory(settings.model_copy(update={"redaction": RedactionSettings(enabled=False)}), embedder)
    try:
        added = memory.add([Message(role="user", content=LEAKY, id="m1")], MAYA)
        (record,) = memory.get(added.ids, MAYA).records
        assert record.original_text == LEAKY
        assert memory.stats(MAYA).redactions.secrets == 0
    finally:
        memory.close()


def test_a_pattern_of_ones_own_may_redact_only_its_secret_group() -> None:
    own = SecretRedactor(RedactionSettings(patterns=[r"vault pin (?P<secret>\d{6})"]))

    assert own.redact("the vault pin 482913 opens it").text == "the vault pin [REDACTED:custom] opens it"


def test_an_export_written_before_redaction_is_redacted_on_import(
    settings: Settings, embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    unredacted = settings.model_copy(update={"redaction": RedactionSettings(enabled=False)})
    old = open_memory(unredacted, embedder)
    try:
        old.add([Message(role="user", content=LEAKY, id="m1")], MAYA)
        exported = io.StringIO()
        old.export_records(exported, MAYA, vectors=True)
    finally:
        old.close()
    assert OPENAI_KEY in exported.getvalue()

    fresh = settings.model_copy(update={"store": StoreSettings(data_dir=tmp_path / "fresh")})
    memory = open_memory(fresh, embedder)
    try:
        memory.import_records(io.StringIO(exported.getvalue()))
        stored = [json.dumps(p.payload) for p in memory.store.scan(RecordFilter(MAYA.user_id))]
        found = memory.search("OpenAI key AWS access key", MAYA).model_dump_json()
        assert memory.stats(MAYA).redactions.secrets == 3
    finally:
        memory.close()
    for secret in SECRETS:
        assert not [out for out in [*stored, found] if secret in out], secret
