"""Producers of the text-derived views: how a row of each view is computed, written once.

``extract`` (over a dataset's items) and ``predict`` (over new tweets) call the same producer, so
a new tweet's vectors are made exactly as the pool's were. A producer is built from a recipe (the
encoder and the settings a feature file records) and gives, for a list of ``Item``s,
``Computed(vectors, valid, reasons)``: a row that cannot be computed is all-zero, ``valid=False``,
with its reason ("empty text", "no caption", "empty caption", "no object found").

- ``TweetText``: the tweet's tokens (URL tokens dropped on request) through a text encoder;
- ``CaptionText``: the image text (caption, description) through a text encoder (the bridge);
- ``CaptionObjects``: the COCO-80 categories the image text names (0/1 or counts).

Every encoder serves the same interface: ``encode(texts, max_length=None) -> float32 (n, d)``
(``SentenceEncoder`` keeps ``max_length`` word pieces; CLIP's tokenizer has its own context
length) and ``dim``; a producer never changes a shared encoder.

The image views (region grids, ImageNet / CLIP object scores, CLIP image vectors) come from one
forward pass per model over all images (pipeline/extract_passes.py); predict runs the same model
on a new image (trainer/predict.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .objects import COCO_80, caption_object_matrix
from .text import tweet_text


@dataclass(frozen=True)
class Item:
    """What a text view is computed from: the tweet's tokens and its image text (if any)."""

    tokens: tuple[str, ...] = ()
    caption: str | None = None


@dataclass
class Computed:
    vectors: np.ndarray          # float32 (n, d), zero rows where not valid
    valid: np.ndarray            # bool (n,)
    reasons: list[str]           # "" where valid


def _embed(encoder, texts: list[str], reasons: list[str], max_length: int | None) -> Computed:
    ok = [k for k, reason in enumerate(reasons) if not reason]
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    if ok:
        out[ok] = encoder.encode([texts[k] for k in ok], max_length)
    return Computed(out, np.array([not r for r in reasons], dtype=bool), list(reasons))


class TweetText:
    """The tweet text view."""

    def __init__(self, encoder, drop_urls: bool = True, max_length: int | None = None):
        self.encoder, self.drop_urls, self.max_length = encoder, drop_urls, max_length
        self.width = encoder.dim

    def compute(self, items: list[Item]) -> Computed:
        texts = [tweet_text(item.tokens, self.drop_urls) for item in items]
        reasons = ["" if text.strip() else "empty text" for text in texts]
        return _embed(self.encoder, texts, reasons, self.max_length)


def caption_reasons(items: list[Item]) -> list[str]:
    return ["no caption" if item.caption is None else "" if item.caption.strip()
            else "empty caption" for item in items]


class CaptionText:
    """The image text view (the bridge): the caption through the text encoder."""

    def __init__(self, encoder, max_length: int | None = None):
        self.encoder, self.max_length, self.width = encoder, max_length, encoder.dim

    def compute(self, items: list[Item]) -> Computed:
        texts = [item.caption or "" for item in items]
        return _embed(self.encoder, texts, caption_reasons(items), self.max_length)


class CaptionObjects:
    """The COCO-80 categories named in the image text."""

    width = len(COCO_80)

    def __init__(self, counts: bool = False):
        self.counts = counts

    def compute(self, items: list[Item]) -> Computed:
        matrix = caption_object_matrix([item.caption or "" for item in items], self.counts)
        reasons = [r or ("" if matrix[k].any() else "no object found")
                   for k, r in enumerate(caption_reasons(items))]
        valid = np.array([not r for r in reasons], dtype=bool)
        return Computed(np.where(valid[:, None], matrix, 0).astype(np.float32), valid, reasons)


def text_producer(source: str, view: str, config: dict, encoder=None):
    """The producer a feature file's ``source``, ``view`` and recorded ``config`` name (what
    extract wrote; predict rebuilds the same one). ``encoder`` is the view's text encoder."""
    text = config.get("text", {})
    if source == "tweet_text":
        return TweetText(encoder, text.get("drop_urls", True), text.get("max_length"))
    if source == "caption" and view == "object_types":
        return CaptionObjects(config.get("counts", False))
    if source == "caption":
        return CaptionText(encoder, text.get("max_length"))
    return None
