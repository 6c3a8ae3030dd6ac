"""Which accelerator to run models on: cuda, then an Ascend npu, then Apple mps, then the cpu."""

from __future__ import annotations

import logging

from lightmem_mcp.config import Device

log = logging.getLogger(__name__)


def npu_available() -> bool:
    """True when `torch_npu` imports and reports a usable Ascend device."""
    try:
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)

        return bool(torch.npu.is_available())  # type: ignore[attr-defined]
    except (ImportError, OSError, RuntimeError, AttributeError):
        return False


def resolve_device(requested: Device) -> str:
    """The torch device string for a configured device; `auto` picks the best available."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if npu_available():
            return "npu"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("LIGHTMEM_*_DEVICE=cuda but torch sees no CUDA device; use auto or cpu")
    if requested == "npu" and not npu_available():
        raise RuntimeError("LIGHTMEM_*_DEVICE=npu but torch_npu is missing or sees no Ascend device")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("LIGHTMEM_*_DEVICE=mps but torch sees no Apple MPS device; use auto or cpu")
    return requested
