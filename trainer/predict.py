"""Tag new tweets with a saved run: a file (UMT, JSON lines or plain text), or one text with an
optional image or caption.

The run folder is all it takes: the tagger loads from safetensors + JSON, and for an image or
context model the node table, the neighbour pools and the pool tweets' words come from the run's
``pool.h5`` (``trainer.pool``; runs written before it re-read their recorded files).
An example whose IMGID is an item of the run's dataset keeps its recorded neighbours. A new
example gets its own image node and its neighbours the way ``extract`` and ``build-graphs`` made
them: each feature file says which encoder and which source (tweet text, caption, image) produced
its view, the same encoder embeds the new text / caption / image, and the same exact cosine search
ranks the run's pool. A new example without a usable vector (no caption or image given) gets no
image node and no neighbours in that relation: masked, as in training.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data import image_path, image_refs, read_captions
from pipeline.loaders import load_encoder
from pipeline.errors import InvalidConfig, MissingInput
from pipeline.formats import check_types, read_examples
from pipeline.images import DecodeSpec, decode_file
from pipeline.labels import LabelSet
from pipeline.outputs import gold_tags, write_predictions as write_outputs
from pipeline.producers import CaptionText, ImageViews, Item, LabelPhrase, text_producer
from pipeline.progress import no_progress
from pipeline.search import search

from .batches import Collator, ImageInputs, encode
from .config import TrainConfig
from .context import context_ids
from .loop import Split, evaluate
from .model import load_tagger
from .pool import RunPool, SearchPool, feature_attrs, normalised, run_pool  # noqa: F401
from .run import image_table, resolve_device


@dataclass
class Example:
    """A tweet to tag; ``tags`` only when gold tags are known (then predict also scores)."""

    item_id: str
    tokens: tuple[str, ...]
    tags: tuple[str, ...] = ()
    caption: str | None = None
    image: Path | None = None


@dataclass
class Prediction:
    examples: list[Example]
    tags: list[list[str]]                      # internal type names (MISC)
    scores: dict | None                        # when every example has gold tags
    type_names: object
    neighbours: list[dict] = field(default_factory=list)   # per example: {"inter": [ids], ...}
    known: int = 0                             # examples that are items of the run's dataset
    notes: list[str] = field(default_factory=list)   # what the caller must be told (bad images)


def text_example(text: str, caption: str | None = None, image=None) -> Example:
    tokens = tuple(text.split())
    if not tokens:
        raise InvalidConfig("the text to tag is empty; give the tweet's words separated by "
                            "spaces", value=text)
    if image is not None and not Path(image).is_file():
        raise MissingInput("image file not found", path=image, setting="image")
    return Example("text-1", tokens, (), caption, Path(image) if image else None)


def image_notes(examples: list[Example]) -> tuple[list[str], dict[int, str]]:
    """Notes on the given images that cannot be used (empty, not an image, truncated), and the
    reason per example index: such an example is tagged without its image, never silently."""
    # "" when the image decodes, else why not (the reason extract records)
    reasons = {i: decode_file(Path(e.image), DecodeSpec())[1] for i, e in enumerate(examples)
               if e.image is not None}
    reasons = {i: r for i, r in reasons.items() if r}
    notes = [f"{examples[i].item_id}: image {examples[i].image} is not usable ({reason}); "
             "tagged without it" for i, reason in reasons.items()]
    return notes, reasons


def file_examples(path, captions=None, image_dir=None,
                  labels: LabelSet | None = None) -> list[Example]:
    """The tweets of a file to tag (UMT, JSON lines or plain text, ``formats.read_examples``),
    with captions / images looked up by their image reference (``data.image_refs``); gold tags
    of a type outside ``labels`` (the run's label set) are refused."""
    tweets = read_examples(path)
    if labels is not None:
        check_types(tweets, path, labels, "the run's label set")
    refs = image_refs(tweets)
    caps = read_captions(captions) if captions else {}
    return [Example(t.item_id, t.tokens, t.tags, caps.get(refs[t.item_id]),
                    image_path(image_dir, refs[t.item_id]) if image_dir else None)
            for t in tweets]


def _sentence(name: str, config: dict, device: str):
    """The label bridge's producer: phrases through the feature file's text encoder."""
    return CaptionText(load_encoder(name, device), config.get("text", {}).get("max_length"))


def view_vectors(attrs: dict, examples: list[Example], device: str = "cpu"):
    """The vectors the feature file with ``attrs`` would hold for ``examples``, computed by the
    encoder and from the source it records: ``(X float32 (n, ...), ok bool (n,))``."""
    view, source, spec = attrs["view"], attrs["source"], attrs["encoder"]
    config = attrs.get("config") or {}
    if source == "caption" and any(e.image is not None and e.caption is None for e in examples):
        raise InvalidConfig(f"this run's {view} features come from captions, not image files; "
                            "give a caption instead of an image", setting="caption")
    if source in ("tweet_text", "caption"):      # the producer extract used for this file
        encoder = None if view == "object_types" else load_encoder(spec["name"], device)
        got = text_producer(source, view, config, encoder).compute(
            [Item(e.tokens, e.caption) for e in examples])
        return got.vectors, got.valid
    if source not in ("image", "imagenet_labels"):
        raise InvalidConfig(f"features from source {source!r} cannot be computed for new tweets")
    if any(e.caption is not None and e.image is None for e in examples):
        raise InvalidConfig(f"this run's {view} features come from image files, not captions; "
                            "give an image instead of a caption", setting="image")
    model_spec = config["labeller"]["spec"] if source == "imagenet_labels" else spec
    model = load_encoder(model_spec["name"], device)
    items = [Item(e.tokens, e.caption, e.image) for e in examples]
    if source == "imagenet_labels":          # the producers extract's passes use (producers.py)
        got = LabelPhrase(model, _sentence(spec["name"], config, device),
                          config["topk"]).compute(items)
    else:
        got = ImageViews(model, (view,), config).compute(items)[view]
    return got.vectors, got.valid


def _neighbours(side: SearchPool, new: list[Example], k: int, device: str):
    """Pool ids (best first, None where missing) and scores of new examples in one relation:
    their query vectors (``view_vectors``) searched among the pool's unit vectors."""
    xq, ok = normalised(*view_vectors(side.query, new, device))
    ids = [[None] * k for _ in new]
    scores = np.zeros((len(new), k), np.float32)
    live = np.flatnonzero(ok)
    if len(live) and len(side.pool_ids):
        D, I = search(xq[live], side.xb, k)
        for row, q in enumerate(live):
            ids[q] = [side.pool_ids[j] if j >= 0 else None for j in I[row]]
            scores[q] = np.nan_to_num(D[row])
    return ids, scores


class AppendedRows:
    """The run's node table (read by rows: a ``FeatureRows`` or an array) with the own-image
    rows of new examples after it. ``rows(index)`` reads only the rows asked for (a host table's
    source); ``np.asarray`` gives the whole table as float32 (a device table)."""

    def __init__(self, base, extra: np.ndarray):
        self.base, self.dtype = base, np.dtype(base.dtype)
        self.extra = np.asarray(extra).astype(self.dtype)
        self.shape = (len(base) + len(self.extra),) + tuple(base.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, index) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index),) + self.shape[1:], self.dtype)
        old = index < len(self.base)
        out[old] = self.base[index[old]]
        out[~old] = self.extra[index[~old] - len(self.base)]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        dtype = dtype or np.float32
        return np.concatenate([np.asarray(self.base, dtype), self.extra.astype(dtype)])


def image_inputs_for(examples: list[Example], pool: RunPool, config: TrainConfig,
                     device: str = "cpu") -> tuple[ImageInputs, list[dict], int]:
    """Own-image rows and neighbours of ``examples`` over the run's node table (extended by the
    new examples' own image vectors); also the neighbour ids per example and how many were known."""
    image, k, model = pool.image, config.model.k, config.model
    n = len(examples)
    own, inter, intra = np.full(n, -1), np.full((n, k), -1), np.full((n, k), -1)
    inter_s, intra_s = np.zeros((n, k), np.float32), np.zeros((n, k), np.float32)
    known = [i for i, e in enumerate(examples) if e.item_id in image.row_of]
    for i in known:
        r = image.row_of[examples[i].item_id]
        own[i], inter[i], inter_s[i] = image.own[r], image.inter[r, :k], image.inter_score[r, :k]
        intra[i], intra_s[i] = image.intra[r, :k], image.intra_score[r, :k]
    new = [i for i in range(n) if i not in set(known)]
    table = image.table
    if new:
        X, ok = view_vectors(pool.node_attrs, [examples[i] for i in new], device)
        fresh = [i for i, good in zip(new, ok) if good]
        own[fresh] = len(table) + np.arange(len(fresh))
        table = AppendedRows(table, X[ok]) if fresh else table
        row_of = {item: r for r, item in enumerate(image.table_ids)}
        for relation, rows, scores in (("inter", inter, inter_s), ("intra", intra, intra_s)):
            if not getattr(model, relation):
                continue
            ids, got = _neighbours(pool.search[relation], [examples[i] for i in new], k, device)
            for j, i in enumerate(new):
                rows[i] = [row_of[p] if p is not None else -1 for p in ids[j]]
                scores[i] = got[j]
    def named(rows):  # rows past the dataset's table are new images: not in the pool
        return [image.table_ids[r] for r in rows if 0 <= r < len(image.table_ids)]
    neighbours = [{"inter": named(inter[i]) if model.inter else [],
                   "intra": named(intra[i]) if model.intra else []} for i in range(n)]
    return (ImageInputs([e.item_id for e in examples], table, own, inter, inter_s, intra, intra_s,
                        image.view, image.table_ids), neighbours, len(known))


def context_for(examples: list[Example], pool: RunPool, config: TrainConfig,
                device: str = "cpu") -> list[list[str]]:
    """The neighbour tweets (``model.context``) of each example: recorded for dataset items,
    searched in the context graph's pool for new ones (as ``_neighbours`` does) and kept when
    the pool has their tweet's words."""
    k = config.model.context_k
    found = [pool.context.get(e.item_id) for e in examples]
    new = [i for i, got in enumerate(found) if got is None]
    if new:
        ids, _ = _neighbours(pool.search["context"], [examples[i] for i in new], k, device)
        for j, i in enumerate(new):
            found[i] = [n for n in ids[j] if n is not None and n in pool.words][:k]
    return found


def missing_view_notes(examples: list[Example], config: TrainConfig) -> list[str]:
    """For an image model: the examples given neither an image nor a caption (tagged with no
    own image node and, for new tweets, no neighbours found through it)."""
    if not config.model.uses_image:
        return []
    bare = [e.item_id for e in examples if e.image is None and e.caption is None]
    if not bare:
        return []
    shown = ", ".join(bare[:5]) + (f" and {len(bare) - 5} more" if len(bare) > 5 else "")
    return [f"{len(bare)} tweet(s) have neither an image nor a caption ({shown}); this image "
            "model tags them from their text and the neighbours recorded for dataset items only"]


def run_labels(run_dir: Path) -> LabelSet:
    """The run's label set (``labels.json``)."""
    path = run_dir / "labels.json"
    if not path.is_file():
        raise MissingInput("not found; is this a finished run folder?", path=path)
    return LabelSet.from_json(json.loads(path.read_text()))


@dataclass
class LoadedRun:
    """A run loaded once for tagging many times: its config, labels, tagger and pool."""

    path: Path
    config: TrainConfig
    labels: LabelSet
    model: object
    tokenizer: object
    meta: dict
    pool: RunPool
    device: object


def load_run(run_dir, device: str = "auto") -> LoadedRun:
    """Load the run in ``run_dir``: tagger (``model.load_tagger``), labels, and for an image or
    context model its pool (``trainer.pool.run_pool``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise MissingInput("not a run folder (no config.json)", path=run_dir,
                           hint="a run folder is one under <artifacts>/runs/")
    config = TrainConfig.from_json(run_dir / "config.json")
    labels = run_labels(run_dir)
    torch_device = resolve_device(device)
    model, tokenizer, meta = load_tagger(run_dir, torch_device)
    needs_pool = config.model.uses_image or config.model.context != "none"
    pool = run_pool(run_dir, config) if needs_pool else RunPool()
    return LoadedRun(run_dir, config, labels, model, tokenizer, meta, pool, torch_device)


def predict(run, examples: list[Example], device: str = "auto",
            progress=no_progress) -> Prediction:
    """Tag ``examples`` with ``run`` (a run folder, or a ``LoadedRun``; see the module
    docstring). Scores only when every example has gold tags."""
    if not examples:
        raise InvalidConfig("nothing to tag: the input has no tweets")
    run = run if isinstance(run, LoadedRun) else load_run(run, device)
    config, pool, torch_device = run.config, run.pool, run.device
    gold = gold_tags(examples)
    notes, bad = image_notes(examples)
    notes += missing_view_notes(examples, config)
    image, neighbours, known = None, [{} for _ in examples], 0
    if config.model.uses_image:
        image, neighbours, known = image_inputs_for(examples, pool, config, str(torch_device))
    for i, reason in bad.items():
        neighbours[i]["image"] = f"invalid: {reason}"
    context = None
    if config.model.context != "none":
        found = context_for(examples, pool, config, str(torch_device))
        for record, ids in zip(neighbours, found):
            record["context"] = ids
        context = context_ids(found, pool.words, run.tokenizer, config.model.context_subwords)
    encoded = encode(examples, run.tokenizer, run.meta["label2id"], config.model.max_subwords,
                     context)
    collator = Collator(encoded, run.tokenizer.pad_token_id, image, np.arange(len(examples)),
                        config.model.inter, config.model.intra, config.model.k)
    table = None if image is None else image_table(image, config, torch_device)
    result = evaluate(run.model, Split("predict", encoded, collator, gold), torch_device, table,
                      config.optim.eval_batch_size, config.precision, run.labels, progress)
    return Prediction(examples, result.tags, result.scores, run.labels, neighbours, known, notes)


def neighbour_lines(record: dict) -> list[str]:
    """One readable line per relation of a ``Prediction.neighbours`` entry."""
    names = {"inter": "inter-modal (text -> images)", "intra": "intra-modal (image -> images)",
             "context": "neighbour tweets", "image": "own image"}
    lines = []
    for key, value in record.items():
        shown = value if isinstance(value, str) else (", ".join(value) if value else "none")
        lines.append(f"{names.get(key, key)}: {shown}")
    return lines


def write_predictions(prediction: Prediction, handle, fmt: str = "conll") -> None:
    """CoNLL or JSON lines, as ``pipeline.outputs`` writes them (dataset tag names)."""
    write_outputs(handle, prediction.examples, prediction.tags, prediction.type_names, fmt)
