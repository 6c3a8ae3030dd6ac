"""Settings from defaults, env vars and a TOML file, with errors a user can act on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lightmem_mcp.config import Settings, env_var, load_settings
from lightmem_mcp.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("LIGHTMEM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)


def test_defaults_are_the_embedded_store_under_the_xdg_data_dir(tmp_path: Path) -> None:
    settings = load_settings()

    assert settings.store.data_dir == tmp_path / "home" / ".local" / "share" / "lightmem-mcp"
    assert settings.store.embedded_path == settings.store.data_dir / "qdrant"
    assert settings.store.qdrant_url is None
    assert settings.embedding.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert settings.embedding.device == "auto"
    assert settings.search.mode == "hybrid"


def test_xdg_data_home_moves_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))

    assert load_settings().store.data_dir == tmp_path / "xdg" / "lightmem-mcp"


def test_env_vars_set_each_concern(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTMEM_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("LIGHTMEM_QDRANT_GRPC", "true")
    monkeypatch.setenv("LIGHTMEM_EMBEDDING_DEVICE", "cpu")
    monkeypatch.setenv("LIGHTMEM_SEARCH_RRF_K", "20")
    monkeypatch.setenv("LIGHTMEM_MAX_RESULTS", "50")

    settings = load_settings()

    assert settings.store.qdrant_url == "http://qdrant:6333"
    assert settings.store.qdrant_grpc is True
    assert settings.embedding.device == "cpu"
    assert settings.search.rrf_k == 20
    assert settings.limits.max_results == 50


def test_toml_file_sets_values_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "lightmem.toml"
    config.write_text('[search]\nrrf_k = 10\nmode = "dense"\n[limits]\nmax_results = 30\n')
    monkeypatch.setenv("LIGHTMEM_SEARCH_MODE", "sparse")

    settings = load_settings(config)

    assert settings.search.rrf_k == 10
    assert settings.search.mode == "sparse"
    assert settings.limits.max_results == 30


def test_url_and_path_together_are_refused_with_both_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTMEM_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("LIGHTMEM_QDRANT_PATH", str(tmp_path))

    with pytest.raises(ConfigError, match=r"LIGHTMEM_QDRANT_URL.*LIGHTMEM_QDRANT_PATH.*not both"):
        load_settings()


def test_a_bad_value_names_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTMEM_EMBEDDING_DEVICE", "tpu")

    with pytest.raises(ConfigError, match="LIGHTMEM_EMBEDDING_DEVICE"):
        load_settings()


def test_unknown_keys_and_sections_in_the_file_are_refused(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text("[search]\nrrf_kk = 10\n")
    with pytest.raises(ConfigError, match=r"\[search\] rrf_kk.*unknown setting"):
        load_settings(typo)

    section = tmp_path / "section.toml"
    section.write_text("[serch]\nrrf_k = 10\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_settings(section)


def test_the_command_exits_with_the_message_on_bad_config(tmp_path: Path) -> None:
    env = {"LIGHTMEM_QDRANT_URL": "http://x:6333", "LIGHTMEM_QDRANT_PATH": str(tmp_path), "PATH": ""}

    done = subprocess.run(
        [sys.executable, "-m", "lightmem_mcp"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 2
    assert "not both" in done.stderr
    assert done.stdout == ""


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")

    missing = [
        env_var(section, name)
        for section, model in Settings.model_fields.items()
        for name in model.annotation.model_fields  # type: ignore[union-attr]
        if f"`{env_var(section, name)}`" not in readme
    ]
    assert missing == []


def test_list_settings_take_json_from_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTMEM_PIPELINE_ATTENTION_LAYERS", "[-2, -1]")
    monkeypatch.setenv("LIGHTMEM_COMPRESSION_FORCE_TOKENS", '["?", "!"]')
    settings = load_settings()
    assert settings.pipeline.attention_layers == [-2, -1]
    assert settings.compression.force_tokens == ["?", "!"]
    monkeypatch.setenv("LIGHTMEM_PIPELINE_ATTENTION_LAYERS", "[-2,")
    with pytest.raises(ConfigError, match="LIGHTMEM_PIPELINE_ATTENTION_LAYERS"):
        load_settings()
