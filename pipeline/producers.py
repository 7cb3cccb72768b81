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

Image views, one forward pass per model for all the views it gives:

- ``ImageViews``: a CNN's region grid and ImageNet-1k probabilities, or CLIP's image vector and
  zero-shot COCO-80 scores. ``compute_batch(images)`` is what extract's batched, overlapped pass
  runs (pipeline/extract_passes.py); ``compute(items)`` decodes the items' files first (predict).
- ``LabelPhrase``: the image described by its top ImageNet labels through a text encoder (the
  bridge without captions).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import torch

from .artifacts import fingerprint
from .images import DecodeSpec, decode_file
from .objects import COCO_80, caption_object_matrix, coco_prompts, imagenet_phrase
from .text import tweet_text


@dataclass(frozen=True)
class Item:
    """What a view is computed from: the tweet's tokens, its image text and image (if any)."""

    tokens: tuple[str, ...] = ()
    caption: str | None = None
    image: object = None         # the image file (a path), for the image views


@dataclass
class Computed:
    vectors: np.ndarray          # float32 (n, d), zero rows where not valid
    valid: np.ndarray            # bool (n,)
    reasons: list[str]           # "" where valid


def recipe(view: str, source: str, space: str, encoder: dict, config: dict) -> dict:
    """A producer's recipe: what computes a view's rows (``encoder``: ``{"spec",
    "weights_sha256"}``; ``config``: the producer's settings, as recorded in the file)."""
    return {"view": view, "source": source, "space": space, "encoder": encoder, "config": config}


def view_fingerprint(recipe: dict, *, inputs_sha256: str, ids_sha256: str, dtype: str,
                     format_version: int) -> str:
    """A feature file's fingerprint: its producer's recipe, the data it read, its rows and their
    storage dtype."""
    return fingerprint({"format": format_version, **recipe, "inputs_sha256": inputs_sha256,
                        "ids_sha256": ids_sha256, "dtype": dtype})


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


# ---- image views --------------------------------------------------------------------------------

CNN_OUTPUTS = {"region_grid": "grid", "object_types": "probs"}


class ImageViews:
    """The views ``views`` of one image model from one forward pass; ``config`` is the recorded
    configuration (``prompt`` of CLIP's zero-shot object scores)."""

    def __init__(self, model, views, config: dict | None = None):
        self.model, self.views = model, tuple(views)
        self.cnn = hasattr(model, "forward_views")
        self.decode = DecodeSpec.from_preprocess(model.spec.preprocess)
        self.prompts = None
        if not self.cnn and "object_types" in self.views:
            prompt = (config or {}).get("prompt", "a photo of {}.")
            self.prompts = model.encode_text(coco_prompts(prompt))

    def compute_batch(self, images) -> dict:
        """uint8 images (n, 3, S, S) -> {view: tensor (n, ...)} on the model's device."""
        if self.cnn:
            out = self.model.forward_views(images)
            return {view: out[CNN_OUTPUTS[view]] for view in self.views}
        embeddings = self.model.encode_image(images)
        out = {"image_global": embeddings}
        if self.prompts is not None:
            out["object_types"] = self.model.zero_shot(embeddings, self.prompts)
        return {view: out[view] for view in self.views}

    def compute(self, items: list[Item]) -> dict[str, Computed]:
        """Each view's rows for the items' image files (missing or undecodable: invalid, with
        the reason)."""
        decoded = [decode_file(item.image, self.decode) for item in items]
        ok = [k for k, (pixels, _, _) in enumerate(decoded) if pixels is not None]
        reasons = ["" if pixels is not None else reason or "not decoded"
                   for pixels, reason, _ in decoded]
        size = self.decode.size
        images = torch.stack([decoded[k][0] for k in ok]) if ok else \
            torch.zeros((1, 3, size, size), dtype=torch.uint8)      # only for the row shapes
        with torch.inference_mode():
            out = self.compute_batch(images)
        valid = np.array([not r for r in reasons], dtype=bool)
        result = {}
        for view, tensor in out.items():
            rows = np.asarray(tensor.float().cpu(), dtype=np.float32)
            vectors = np.zeros((len(items), *rows.shape[1:]), np.float32)
            vectors[ok] = rows[:len(ok)]
            result[view] = Computed(vectors, valid.copy(), list(reasons))
        return result


class LabelPhrase:
    """The image described by its ``topk`` ImageNet labels ("a photo of a <label>, ..."), through
    ``sentence`` (a ``CaptionText``); a row whose image cannot be used keeps the image's reason."""

    def __init__(self, labeller, sentence: CaptionText, topk: int):
        self.labels, self.sentence, self.topk = ImageViews(labeller, ("object_types",)), \
            sentence, topk
        self.classes = labeller.classes
        self.width = sentence.width

    def compute(self, items: list[Item]) -> Computed:
        probs = self.labels.compute(items)["object_types"]
        top = np.argsort(-probs.vectors, axis=1, kind="stable")[:, :self.topk]
        phrases = [Item(caption=imagenet_phrase([self.classes[c] for c in row]) if ok else None)
                   for row, ok in zip(top, probs.valid)]
        got = self.sentence.compute(phrases)
        reasons = [image or text for image, text in zip(probs.reasons, got.reasons)]
        valid = np.array([not r for r in reasons], dtype=bool)
        return Computed(np.where(valid[:, None], got.vectors, 0).astype(np.float32), valid,
                        reasons)
