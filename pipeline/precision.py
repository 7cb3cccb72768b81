"""Mixed precision for inference: one autocast helper for every encoder."""
from __future__ import annotations

import contextlib

import torch


def autocast(device: str, precision: str):
    """bf16 autocast on CUDA when ``precision == "bf16"``; a no-op context otherwise."""
    if precision == "bf16" and str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
