"""The training loop and the evaluation pass: one ``train``, one ``evaluate``, shared by the CLI,
the benchmark and any results script.

``train``: AdamW with a learning rate for the encoder and one for the new layers, linear warm-up
then linear decay, gradient clipping, bf16 autocast on CUDA, a seeded DataLoader generator,
evaluation on the validation split after every epoch, early stopping and model selection on that
split only. Nothing here touches images or a search index: node features arrive as a table (on
the device, or on the host: ``batches.HostTable``).

Under torchrun (``prep.dist`` in a group of N processes): every rank draws the same global
batches from the seeded generator and takes its contiguous share of each (``share_bounds``), the
step sums the share-weighted gradients (``steps.GradientSync``), so the N-process loss curve is
the one-process curve up to float rounding (and dropout masks, which each rank draws itself).
Evaluation is spread too: each rank decodes its share of the split (sorted by length) and the
tags are gathered, so every rank scores the same predictions and takes the same early-stopping
decision; only the caller's rank 0 writes anything (``run.train_run``).
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.distributed import Distributed, share_bounds
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
    table: object                # node features: a device tensor or a HostTable (None: text)
    type_names: TypeNames = field(default_factory=TypeNames)   # the dataset's tag names
    dist: Distributed = field(default_factory=Distributed)     # the ranks (one by default)


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
                 pad_to: tuple[int, int] = (1, 1), dist: Distributed = Distributed(),
                 buckets: int = 0):
    """Global batches of ``batch_size`` in the generator's order; each rank's batch is its share
    of the global one, weighted by its size (None for an empty share, see ``steps``). With
    ``buckets`` the batches are of similar length (``LengthBuckets``)."""
    collate = functools.partial(_share, split.collator, pad_to, dist.rank, dist.world)
    if buckets:
        lengths = [len(ids) for ids in split.encoded.input_ids]
        sampler = LengthBuckets(lengths, batch_size, buckets, generator)
        return DataLoader(range(len(lengths)), batch_sampler=sampler, collate_fn=collate,
                          pin_memory=pin)
    return DataLoader(range(len(split.encoded)), batch_size=batch_size, shuffle=True,
                      generator=generator, collate_fn=collate, pin_memory=pin)


class LengthBuckets:
    """Batches of similar length, drawn afresh each epoch from ``generator``: the examples in a
    random order, cut into chunks of ``buckets`` batches, each chunk sorted by length (stable) and
    cut into batches, then every batch of the epoch in a random order. Less padding (about a third
    fewer word-piece cells on TWITTER-2017 with 50 batches a chunk); every rank draws the same."""

    def __init__(self, lengths, batch_size: int, buckets: int, generator: torch.Generator):
        self.lengths, self.batch_size = np.asarray(lengths), batch_size
        self.chunk, self.generator = batch_size * buckets, generator

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).numpy()
        batches = []
        for start in range(0, len(order), self.chunk):
            part = order[start:start + self.chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[i:i + self.batch_size].tolist()
                        for i in range(0, len(part), self.batch_size)]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


def _share(collator: Collator, pad_to, rank: int, world: int, positions: list[int]):
    if world == 1:
        return collator(positions, pad_to=pad_to)
    lo, hi = share_bounds(len(positions), rank, world)
    if lo == hi:
        return None
    batch = collator(positions[lo:hi], pad_to=pad_to)
    batch.weight = torch.tensor((hi - lo) / len(positions))
    return batch


def eval_loader(split: Split, batch_size: int, pin: bool, dist: Distributed = Distributed()):
    """Batches of similar length (less padding); ``Batch.positions`` maps results back. Each
    rank takes its contiguous share of the examples in length order."""
    order = np.argsort([len(ids) for ids in split.encoded.input_ids], kind="stable")
    order = order[slice(*dist.share(len(order)))]
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
def evaluate(model, split: Split, device: torch.device, table=None,
             batch_size: int = 64, precision: str = "auto",
             type_names: TypeNames = TypeNames(), progress=no_progress,
             dist: Distributed = Distributed()) -> Evaluation:
    """Decode every example of ``split`` and score it against the gold tags (no scores when
    ``split.gold`` is None: untagged input). Words cut off by ``max_subwords`` are tagged ``O``
    (``Encoded.truncated_words`` counts them). In a group, each rank decodes its share and every
    rank gets all the tags (collective: all ranks call)."""
    start = time.perf_counter()
    model.eval()
    with attention_kernels(device):
        tags = _decode_split(model, split, device, table, batch_size, precision, progress, dist)
    if dist.active:
        merged = [None] * len(tags)
        for part in dist.all_gather_object({p: t for p, t in enumerate(tags) if t is not None}):
            for position, words in part.items():
                merged[position] = words
        tags = merged
    scores = None if split.gold is None else score(split.gold, tags, type_names)
    return Evaluation(tags, scores, time.perf_counter() - start)


def _decode_split(model, split: Split, device, table, batch_size: int, precision: str,
                  progress=no_progress, dist: Distributed = Distributed()):
    labels = model.labels
    tags: list[list[str] | None] = [None] * len(split.encoded)
    loader = eval_loader(split, batch_size, device.type == "cuda", dist)
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
    precision, type_names, dist = prep.config.precision, prep.type_names, prep.dist
    generator = torch.Generator().manual_seed(prep.config.seed)
    pin = device.type == "cuda"
    graphs = uses_graphs(device, optim.cuda_graphs)
    optimizer = torch.optim.AdamW(_param_groups(model, optim, device if graphs else None),
                                  fused=pin, capturable=graphs)
    step = make_step(model, optimizer, optim.clip, device, precision, table, graphs, dist)
    loader = train_loader(train_split, optim.batch_size, generator, pin, step.pad_to, dist,
                          optim.length_buckets)
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
                         type_names, dist=dist)
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
