"""Tag new tweets with a saved run: a UMT file, or one text with an optional image or caption.

The run folder is all it takes: the tagger loads from safetensors + JSON, and for an image model
the run's node features and graphs are re-read from its ``inputs.json`` (refused if they changed).
An example whose IMGID is an item of the run's dataset keeps its recorded neighbours. A new
example gets its own image node and its neighbours the way ``extract`` and ``build-graphs`` made
them: each feature file says which encoder and which source (tweet text, caption, image) produced
its view, the same encoder embeds the new text / caption / image, and the same exact cosine search
ranks the run's pool. A new example without a usable vector (no caption or image given) gets no
image node and no neighbours in that relation: masked, as in training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data import image_path, read_captions, read_umt
from pipeline.encoders import load_encoder
from pipeline.errors import InvalidConfig, MissingInput
from pipeline.features import read_features
from pipeline.graphs import VIEWS, read_graph
from pipeline.images import image_problem
from pipeline.outputs import write_predictions as write_outputs
from pipeline.producers import CaptionText, ImageViews, Item, LabelPhrase, text_producer
from pipeline.search import search
from pipeline.store import decode_attrs

from .batches import Collator, ImageInputs, encode
from .config import TrainConfig
from .context import context_ids, tweet_words
from .inputs import TrainInputs, inputs_from_record
from .loop import Split, evaluate
from .model import load_tagger
from .run import resolve_device


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
    reasons = {i: image_problem(e.image) for i, e in enumerate(examples) if e.image is not None}
    reasons = {i: r for i, r in reasons.items() if r}
    notes = [f"{examples[i].item_id}: image {examples[i].image} is not usable ({reason}); "
             "tagged without it" for i, reason in reasons.items()]
    return notes, reasons


def file_examples(path, captions=None, image_dir=None) -> list[Example]:
    """The tweets of a UMT file (gold tags kept), with captions / images looked up by IMGID."""
    caps = read_captions(captions) if captions else {}
    return [Example(t.item_id, t.tokens, t.tags, caps.get(t.item_id),
                    image_path(image_dir, t.item_id) if image_dir else None)
            for t in read_umt(path)]


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


def feature_attrs(path: Path) -> dict:
    """A feature file's attributes (JSON ones decoded) and ``shape`` (a row's shape), without
    reading its arrays."""
    import h5py

    with h5py.File(path, "r") as h5:
        return {**decode_attrs(h5.attrs), "shape": list(h5["features"].shape[1:])}


def _normalised(X: np.ndarray, ok: np.ndarray):
    norms = np.linalg.norm(X, axis=1)
    ok = ok & (norms > 0) & np.isfinite(norms)
    return np.where(ok[:, None], X / np.where(ok, norms, 1)[:, None], 0).astype(np.float32), ok


def _neighbours(relation: str, entry: dict, new: list[Example], k: int, device: str):
    """Pool ids (best first, None where missing) and scores of new examples in one relation."""
    graph = read_graph(entry["path"])
    attrs = graph.attrs
    if attrs.get("source", "ours") != "ours" or attrs.get("ranking", "cosine") != "cosine":
        raise InvalidConfig(f"{entry['path']}: neighbours of new tweets can be computed only for "
                            "cosine-ranked graphs built by build-graphs; tag dataset items instead")
    folder = Path(entry["path"]).parents[2] / "features" / Path(entry["path"]).parent.name
    query_view, pool_view = VIEWS[relation]
    files = {v: folder / graph.attrs["inputs"][f"features:{v}"]["file"]
             for v in (query_view, pool_view)}
    for view, path in files.items():
        if not path.is_file():
            raise MissingInput(f"{path}: the {view} features the {relation} graph was built from "
                               "are gone; restore them to tag new tweets")
    pool = read_features(files[pool_view])
    xb, pool_ok = _normalised(*pool.rows(graph.pool_ids))
    xq, ok = _normalised(*view_vectors(feature_attrs(files[query_view]), new, device))
    ids = [[None] * k for _ in new]
    scores = np.zeros((len(new), k), np.float32)
    live = np.flatnonzero(ok)
    if len(live):
        D, I = search(xq[live], xb[pool_ok], k)
        pool_ids = [p for p, good in zip(graph.pool_ids, pool_ok) if good]
        for row, q in enumerate(live):
            ids[q] = [pool_ids[j] if j >= 0 else None for j in I[row]]
            scores[q] = np.nan_to_num(D[row])
    return ids, scores


def image_inputs_for(examples: list[Example], inputs: TrainInputs, config: TrainConfig,
                     device: str = "cpu") -> tuple[ImageInputs, list[dict], int]:
    """Own-image rows and neighbours of ``examples`` over the run's node table (extended by the
    new examples' own image vectors); also the neighbour ids per example and how many were known."""
    image, k, model = inputs.image, config.model.k, config.model
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
        node_attrs = feature_attrs(Path(inputs.files["features"]["path"]))
        X, ok = view_vectors(node_attrs, [examples[i] for i in new], device)
        fresh = [i for i, good in zip(new, ok) if good]
        own[fresh] = len(table) + np.arange(len(fresh))
        table = np.concatenate([table, X[ok].astype(table.dtype)]) if fresh else table
        row_of = {item: r for r, item in enumerate(image.table_ids)}
        for relation, rows, scores in (("inter", inter, inter_s), ("intra", intra, intra_s)):
            if not getattr(model, relation):
                continue
            ids, got = _neighbours(relation, inputs.files[relation], [examples[i] for i in new], k,
                                   device)
            for j, i in enumerate(new):
                rows[i] = [row_of[p] if p is not None else -1 for p in ids[j]]
                scores[i] = got[j]
    def named(rows):  # rows past the dataset's table are new images: not in the pool
        return [image.table_ids[r] for r in rows if 0 <= r < len(image.table_ids)]
    neighbours = [{"inter": named(inter[i]) if model.inter else [],
                   "intra": named(intra[i]) if model.intra else []} for i in range(n)]
    return (ImageInputs([e.item_id for e in examples], table, own, inter, inter_s, intra, intra_s,
                        image.view, image.table_ids), neighbours, len(known))


def context_for(examples: list[Example], inputs: TrainInputs, config: TrainConfig,
                words: dict[str, list[str]], device: str = "cpu") -> list[list[str]]:
    """The neighbour tweets (``model.context``) of each example: recorded for dataset items,
    searched in the context graph's pool for new ones (as ``_neighbours`` does) and kept when
    ``words`` (``context.tweet_words``) has their tweet."""
    k = config.model.context_k
    found = [inputs.context.get(e.item_id) for e in examples]
    new = [i for i, got in enumerate(found) if got is None]
    if new:
        ids, _ = _neighbours(config.model.context, inputs.files["context"],
                             [examples[i] for i in new], k, device)
        for j, i in enumerate(new):
            found[i] = [n for n in ids[j] if n is not None and n in words][:k]
    return found


def predict(run_dir, examples: list[Example], device: str = "auto") -> Prediction:
    """Tag ``examples`` with the run in ``run_dir`` (see the module docstring)."""
    import torch

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise MissingInput("not a run folder (no config.json)", path=run_dir,
                           hint="a run folder is one under <artifacts>/runs/")
    if not examples:
        raise InvalidConfig("nothing to tag: the input has no tweets")
    config = TrainConfig.from_json(run_dir / "config.json")
    torch_device = resolve_device(device)
    model, tokenizer, meta = load_tagger(run_dir, torch_device)
    inputs = inputs_from_record(run_dir, config)
    notes, bad = image_notes(examples)
    image, neighbours, known = None, [{} for _ in examples], 0
    if config.model.uses_image:
        image, neighbours, known = image_inputs_for(examples, inputs, config, str(torch_device))
    for i, reason in bad.items():
        neighbours[i]["image"] = f"invalid: {reason}"
    context = None
    if config.model.context != "none":
        words = tweet_words(inputs.dataset)
        found = context_for(examples, inputs, config, words, str(torch_device))
        for record, ids in zip(neighbours, found):
            record["context"] = ids
        context = context_ids(found, words, tokenizer, config.model.context_subwords)
    encoded = encode(examples, tokenizer, meta["label2id"], config.model.max_subwords, context)
    collator = Collator(encoded, tokenizer.pad_token_id, image, np.arange(len(examples)),
                        config.model.inter, config.model.intra, config.model.k)
    labelled = all(e.tags for e in examples)
    gold = [list(e.tags) if labelled else ["O"] * len(e.tokens) for e in examples]
    table = None if image is None else image.node_table(torch_device, config.precision)
    result = evaluate(model, Split("predict", encoded, collator, gold), torch_device, table,
                      config.optim.eval_batch_size, config.precision, inputs.dataset.type_names)
    return Prediction(examples, result.tags, result.scores if labelled else None,
                      inputs.dataset.type_names, neighbours, known, notes)


def write_predictions(prediction: Prediction, handle, fmt: str = "conll") -> None:
    """CoNLL or JSON lines, as ``pipeline.outputs`` writes them (dataset tag names)."""
    write_outputs(handle, prediction.examples, prediction.tags, prediction.type_names, fmt)
