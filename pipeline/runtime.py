"""Run-time policies, decided in one place: what ``device="auto"`` and ``precision="auto"`` mean,
the mixed-precision context that goes with a precision, and the default text encoder for a device.

Every stage (extract, build-graphs, train, evaluate, predict) asks here instead of deciding again.
"""
from __future__ import annotations

import contextlib

from . import packaged

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch  # imported here: the data-only stages (stats) never load torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; ``bf16`` and ``fp32`` as given."""
    if precision != "auto":
        return precision
    return "bf16" if str(device).startswith("cuda") else "fp32"


def autocast(device, precision: str, cache: bool = True):
    """bf16 autocast on the device's type when ``precision`` resolves to ``bf16``; a no-op context
    otherwise. ``cache=False`` for work captured in a CUDA graph (the weight-cast cache must not
    outlive the capture)."""
    import torch  # imported here: see resolve_device

    kind = "cuda" if str(device).startswith("cuda") else str(device)
    if resolve_precision(precision, device) == "bf16" and kind in ("cuda", "cpu"):
        return torch.autocast(kind, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def uses_gpu(device: str = "auto") -> bool:
    """Whether work asked for on ``device`` will run on a GPU that is there."""
    if not resolve_device(device).startswith("cuda"):
        return False
    import torch  # imported here: see resolve_device
    return torch.cuda.is_available()


def default_text_encoder(device: str = "auto") -> str:
    """``mpnet-base`` when a GPU will be used and MPNet is installed, else ``minilm-l6``
    (``packaged.best_available_text_encoder`` says why)."""
    return packaged.best_available_text_encoder(uses_gpu(device))
