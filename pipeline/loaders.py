"""``load_encoder``: any encoder name (text, CNN or CLIP) to a model ready to run.

It sits above ``encoders`` (names, specs, the sentence encoder) and ``image_encoders`` (CNN and
CLIP models), which imports ``encoders``: one entry point for every kind without a cycle.
"""
from __future__ import annotations

from .encoders import SentenceEncoder, resolve_encoder
from .image_encoders import load_image_encoder
from .runtime import resolve_device


def load_encoder(name: str, device: str = "cpu", precision: str = "fp32"):
    """An encoder ready to run: ``.encode(batch) -> float32 (n, d)`` and a ``.fingerprint`` dict.

    Text encoders take a list of strings; image encoders a uint8 (n, 3, S, S) tensor resized as
    their ``spec.preprocess`` says (see pipeline/images.py); CLIP encoders take either.
    """
    spec = resolve_encoder(name)
    device = resolve_device(device)
    if spec.library == "transformers":
        return SentenceEncoder(spec, device, precision)
    return load_image_encoder(spec, device, precision)
