"""One training run from its config to its folder, and several seeds of it.

``<artifacts>/runs/<YYYYmmdd-HHMMSS>-<slug>/`` holds: ``config.json`` (loads back with
``TrainConfig.from_json``), ``env.json`` (code version, packages, device), ``inputs.json`` (the
dataset splits' and the feature/graph files' fingerprints), ``metrics.jsonl`` (one line per epoch),
``results.json`` (best epoch, valid and test scores, wall time), ``labels.json`` (the label set),
``predictions_<split>.conll`` (``token id gold predicted``, see ``pipeline.outputs``),
``model.safetensors`` + ``model.json`` + ``encoder/`` (see ``model.load_tagger``),
``pool.h5`` (image and context models: what predict needs without the data and artifacts
folders, see ``trainer.pool``), ``train.log`` and ``curve.png``. The folder is written as
``<id>.tmp`` and renamed when complete; an existing folder is never reused. Under torchrun
(``dist`` in a group) every rank trains and evaluates its share (``loop``); rank 0 alone writes
the folder and the log, the others write nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from pipeline import runtime
from pipeline.artifacts import environment, write_json
from pipeline.distributed import Distributed
from pipeline.encoders import load_text_backbone
from pipeline.errors import CacheMismatch, InvalidConfig, MissingInput
from pipeline.outputs import write_predictions_file
from pipeline.progress import no_progress

from .batches import Collator, HostTable, encode
from .config import TrainConfig
from .context import context_ids, tweet_words
from .inputs import TrainInputs, load_inputs
from .loop import Prepared, Split, evaluate, train
from .metrics import format_table, mean_std
from .model import Tagger, load_tagger, save_tagger
from .pool import POOL_FILE, pool_from_inputs, run_inputs, write_pool


@dataclass
class RunResult:
    path: Path
    best_epoch: int
    valid: dict
    test: dict
    seconds: float
    epochs_run: int
    seed: int | None = None


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (all devices); optionally torch's deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """``pipeline.runtime.resolve_device`` as a ``torch.device``."""
    return torch.device(runtime.resolve_device(name))


def run_slug(config: TrainConfig, dataset_name: str) -> str:
    return config.slug or f"{dataset_name}-{config.variant()}-s{config.seed}"


def new_run_dir(artifacts, slug: str) -> tuple[Path, Path]:
    """``(temporary, final)`` folders of a new run; the temporary one is created. Refuses reuse."""
    final = Path(artifacts) / "runs" / f"{datetime.now():%Y%m%d-%H%M%S}-{slug}"
    tmp = final.with_name(final.name + ".tmp")
    if final.exists() or tmp.exists():
        raise CacheMismatch("run folder already exists and runs are never overwritten",
                            path=final, setting="slug", hint="wait a second or choose another slug")
    tmp.mkdir(parents=True)
    return tmp, final


def make_splits(inputs: TrainInputs, tokenizer, config: TrainConfig, label2id,
                only: str | None = None) -> dict[str, Split]:
    """Encoded splits (all, or ``only`` one) with collators for ``config.model``."""
    model = config.model
    splits = {}
    words = (tweet_words(inputs.dataset, model.context_labels) if inputs.context is not None
             else None)
    for name, tweets in inputs.dataset.labelled_splits().items():     # never the pool split
        if only is not None and name != only:
            continue
        context = None if words is None else context_ids(
            [inputs.context[t.item_id] for t in tweets], words, tokenizer, model.context_subwords)
        encoded = encode(tweets, tokenizer, label2id, model.max_subwords, context)
        rows = None
        if model.uses_image:
            rows = np.array([inputs.image.row_of[t.item_id] for t in tweets], dtype=np.int64)
        image = inputs.image if model.uses_image else None
        collator = Collator(encoded, tokenizer.pad_token_id, image, rows, model.inter,
                            model.intra, model.k)
        splits[name] = Split(name, encoded, collator, [list(t.tags) for t in tweets])
    return splits


def node_table(inputs: TrainInputs, config: TrainConfig, device: torch.device):
    """The node features as one device tensor or a ``HostTable``, as ``config.node_table``
    says (``ImageInputs.node_table``), or None for a text-only model."""
    if not config.model.uses_image:
        return None
    return image_table(inputs.image, config, device)


def image_table(image, config: TrainConfig, device: torch.device):
    """``image``'s node table on ``device`` or on the host (``config.table_on_host``): the one
    rule of train, evaluate and predict."""
    host = config.table_on_host(len(image.table), image.node_shape)
    return image.node_table(device, config.precision, host=host)


def plot_curve(path, history: list[dict]) -> None:
    """Train loss and valid F1 (both modes) per epoch, with matplotlib's Agg canvas."""
    # matplotlib only when a curve is drawn: heavy to import, needed by no other path
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    figure = Figure(figsize=(8, 3.2))
    FigureCanvasAgg(figure)
    loss_ax, f1_ax = figure.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="train loss (CRF NLL)")
    for mode in ("conlleval", "strict"):
        f1_ax.plot(epochs, [100 * r["valid"][mode]["overall"]["f1"] for r in history], marker="o",
                   label=mode)
    f1_ax.set(xlabel="epoch", ylabel="valid F1 (%)")
    f1_ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def resolved(config: TrainConfig, inputs: TrainInputs) -> TrainConfig:
    """``config`` with the node view and the feature / graph files actually used written in, so
    that its ``config.json`` retrains on the same inputs even after the manifests move on."""
    files = inputs.files or {}
    names = (("features", "features"), ("inter_graph", "inter"), ("intra_graph", "intra"),
             ("context_graph", "context"))
    paths = {name: files[key]["path"] for name, key in names if key in files}
    model = config.model
    if inputs.image is not None and model.uses_image:
        model = dataclasses.replace(model, node_view=inputs.image.view)
    return dataclasses.replace(config, **paths, model=model)


def check_lengths(splits: dict[str, Split], tokenizer, backbone) -> None:
    """Refuse inputs longer than the encoder can position (the context makes them longer)."""
    limit = getattr(backbone.config, "max_position_embeddings", None)
    if getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limit = min(limit or tokenizer.model_max_length, tokenizer.model_max_length)
    longest = max((len(ids) for split in splits.values() for ids in split.encoded.input_ids),
                  default=0)
    if limit and longest > limit:
        raise InvalidConfig(f"an input holds {longest} subwords but the encoder takes at most "
                            f"{limit}", setting="context_subwords", value=longest,
                            hint="lower the context's subword budget or model.max_subwords")


def prepare(config: TrainConfig, inputs: TrainInputs, dist: Distributed | None = None) -> Prepared:
    """Seed, load the encoder, build the tagger and encode the splits (no files written). In a
    group the rank's device is ``dist.device``; after the model is built each rank reseeds with
    ``seed + rank`` so that the ranks draw different dropout masks."""
    dist = dist or Distributed()
    seed_everything(config.seed, config.deterministic)
    device = torch.device(dist.device) if dist.active else resolve_device(config.device)
    if config.model.uses_image and inputs.image is None:
        raise InvalidConfig("an image model needs image inputs; load them with load_inputs")
    if config.model.context != "none" and inputs.context is None:
        raise InvalidConfig("a context model needs its neighbour tweets; load them with "
                            "load_inputs")
    config = resolved(config, inputs)
    if config.model.encoder == "auto":
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, encoder=runtime.default_text_encoder(str(device))))
    tokenizer, backbone, encoder_record = load_text_backbone(config.model.encoder)
    labels = inputs.dataset.labels.labels
    splits = make_splits(inputs, tokenizer, config, {t: i for i, t in enumerate(labels)})
    check_lengths(splits, tokenizer, backbone)
    node_shape = inputs.image.node_shape if config.model.uses_image else None
    # fp32 master weights even when the encoder was stored in fp16 (a transport copy):
    # mixed precision comes from autocast, never from half-precision parameters
    model = Tagger(config.model, backbone, labels, node_shape).float().to(device)
    if dist.active:
        torch.manual_seed(config.seed + dist.rank)
    return Prepared(config, device, tokenizer, encoder_record, model, splits,
                    node_table(inputs, config, device), inputs.dataset.type_names, dist)


def logged_to(path, log=None):
    """A ``log`` that also appends each line, timed, to the file ``path`` (a run's train.log)."""
    def both(message: str) -> None:
        if log is not None:
            log(message)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {message}\n")
    return both


def write_records(folder: Path, prep: Prepared, inputs: TrainInputs) -> None:
    """``config.json``, ``env.json`` (code, packages, device), ``labels.json`` and ``inputs.json``
    of a run."""
    device = prep.device
    prep.config.to_json(folder / "config.json")
    env = environment()
    env["device"] = {"name": str(device), "threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    write_json(folder / "env.json", env)
    write_json(folder / "labels.json", inputs.dataset.labels.to_json())
    write_json(folder / "inputs.json", inputs.record(
        truncated_words={n: s.encoded.truncated_words for n, s in prep.splits.items()}))


def train_run(config: TrainConfig, inputs: TrainInputs, progress=no_progress,
              log=None, dist: Distributed | None = None) -> RunResult:
    """Train one seed of ``config`` on ``inputs`` and write its run folder; the log lines go to
    ``log`` and to the folder's ``train.log``. In a group (``dist``) every rank calls this;
    rank 0 alone writes and logs, the others return a result whose ``path`` is None."""
    started = time.perf_counter()
    prep = prepare(config, inputs, dist)
    config, device, model, splits, table, dist = (prep.config, prep.device, prep.model,
                                                  prep.splits, prep.table, prep.dist)
    tmp = final = None
    if dist.is_main:
        tmp, final = new_run_dir(config.artifacts, run_slug(config, inputs.dataset.name))
        log = logged_to(tmp / "train.log", log)
        log(f"run {final.name}: {config.model.variant()} with encoder {config.model.encoder} on "
            f"{device}{ranks(dist)}, {sum(p.numel() for p in model.parameters()):,} parameters"
            + ("" if table is None else f", node table on the {table_place(table)}"))
        write_records(tmp, prep, inputs)
    else:
        log, progress = (lambda message: None), no_progress

    def on_epoch(record):
        with open(tmp / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        valid = record["valid"]
        log(f"epoch {record['epoch']}: loss {record['train_loss']:.3f}, valid F1 "
            f"{100 * valid['conlleval']['overall']['f1']:.2f} (strict "
            f"{100 * valid['strict']['overall']['f1']:.2f}), {record['train_seconds']:.1f}s"
            + (" *" if record["best"] else ""))

    outcome = train(prep, progress, on_epoch if dist.is_main else None)
    model.load_state_dict(outcome.best_state)
    scores = {}
    for name in ("valid", "test"):
        result = evaluate(model, splits[name], device, table, config.optim.eval_batch_size,
                          config.precision, inputs.dataset.type_names, dist=dist)
        if dist.is_main:
            write_predictions_file(tmp / f"predictions_{name}.conll",
                                   inputs.dataset.splits[name], result.tags,
                                   inputs.dataset.labels)
        scores[name] = result.scores
    if dist.is_main and config.checkpoint and (config.model.uses_image
                                               or config.model.context != "none"):
        write_pool(tmp / POOL_FILE, pool_from_inputs(inputs, config),   # the run travels
                   config.pool_copy_gb)
    seconds = time.perf_counter() - started
    if dist.is_main:
        _finish(tmp, final, prep, outcome, scores, seconds, log)
    return RunResult(final, outcome.best_epoch, scores["valid"], scores["test"], seconds,
                     len(outcome.history), config.seed)


def ranks(dist: Distributed) -> str:
    return f" (rank 0 of {dist.world}, {dist.backend})" if dist.active else ""


def table_place(table) -> str:
    return "host (float16, rows sent per batch)" if isinstance(table, HostTable) else "device"


def _finish(tmp: Path, final: Path, prep: Prepared, outcome, scores: dict, seconds: float,
            log) -> None:
    """The weights, the curve and ``results.json``; then the folder gets its final name."""
    config = prep.config
    save_tagger(prep.model.cpu(), prep.tokenizer, tmp, prep.encoder_record, config.checkpoint)
    plot_curve(tmp / "curve.png", outcome.history)
    write_json(tmp / "results.json", {"best_epoch": outcome.best_epoch, "valid": scores["valid"],
                                      "test": scores["test"], "seconds": seconds,
                                      "epochs_run": len(outcome.history),
                                      "stopped_early": outcome.stopped_early,
                                      "steps": outcome.steps, "processes": prep.dist.world})
    log(f"finished in {seconds:.0f} s: best epoch {outcome.best_epoch}, test F1 "
        f"{100 * scores['test']['conlleval']['overall']['f1']:.2f}")
    os.replace(tmp, final)


def train_seeds(config: TrainConfig, seeds: list[int], progress=no_progress, log=None,
                inputs: TrainInputs | None = None,
                dist: Distributed | None = None) -> list[RunResult]:
    """``train_run`` for each seed (one run folder each); the inputs are read once. In a group
    (``dist``) only rank 0 logs the inputs."""
    dist = dist or Distributed()
    inputs = inputs or load_inputs(config, log=log if dist.is_main else None)
    return [train_run(dataclasses.replace(config, seed=seed), inputs, progress, log, dist)
            for seed in seeds]


def summary(results: list[RunResult], split: str = "test") -> str:
    """Mean ± std of overall F1 (both modes) over runs, plus the last run's table when alone."""
    lines = []
    if len(results) == 1:
        lines.append(format_table(getattr(results[0], split), f"{split} ({results[0].path})"))
    for mode in ("conlleval", "strict"):
        values = [100 * getattr(r, split)[mode]["overall"]["f1"] for r in results]
        if len(values) == 1:
            seed = "" if results[0].seed is None else f" (seed {results[0].seed})"
            lines.append(f"{split} F1 {mode}: {values[0]:.2f}{seed}")
            continue
        mean, std = mean_std(values)
        lines.append(f"{split} F1 {mode}: {mean:.2f} ± {std:.2f} over {len(values)} seeds "
                     f"({', '.join(f'{v:.2f}' for v in values)})")
    return "\n".join(lines)


@dataclass
class SavedSplit:
    """A saved run loaded for one split: its config, inputs, model, device, the split ready for
    the loop and the node table (what ``evaluate_run`` and ``trainer.ensemble`` both need)."""

    config: TrainConfig
    inputs: TrainInputs
    model: Tagger
    device: torch.device
    split: Split
    table: object


def load_saved_split(run_dir, split: str, device: str = "auto", data_dir=None) -> SavedSplit:
    """Load a saved run from its folder alone for ``split``. The model loads from safetensors +
    JSON; the node table, neighbours and context from the run's ``pool.h5`` (older runs: the
    recorded files, refused when changed); the data from ``data_dir`` when given (the recorded
    folder moved), refused unless its content is the one the run was trained on."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise MissingInput("not a run folder (no config.json)", path=run_dir,
                           hint="give a folder under <artifacts>/runs/")
    config = TrainConfig.from_json(run_dir / "config.json")
    inputs = run_inputs(run_dir, config, data_dir)
    if split not in inputs.dataset.labelled_splits():
        raise InvalidConfig(f"unknown split {split!r}; use one of "
                            f"{', '.join(inputs.dataset.labelled_splits())}")
    torch_device = resolve_device(device)
    model, tokenizer, meta = load_tagger(run_dir, torch_device)
    if model.node_shape and tuple(inputs.image.node_shape) != model.node_shape:
        raise CacheMismatch(f"{run_dir}: the model expects node features of shape "
                            f"{list(model.node_shape)}, the recorded files give "
                            f"{list(inputs.image.node_shape)}")
    part = make_splits(inputs, tokenizer, config, meta["label2id"], only=split)[split]
    return SavedSplit(config, inputs, model, torch_device, part,
                      node_table(inputs, config, torch_device))


def evaluate_run(run_dir, split: str = "test", device: str = "auto", data_dir=None,
                 progress=no_progress):
    """Re-score a saved run on ``split`` from its folder alone (``load_saved_split``):
    ``(Evaluation, run config)``."""
    saved = load_saved_split(run_dir, split, device, data_dir)
    config = saved.config
    result = evaluate(saved.model, saved.split, saved.device, saved.table,
                      config.optim.eval_batch_size, config.precision,
                      saved.inputs.dataset.type_names, progress)
    return result, config
