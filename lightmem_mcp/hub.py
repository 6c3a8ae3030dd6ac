"""The Hugging Face hub as a model source: what is cached locally, and whether downloads are off."""

from __future__ import annotations

import os


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE forbid downloads (huggingface_hub's spellings)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def cached_snapshot(model_id: str) -> str | None:
    """The local folder of a model already in the Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached, or a broken cache entry: the caller tries its next source
        return None
