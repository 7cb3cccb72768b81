"""The training loop and the evaluation pass: one ``train``, one ``evaluate``, shared by the CLI,
the benchmark and any results script.

``train``: AdamW with a learning rate for the encoder and one for the new layers, linear warm-up
then linear decay, gradient clipping, bf16 autocast on CUDA, a seeded DataLoader generator,
evaluation on the validation split after every epoch, early stopping and model selection on that
split only. Nothing here touches images or a search index: node features arrive as one device
tensor.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.labels import TypeNames
from pipeline.progress import no_progress
from pipeline.runtime import autocast

from .batches import Collator, Encoded
from .config import OptimConfig, TrainConfig
from .metrics import score
from .steps import make_step, set_learning_rates, uses_graphs


@dataclass
class Split:
    """One split ready for the loop: its encoded examples, their collator and the gold tags."""

    name: str
    encoded: Encoded
    collator: Collator
    gold: list[list[str]] | None   # None: untagged input, no scores


@dataclass
class Prepared:
    """Everything a training pass needs, built from a config and its inputs (``run.prepare``)."""

    config: TrainConfig          # with node_view and encoder resolved to what is actually used
    device: torch.device
    tokenizer: object
    encoder_record: dict
    model: torch.nn.Module       # the Tagger
    splits: dict[str, Split]
    table: torch.Tensor | None   # node features on the device (None for text-only)
    type_names: TypeNames = field(default_factory=TypeNames)   # the dataset's tag names


@dataclass
class Evaluation:
    tags: list[list[str]]        # predicted tags per example (internal names), full length
    scores: dict                 # metrics.score output
    seconds: float


@dataclass
class Outcome:
    best_epoch: int
    best_state: dict
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    steps: dict = field(default_factory=dict)   # how the steps ran (steps.EagerStep.record)


def attention_kernels(device: torch.device):
    """On CUDA, scaled-dot-product attention without its cuDNN backend, which builds an execution
    plan for every new input shape (tweet batches bring dozens: seconds of the first epoch) and
    costs more host time per call than the flash and memory-efficient kernels."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH])


def train_loader(split: Split, batch_size: int, generator: torch.Generator, pin: bool,
                 pad_to: tuple[int, int] = (1, 1)):
    return DataLoader(range(len(split.encoded)), batch_size=batch_size, shuffle=True,
                      generator=generator, collate_fn=functools.partial(split.collator,
                                                                        pad_to=pad_to),
                      pin_memory=pin)


def eval_loader(split: Split, batch_size: int, pin: bool):
    """Batches of similar length (less padding); ``Batch.positions`` maps results back."""
    order = np.argsort([len(ids) for ids in split.encoded.input_ids], kind="stable")
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return DataLoader(range(len(split.encoded)), batch_sampler=batches,
                      collate_fn=split.collator, pin_memory=pin)


def _param_groups(model, optim: OptimConfig, lr_device: torch.device | None = None):
    """AdamW groups: encoder / new layers x with / without weight decay. With ``lr_device`` the
    rates are tensors there (a CUDA-graph step reads them from device memory)."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        encoder = name.startswith("encoder.")
        decay = param.ndim >= 2 and not name.startswith("crf.")
        key = (encoder, decay)
        lr = optim.lr_encoder if encoder else optim.lr_head
        held = lr if lr_device is None else torch.tensor(lr, device=lr_device)
        groups.setdefault(key, {"params": [], "base_lr": lr, "lr": held,
                                "weight_decay": optim.weight_decay if decay else 0.0,
                                "name": "encoder" if encoder else "new"})
        groups[key]["params"].append(param)
    return list(groups.values())


def _schedule(total: int, warmup: float):
    warm = int(total * warmup)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))
    return factor


@torch.no_grad()
def evaluate(model, split: Split, device: torch.device, table: torch.Tensor | None = None,
             batch_size: int = 64, precision: str = "auto",
             type_names: TypeNames = TypeNames(), progress=no_progress) -> Evaluation:
    """Decode every example of ``split`` and score it against the gold tags (no scores when
    ``split.gold`` is None: untagged input). Words cut off by ``max_subwords`` are tagged ``O``
    (``Encoded.truncated_words`` counts them)."""
    start = time.perf_counter()
    model.eval()
    with attention_kernels(device):
        tags = _decode_split(model, split, device, table, batch_size, precision, progress)
    scores = None if split.gold is None else score(split.gold, tags, type_names)
    return Evaluation(tags, scores, time.perf_counter() - start)


def _decode_split(model, split: Split, device, table, batch_size: int, precision: str,
                  progress=no_progress):
    labels = model.labels
    tags: list[list[str] | None] = [None] * len(split.encoded)
    loader = eval_loader(split, batch_size, device.type == "cuda")
    with progress(total=len(loader), desc=f"tagging {split.name}") as bar:
        for batch in loader:
            with autocast(device, precision):
                ids = model.decode(batch.to(device, table)).cpu().tolist()
            for row, position in enumerate(batch.positions.tolist()):
                kept = len(split.encoded.first[position])
                total = int(split.encoded.n_words[position])
                tags[position] = [labels[i] for i in ids[row][:kept]] + ["O"] * (total - kept)
            bar.update(1)
    return tags


def _epoch(step, loader, optimizer, factor, done: int, bar) -> int:
    """One pass over ``loader``; the learning rates follow ``factor`` of the steps ``done``."""
    for batch in loader:
        step(batch)
        done += 1
        set_learning_rates(optimizer, factor(done))
        bar.update(1)
    return done


def train(prep: Prepared, progress=no_progress, on_epoch=None) -> Outcome:
    """Train ``prep.model`` in place on its train split, select on its valid split; return the
    best epoch's weights (by valid F1, conlleval mode). The batch order is drawn from a generator
    seeded with ``prep.config.seed``.

    ``on_epoch(record)`` is called after each epoch with a dict: epoch, train_loss, train_seconds,
    valid_seconds, the learning rates at the epoch's end (lr_encoder, lr_new), valid scores, and
    best (whether this epoch is the best so far).
    """
    model, device, table, optim = prep.model, prep.device, prep.table, prep.config.optim
    train_split, valid_split = prep.splits["train"], prep.splits["valid"]
    precision, type_names = prep.config.precision, prep.type_names
    generator = torch.Generator().manual_seed(prep.config.seed)
    pin = device.type == "cuda"
    graphs = uses_graphs(device, optim.cuda_graphs)
    optimizer = torch.optim.AdamW(_param_groups(model, optim, device if graphs else None),
                                  fused=pin, capturable=graphs)
    step = make_step(model, optimizer, optim.clip, device, precision, table, graphs)
    loader = train_loader(train_split, optim.batch_size, generator, pin, step.pad_to)
    factor, done = _schedule(optim.epochs * len(loader), optim.warmup), 0
    set_learning_rates(optimizer, factor(done))
    outcome = Outcome(best_epoch=0, best_state={})
    best_f1, stale = -1.0, 0
    for epoch in range(1, optim.epochs + 1):
        model.train()
        start = time.perf_counter()
        with progress(total=len(loader), desc=f"epoch {epoch}/{optim.epochs}") as bar, \
                attention_kernels(device):
            done = _epoch(step, loader, optimizer, factor, done, bar)
        train_loss = step.take_loss() / len(loader)  # the one host sync of the epoch
        seconds = time.perf_counter() - start
        valid = evaluate(model, valid_split, device, table, optim.eval_batch_size, precision,
                         type_names)
        f1 = valid.scores["conlleval"]["overall"]["f1"]
        improved = f1 > best_f1
        if improved:
            best_f1, stale, outcome.best_epoch = f1, 0, epoch
            outcome.best_state = {k: v.detach().clone()   # on the device: no host sync
                                  for k, v in model.state_dict().items()}
        else:
            stale += 1
        record = {"epoch": epoch, "train_loss": train_loss, "train_seconds": seconds,
                  "valid_seconds": valid.seconds,
                  **{f"lr_{g['name']}": g["base_lr"] * factor(done)
                     for g in optimizer.param_groups},
                  "valid": valid.scores, "best": improved}
        outcome.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if stale >= optim.patience:
            outcome.stopped_early = epoch < optim.epochs
            break
    outcome.steps = step.record()
    return outcome
