"""Configuration: one settings class per concern, from `LIGHTMEM_…` env vars and an optional TOML file.

Precedence, highest first: environment variables, the TOML file given with `--config`,
the defaults below. Every problem is reported at start with the env var that fixes it.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, Field, SecretStr, ValidationError, create_model, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from lightmem_mcp.errors import ConfigError
from lightmem_mcp.presets import DEFAULT_PRICES, LLM_PRESETS, ModelPrice

Device = Literal["auto", "cpu", "cuda", "npu", "mps"]
SearchMode = Literal["hybrid", "dense", "sparse"]
FusionMethod = Literal["minmax", "rrf", "dbsf"]
LLMProvider = Literal["none", "deepseek", "huawei-maas", "pangu", "openai", "openai-compatible"]


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/lightmem-mcp`, i.e. `~/.local/share/lightmem-mcp` by default."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "lightmem-mcp"


class _Section(BaseSettings):
    """Base of the settings classes: `LIGHTMEM_…` env vars over the class's table of a TOML file over defaults."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The default sources, then the TOML table the class config names (none outside `load_settings`)."""
        toml_settings = TomlConfigSettingsSource(settings_cls)
        return init_settings, env_settings, dotenv_settings, file_secret_settings, toml_settings

    @classmethod
    def _from_table(cls, config_file: Path, table: str) -> Self:
        # The TOML source finds its file in the class config, and the file is known only at run
        # time: a subclass made for this call carries it, so no state outlives the call.
        reader = create_model(
            cls.__name__,
            __base__=cls,
            __module__=cls.__module__,
            __config__=SettingsConfigDict(toml_file=config_file, toml_table_header=(table,)),
        )
        read = reader()
        # An instance of the class itself, so it equals and pickles like a section built directly.
        return cls.model_construct(read.model_fields_set, **dict(read))


class StoreSettings(_Section):
    """Where memories live: the embedded Qdrant Edge store, or a Qdrant server / cluster."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_", extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir, description="Root of all local data.")
    qdrant_path: Path | None = Field(default=None, description="Embedded store directory; default `<data_dir>/qdrant`.")
    qdrant_url: str | None = Field(
        default=None, description="Qdrant server URL; when set, the embedded store is not used."
    )
    qdrant_api_key: SecretStr | None = Field(default=None, description="Qdrant server API key.")
    qdrant_grpc: bool = Field(default=False, description="Talk gRPC (port 6334) to the Qdrant server.")
    collection: str = Field(default="lightmem", min_length=1, description="Collection name.")

    @model_validator(mode="after")
    def _one_backend(self) -> StoreSettings:
        if self.qdrant_url and self.qdrant_path:
            raise ValueError(
                "both LIGHTMEM_QDRANT_URL and LIGHTMEM_QDRANT_PATH are set: set LIGHTMEM_QDRANT_URL "
                "for a Qdrant server or LIGHTMEM_QDRANT_PATH for the embedded store, not both"
            )
        if self.qdrant_api_key and not self.qdrant_url:
            raise ValueError(
                "LIGHTMEM_QDRANT_API_KEY is set but LIGHTMEM_QDRANT_URL is not: the key is only "
                "used with a Qdrant server; set the URL or remove the key"
            )
        return self

    @property
    def embedded_path(self) -> Path:
        """Directory of the embedded store."""
        return self.qdrant_path or self.data_dir / "qdrant"


class EmbeddingSettings(_Section):
    """The dense embedding model."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_EMBEDDING_", extra="forbid")

    model: str = Field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        min_length=1,
        description="sentence-transformers model id.",
    )
    path: Path | None = Field(
        default=None, description="Local model folder (e.g. synced from object storage); wins over `model`."
    )
    device: Device = Field(default="auto", description="auto = cuda, then npu, then mps, then cpu.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Texts per encoding batch.")
    allow_download: bool = Field(
        default=True, description="Fetch the model from the Hugging Face hub when no local copy is found."
    )

    @model_validator(mode="after")
    def _path_exists(self) -> EmbeddingSettings:
        if self.path is not None and not self.path.is_dir():
            raise ValueError(
                f"LIGHTMEM_EMBEDDING_PATH={self.path} is not a directory: point it at a "
                "sentence-transformers model folder or unset it"
            )
        return self


class SearchSettings(_Section):
    """How search ranks: dense and lexical candidates fused."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_SEARCH_", extra="forbid")

    mode: SearchMode = Field(default="hybrid", description="hybrid, dense or sparse.")
    fusion: FusionMethod = Field(
        default="rrf",
        description="How hybrid search fuses its two rankings for a query that names no speaker of the memories: "
        "rrf (weighted reciprocal rank), minmax (each ranking's scores scaled to 0..1, then a weighted sum) or "
        "dbsf (mean ± 3 sd scaling, then a weighted sum).",
    )
    rrf_k: int = Field(default=30, ge=1, le=1000, description="Reciprocal-rank-fusion constant (fusion rrf).")
    dense_weight: float = Field(default=1.0, gt=0, description="Weight of the dense ranking in fusion.")
    sparse_weight: float = Field(
        default=0.5, gt=0, description="Weight of the lexical ranking, for a query that names no speaker."
    )
    named_fusion: FusionMethod = Field(
        default="minmax",
        description="The fusion for a query that names someone who speaks in the memories searched "
        '("When did Caroline ..."): names are matched by the lexical ranking, not by the dense one.',
    )
    named_sparse_weight: float = Field(
        default=1.5, gt=0, description="Weight of the lexical ranking, for a query that names a speaker."
    )
    candidates: int = Field(default=100, ge=1, le=10_000, description="Candidates per ranking before fusion.")
    session_gap_minutes: float = Field(
        default=30.0,
        gt=0,
        description="Turns of one scope further apart than this start a new session: the turns a turn is "
        "indexed with, and a hit's context window, stop there (records with a session_id also stop at it).",
    )


class LimitSettings(_Section):
    """Bounds on what one tool call may ask for."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_", extra="forbid")

    max_message_chars: int = Field(default=32_000, ge=1, description="Longest message content accepted.")
    max_messages_per_call: int = Field(default=200, ge=1, description="Most messages in one add_memory call.")
    max_results: int = Field(default=100, ge=1, le=10_000, description="Largest search / list limit.")
    max_ids_per_call: int = Field(default=1_000, ge=1, description="Most ids in one get / delete call.")


class ServerSettings(_Section):
    """The MCP server process."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_", extra="forbid")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="stderr log level.")
    warmup: bool = Field(
        default=True, description="Load the models and open the store in the background right after start."
    )
    projects: bool = Field(
        default=True,
        description="Stdio sessions belong to a project, from the client's roots or the working directory "
        "(see the README's scope model); false: every session reads and writes the user's whole memory.",
    )


class SharedSettings(_Section):
    """Several stdio servers on one embedded store: the first owns it, the others forward to it."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_SHARED_", extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Stdio servers on one embedded store share it through one owner; false: the store is "
        "this process's alone, and a second server on it fails.",
    )
    channel: Literal["auto", "unix", "tcp"] = Field(
        default="auto",
        description="How front doors reach the owner: a Unix socket (auto, where the OS has them) or a loopback "
        "port with a secret in a 0600 file (tcp, e.g. for a data directory where sockets cannot be created).",
    )
    handover_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a call waits for a new owner after the old one went, before failing with a "
        "retryable error.",
    )
    warm_standby: bool = Field(
        default=True,
        description="One front door, the owner's successor, keeps the embedding model loaded (~400 MB), so that "
        "taking the store over when the owner goes takes under a second instead of the model's load time.",
    )


class CompressionSettings(_Section):
    """LLMLingua-2 pre-compression of each stored message (LightMem's sensory memory)."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_COMPRESSION_", extra="forbid")

    enabled: bool = Field(default=True, description="Compress messages before extraction and indexing.")
    model: str = Field(
        default="microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank",
        min_length=1,
        description="LLMLingua-2 model id on the Hugging Face hub.",
    )
    path: Path | None = Field(
        default=None, description="Local folder of the LLMLingua-2 model (e.g. synced from object storage)."
    )
    rate: float = Field(default=0.8, gt=0, le=1, description="Share of tokens kept.")
    force_tokens: list[str] = Field(
        default_factory=lambda: ["\n", "?"],
        description="Tokens always kept (JSON list in the env var).",
    )
    min_tokens: int = Field(default=16, ge=0, description="Messages shorter than this are stored as they are.")
    device: Device = Field(default="auto", description="auto = cuda, then npu, then mps, then cpu.")
    quantize: Literal["auto", "int8", "off"] = Field(
        default="auto",
        description=(
            "On the CPU, compress with an int8 copy of the model's linear layers (about 2.5x fp32's turns/s, "
            "about 99% of keep/drop choices unchanged): auto = on x86 CPUs, int8 = on any CPU, off = fp32; "
            "other devices always use fp32."
        ),
    )
    threads: int = Field(
        default=0,
        ge=0,
        description=(
            "CPU threads of each compression pass; 0 = one fewer than the cores (at least 1), leaving one for search."
        ),
    )
    allow_download: bool = Field(
        default=True, description="Fetch the model from the Hugging Face hub when no local copy is found."
    )
    tokenizer: str = Field(
        default="cl100k_base", description="tiktoken encoding used to count tokens for the target LLM."
    )


class LLMSettings(_Section):
    """The LLM that extracts facts: any OpenAI-compatible chat API."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_LLM_", extra="forbid")

    provider: LLMProvider = Field(default="none", description="none turns extraction off.")
    base_url: str | None = Field(default=None, description="API base URL; presets fill it in.")
    api_key: SecretStr | None = Field(default=None, description="API key (or IAM token / AppCode for pangu).")
    model: str | None = Field(default=None, description="Model id; presets fill in a default where one exists.")
    auth_header: str | None = Field(
        default=None, description="Header carrying the key; presets: Authorization (pangu: X-Auth-Token)."
    )
    auth_scheme: str | None = Field(
        default=None, description="Prefix before the key in that header; presets: Bearer (pangu: none)."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(default=4, ge=0, le=20, description="Retries on 429 / 5xx / timeouts / bad JSON.")
    retry_base_delay_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles each retry.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature for extraction.")
    max_output_tokens: int = Field(default=4096, ge=64, description="Most tokens one answer may use.")
    requests_per_minute: int = Field(
        default=0,
        ge=0,
        description="Most requests a minute to the endpoint, spread evenly (one every 60/N s), retries "
        "included; 0 = no limit.",
    )
    tokens_per_minute: int = Field(
        default=0,
        ge=0,
        description="Most tokens in any minute, counted before each request: the prompt and a quarter of it "
        "(at most max_output_tokens) for the answer; a bigger call waits for a whole free minute; 0 = no limit.",
    )

    @model_validator(mode="after")
    def _complete(self) -> LLMSettings:
        if self.provider == "none":
            return self
        preset = LLM_PRESETS[self.provider]
        self.base_url = self.base_url or preset.base_url
        self.model = self.model or preset.model
        self.auth_header = self.auth_header or preset.auth_header
        self.auth_scheme = preset.auth_scheme if self.auth_scheme is None else self.auth_scheme
        missing = [
            env
            for env, value in (
                ("LIGHTMEM_LLM_BASE_URL", self.base_url),
                ("LIGHTMEM_LLM_MODEL", self.model),
                ("LIGHTMEM_LLM_API_KEY", self.api_key or not preset.needs_key or None),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                f"LIGHTMEM_LLM_PROVIDER={self.provider} also needs {', '.join(missing)}"
                + (f" ({preset.hint})" if preset.hint else "")
            )
        return self


class PipelineSettings(_Section):
    """Short-term buffer, topic segmentation and batched extraction."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_PIPELINE_", extra="forbid")

    buffer_tokens: int = Field(default=512, ge=16, description="Pending tokens that trigger segmentation + extraction.")
    messages_use: Literal["user_only", "assistant_only", "hybrid"] = Field(
        default="user_only", description="Which messages facts are extracted from."
    )
    attention_layers: list[int] = Field(
        default_factory=lambda: [-4, -3, -2, -1], description="Encoder layers averaged for coarse topic boundaries."
    )
    similarity_start: float = Field(default=0.2, ge=-1, le=1, description="First fine-boundary similarity threshold.")
    similarity_stop: float = Field(default=0.5, ge=-1, le=1, description="Last fine-boundary similarity threshold.")
    similarity_step: float = Field(default=0.05, gt=0, le=1, description="Threshold increment.")
    boundary_window: int = Field(
        default=3, ge=0, description="Fine boundaries are kept within this many turns of a coarse one."
    )


class ConsolidationSettings(_Section):
    """Sleep-time update: newer facts update or supersede the older facts they are most like."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_CONSOLIDATION_", extra="forbid")

    top_k: int = Field(default=20, ge=1, le=200, description="Older facts retrieved per newer fact.")
    keep_top_n: int = Field(default=10, ge=1, le=200, description="Newer facts kept per older fact (best first).")
    score_threshold: float = Field(
        default=0.8, ge=-1, le=1, description="Least cosine similarity for a newer fact to update an older one."
    )
    targets_per_call: int = Field(
        default=8, ge=1, le=64, description="Older facts decided in one LLM call (1: one call per fact)."
    )


class SummarySettings(_Section):
    """Summaries of a session, a time window or a topic."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_SUMMARY_", extra="forbid")

    max_tokens: int = Field(default=300, ge=32, le=4000, description="Length budget of one summary.")
    max_entries: int = Field(
        default=200, ge=1, le=5000, description="Most memories read per window (the newest are kept)."
    )
    seeds: int = Field(
        default=5, ge=0, le=50, description="Related earlier memories given as context (cross-event seeds)."
    )


class SleepSettings(_Section):
    """The optional sleep-time schedule: consolidate and summarize in the background."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_SLEEP_", extra="forbid")

    interval_minutes: float = Field(default=0, ge=0, description="Run every this many minutes; 0 turns it off.")
    after_facts: int = Field(default=0, ge=0, description="Also run for a scope after this many new facts; 0: off.")
    summarize: bool = Field(default=True, description="Also summarize each day with new facts.")
    purge_interval_minutes: float = Field(
        default=60,
        ge=0,
        description="Delete expired memories every this many minutes, with or without an LLM or the schedule "
        "above; 0: only in the scheduled runs.",
    )


class BudgetSettings(_Section):
    """Daily LLM token budgets: once one is spent, extraction and sleep-time work wait for the next day (UTC)."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_BUDGET_", extra="forbid")

    user_tokens_per_day: int = Field(
        default=0,
        ge=0,
        description="LLM tokens (prompt + completion) one user (over HTTP: a tenant) may spend per UTC day; 0: none.",
    )
    tokens_per_day: int = Field(
        default=0, ge=0, description="LLM tokens this server may spend per UTC day, every user together; 0: no limit."
    )


class PriceSettings(_Section):
    """Prices per 1M tokens for the `stats` tool's cost estimates."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_PRICE_", extra="forbid")

    # NoDecode: the validator below parses the env var's JSON, with an error naming the variable.
    table: Annotated[dict[str, ModelPrice], NoDecode] = Field(
        default_factory=dict,
        description="Prices by `<provider>/<model>` (or `<model>` for any provider), over the built-in table.",
    )
    currency: str = Field(
        default="USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 currency of table entries that name none."
    )

    @field_validator("table", mode="before")
    @classmethod
    def _json_table(cls, value: object) -> object:
        # An env var holds the table as JSON text; the TOML file gives a table directly.
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"not JSON ({exc.msg}); write e.g. "
                '{"deepseek/deepseek-flash": {"input_cache_miss": 0.3, "input_cache_hit": 0.006, "output": 1.2}}'
            ) from None

    @field_validator("table", mode="after")
    @classmethod
    def _distinct_keys(cls, table: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        seen: dict[str, str] = {}
        for key in table:
            if not key.strip() or key != key.strip():
                raise ValueError(f"key {key!r}: use `<provider>/<model>` or `<model>`, without surrounding blanks")
            if key.lower() in seen:
                raise ValueError(f"keys {seen[key.lower()]!r} and {key!r} differ only in case (lookups ignore case)")
            seen[key.lower()] = key
        return table

    def price_of(self, provider: str, model: str) -> tuple[ModelPrice, str] | None:
        """The price of `model` at `provider` and its currency: own table first, then the built-in one."""
        for table in (self.table, DEFAULT_PRICES):
            lowered = {key.lower(): price for key, price in table.items()}
            for key in (f"{provider}/{model}".lower(), model.lower()):
                if key in lowered:
                    price = lowered[key]
                    return price, price.currency or self.currency
        return None


AuthMode = Literal["tokens", "jwt", "none"]


def _listed(value: object) -> object:
    """A list given as text (an env var): JSON (`["a", "b"]`) or comma-separated (`a,b`)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc.msg}); or write the items comma-separated") from None
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_url(name: str, url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError(f"{name}={url!r} is not an http:// or https:// URL")


class HttpSettings(_Section):
    """Serving over streamable HTTP or SSE (`lightmem-mcp serve --transport http|sse`)."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_HTTP_", extra="forbid")

    host: str = Field(default="127.0.0.1", min_length=1, description="Address to bind; 0.0.0.0 for all interfaces.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to bind.")
    public_url: str | None = Field(
        default=None, description="Base URL clients use (behind a load balancer); default http://<host>:<port>."
    )
    # NoDecode: `_listed` reads JSON or comma-separated text, with an error naming the variable.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host headers accepted besides the bound address, localhost and public_url's host.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origin headers accepted besides localhost and public_url."
    )
    dns_rebinding_protection: bool = Field(default=True, description="Refuse requests whose Host / Origin is unknown.")
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest request body; a larger one gets 413."
    )
    shutdown_timeout_s: float = Field(
        default=25.0, ge=0, description="On SIGTERM, how long in-flight calls get to finish."
    )

    _lists = field_validator("allowed_hosts", "allowed_origins", mode="before")(_listed)

    @model_validator(mode="after")
    def _urls(self) -> HttpSettings:
        _check_url("LIGHTMEM_HTTP_PUBLIC_URL", self.public_url)
        return self


class AuthSettings(_Section):
    """Who may call the HTTP transports, and which tenant each caller acts for."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_AUTH_", extra="forbid")

    mode: AuthMode = Field(default="tokens", description="tokens, jwt, or none (local use only).")
    tokens_file: Path | None = Field(default=None, description="JSON lines of hashed tokens, tenants and scopes.")
    tokens: SecretStr | None = Field(default=None, description="The same JSON lines, in the env var.")
    jwks_url: str | None = Field(default=None, description="JWKS URL of the identity provider (jwt mode).")
    issuer: str | None = Field(default=None, description="Expected `iss` of tokens (jwt mode).")
    audience: str | None = Field(default=None, description="Expected `aud` of tokens (jwt mode).")
    tenant_claim: str = Field(default="sub", min_length=1, description="JWT claim naming the tenant.")
    scope_prefix: str = Field(default="", description="Prefix of this server's scopes in JWTs, e.g. 'lightmem:'.")
    required_scopes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Scopes every request needs (else HTTP 403)."
    )
    resource_url: str | None = Field(
        default=None, description="Protected resource id in the metadata; default <public_url>/mcp (or /sse)."
    )
    jwks_cache_s: float = Field(default=300.0, gt=0, description="How long fetched signing keys are reused.")

    _lists = field_validator("required_scopes", mode="before")(_listed)

    @model_validator(mode="after")
    def _complete(self) -> AuthSettings:
        if self.mode == "jwt":
            missing = [
                env
                for env, value in (
                    ("LIGHTMEM_AUTH_JWKS_URL", self.jwks_url),
                    ("LIGHTMEM_AUTH_ISSUER", self.issuer),
                    ("LIGHTMEM_AUTH_AUDIENCE", self.audience),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"LIGHTMEM_AUTH_MODE=jwt also needs {', '.join(missing)}")
        _check_url("LIGHTMEM_AUTH_JWKS_URL", self.jwks_url)
        _check_url("LIGHTMEM_AUTH_RESOURCE_URL", self.resource_url)
        return self


class UISettings(_Section):
    """The memory browser: `/ui` of the HTTP server, and `lightmem-mcp ui` on this machine."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_UI_", extra="forbid")

    enabled: bool = Field(default=True, description="Serve the memory browser at /ui of the HTTP server.")
    secret: SecretStr | None = Field(
        default=None,
        description="Signs browser sessions and `ui-link` links; the same on every replica. Default: random per "
        "process (sessions end with it, links need it set).",
    )
    session_hours: float = Field(default=8.0, gt=0, le=720, description="How long a browser session lasts.")
    link_minutes: float = Field(default=10.0, gt=0, le=1440, description="How long a one-time link can be opened.")
    port: int = Field(default=0, ge=0, le=65535, description="Port of `lightmem-mcp ui` on 127.0.0.1; 0: a free one.")


class LeaseSettings(_Section):
    """Leases that let one replica at a time extract (or consolidate) a scope."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_", extra="forbid")

    redis_url: SecretStr | None = Field(
        default=None, description="Redis shared by the replicas, e.g. redis://redis:6379/0; unset: in-process leases."
    )
    lease_ttl_s: float = Field(default=60.0, ge=1, description="Lease lifetime; renewed while the work runs.")


class RedactionSettings(_Section):
    """Secrets (API keys, tokens, passwords, private keys) taken out of messages before they are kept."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_REDACTION_", extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Replace secrets in messages with [REDACTED:<kind>] before they are compressed, "
        "embedded, stored or sent to the LLM.",
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Extra regular expressions for secrets of your own (a JSON list in the env var); "
        "the whole match is redacted, or only its `secret` group when it has one.",
    )

    @field_validator("patterns", mode="after")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for number, pattern in enumerate(patterns, 1):
            if not pattern:
                raise ValueError(f"pattern {number} is empty: it would match everywhere")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {number} {pattern!r} is not a Python regular expression ({exc})") from None
            if compiled.search(""):
                raise ValueError(f"pattern {number} {pattern!r} matches the empty string: it would match everywhere")
        return patterns


class Settings(BaseModel):
    """All settings, one field per concern."""

    store: StoreSettings = Field(default_factory=StoreSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    shared: SharedSettings = Field(default_factory=SharedSettings)
    compression: CompressionSettings = Field(default_factory=CompressionSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    consolidation: ConsolidationSettings = Field(default_factory=ConsolidationSettings)
    summary: SummarySettings = Field(default_factory=SummarySettings)
    sleep: SleepSettings = Field(default_factory=SleepSettings)
    price: PriceSettings = Field(default_factory=PriceSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    ui: UISettings = Field(default_factory=UISettings)
    leases: LeaseSettings = Field(default_factory=LeaseSettings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)


# One TOML section per field of Settings, named like the field.
_SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in Settings.model_fields.items()
}


def env_var(section: str, field: str) -> str:
    """The environment variable that sets `field` of `section`."""
    prefix = _SECTIONS[section].model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def load_settings(config_file: Path | None = None) -> Settings:
    """Build the settings from the environment and an optional TOML file, or raise `ConfigError`."""
    file_values = {} if config_file is None else _read_config(config_file)
    sections: dict[str, _Section] = {}
    for name, cls in _SECTIONS.items():
        if not isinstance(file_values.get(name, {}), dict):
            raise ConfigError(f"config file {config_file}: [{name}] must be a table")
        sections[name] = _build_section(name, cls, config_file if name in file_values else None)
    return Settings.model_validate(sections)


def _read_config(config_file: Path) -> dict[str, Any]:
    # The TOML source skips a missing file and reads only its own table: the file as a whole is checked here.
    try:
        file_values = tomllib.loads(config_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
    if not config_file.is_file():
        # The TOML source skips anything else (a pipe, /dev/stdin): its settings would be dropped silently.
        raise ConfigError(f"config file {config_file} is not a regular file; write the settings to one")
    unknown = sorted(set(file_values) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"config file {config_file}: unknown section(s) {', '.join(unknown)}; "
            f"known sections are {', '.join(_SECTIONS)}"
        )
    return file_values


def _build_section(name: str, cls: type[_Section], config_file: Path | None) -> _Section:
    try:
        # absolute(): the TOML source expands a leading `~`, which the read in `_read_config` did not.
        return cls() if config_file is None else cls._from_table(config_file.absolute(), name)
    except ValidationError as exc:
        raise ConfigError(_explain(name, exc)) from None
    except SettingsError as exc:  # an env var that should hold JSON does not
        field = re.search(r'field "(\w+)"', str(exc))
        where = env_var(name, field.group(1)) if field else f"a [{name}] setting"
        raise ConfigError(f'invalid configuration:\n  {where}: not valid JSON (e.g. [-2, -1] or ["a"])') from None


def _explain(section: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"[{section}] {field} in the config file: unknown setting; see the README's table")
            continue
        if field:
            lines.append(f"{env_var(section, field)} (or [{section}] {field} in the config file): {message}")
        else:
            lines.append(message)
    return "invalid configuration:\n  " + "\n  ".join(lines)
