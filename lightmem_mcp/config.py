"""Configuration: one settings class per concern, from `LIGHTMEM_…` env vars and an optional TOML file.

Precedence, highest first: environment variables, the TOML file given with `--config`,
the defaults below. Every problem is reported at start with the env var that fixes it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lightmem_mcp.errors import ConfigError

Device = Literal["auto", "cpu", "cuda", "npu", "mps"]
SearchMode = Literal["hybrid", "dense", "sparse"]


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/lightmem-mcp`, i.e. `~/.local/share/lightmem-mcp` by default."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "lightmem-mcp"


class StoreSettings(BaseSettings):
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


class EmbeddingSettings(BaseSettings):
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


class SearchSettings(BaseSettings):
    """How search ranks: dense and lexical candidates fused."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_SEARCH_", extra="forbid")

    mode: SearchMode = Field(default="hybrid", description="hybrid, dense or sparse.")
    rrf_k: int = Field(default=60, ge=1, le=1000, description="Reciprocal-rank-fusion constant.")
    dense_weight: float = Field(default=1.0, gt=0, description="Weight of the dense ranking in fusion.")
    sparse_weight: float = Field(default=1.0, gt=0, description="Weight of the lexical ranking in fusion.")
    candidates: int = Field(default=100, ge=1, le=10_000, description="Candidates per ranking before fusion.")


class LimitSettings(BaseSettings):
    """Bounds on what one tool call may ask for."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_", extra="forbid")

    max_message_chars: int = Field(default=32_000, ge=1, description="Longest message content accepted.")
    max_messages_per_call: int = Field(default=200, ge=1, description="Most messages in one add_memory call.")
    max_results: int = Field(default=100, ge=1, le=10_000, description="Largest search / list limit.")
    max_ids_per_call: int = Field(default=1_000, ge=1, description="Most ids in one get / delete call.")


class ServerSettings(BaseSettings):
    """The MCP server process."""

    model_config = SettingsConfigDict(env_prefix="LIGHTMEM_", extra="forbid")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="stderr log level.")
    warmup: bool = Field(
        default=True, description="Load the models and open the store in the background right after start."
    )


class Settings(BaseModel):
    """All settings, one field per concern."""

    store: StoreSettings = Field(default_factory=StoreSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)


_SECTIONS: dict[str, type[BaseSettings]] = {
    "store": StoreSettings,
    "embedding": EmbeddingSettings,
    "search": SearchSettings,
    "limits": LimitSettings,
    "server": ServerSettings,
}


def env_var(section: str, field: str) -> str:
    """The environment variable that sets `field` of `section`."""
    prefix = _SECTIONS[section].model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def load_settings(config_file: Path | None = None) -> Settings:
    """Build the settings from the environment and an optional TOML file, or raise `ConfigError`."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        unknown = sorted(set(file_values) - set(_SECTIONS))
        if unknown:
            raise ConfigError(
                f"config file {config_file}: unknown section(s) {', '.join(unknown)}; "
                f"known sections are {', '.join(_SECTIONS)}"
            )

    sections: dict[str, BaseSettings] = {}
    for name, cls in _SECTIONS.items():
        section_values = file_values.get(name, {})
        if not isinstance(section_values, dict):
            raise ConfigError(f"config file {config_file}: [{name}] must be a table")
        sections[name] = _build_section(name, cls, section_values)
    return Settings.model_validate(sections)


def _build_section(name: str, cls: type[BaseSettings], file_values: dict[str, Any]) -> BaseSettings:
    # Environment beats the file: values the environment sets are layered over the file's.
    try:
        return cls(**{**file_values, **_env_values(cls)})
    except ValidationError as exc:
        raise ConfigError(_explain(name, exc)) from None


def _env_values(cls: type[BaseSettings]) -> dict[str, Any]:
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    values: dict[str, Any] = {}
    for field in cls.model_fields:
        raw = os.environ.get(f"{prefix}{field}".upper())
        if raw is not None:
            values[field] = raw
    return values


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
