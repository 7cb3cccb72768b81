"""Run-time policies decided once (pipeline.runtime): device and precision "auto", the autocast
context that goes with a precision, the default text encoder."""
from __future__ import annotations

import contextlib

import torch

from pipeline import runtime


def test_auto_precision_is_bf16_on_cuda_only():
    assert runtime.resolve_precision("auto", "cuda") == "bf16"
    assert runtime.resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    assert runtime.resolve_precision("fp32", "cuda") == "fp32"
    assert runtime.resolve_precision("bf16", "cpu") == "bf16"


def test_autocast_follows_the_precision():
    cpu = torch.device("cpu")
    assert isinstance(runtime.autocast(cpu, "auto"), contextlib.nullcontext)
    assert isinstance(runtime.autocast(cpu, "fp32"), contextlib.nullcontext)
    x = torch.ones(2, 2)
    with runtime.autocast(cpu, "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    assert (x @ x).dtype == torch.float32


def test_the_device_and_the_default_encoder_follow_the_gpu(monkeypatch):
    from pipeline import packaged
    monkeypatch.setattr(packaged, "best_available_text_encoder",
                        lambda gpu: "mpnet-base" if gpu else "minilm-l6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == "cpu" and runtime.resolve_device("cuda:1") == "cuda:1"
    assert runtime.default_text_encoder("cuda") == "minilm-l6"    # asked for, but not there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == "cuda"
    assert runtime.default_text_encoder("auto") == "mpnet-base"
    assert runtime.default_text_encoder("cpu") == "minilm-l6"
