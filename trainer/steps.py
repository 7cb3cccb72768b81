"""One training step (forward, backward, gradient clipping, optimiser step), run eagerly or
replayed as a CUDA graph.

On a GPU a step of the tagger costs the host's time to launch its kernels, not the GPU's work:
MiniLM-L6 forward and backward, the image branch, the CRF and AdamW make several hundred small
kernels, and the GPU is busy 3-5 ms of a 20-30 ms step (``bench/results/train-h200-dense.json``).
``GraphedStep`` records the whole step once per batch shape as a CUDA graph and then replays it
with one launch. Batches are padded to multiples of ``PAD_TO`` (subwords, words) so that they come
in few shapes; padding is masked everywhere (attention, CRF, the text node's mean), so it changes
results by float rounding only.

How a shape goes: its first ``WARMUP`` steps run eagerly on a side stream (the optimiser's state
and the libraries' workspaces are created there, outside any graph); the next one is captured
into a graph that shares one memory pool with the others and replayed from then on (copy the
batch into the graph's own input tensors, replay). Sharing the pool is safe because nothing a
step allocates outlives it: the loss is added into ``total``, made outside the pool. What the
capture needs is in place: AdamW is ``capturable`` with its learning rates held in device tensors
(``set_learning_rates`` fills them from the host schedule between steps), autocast runs without
its weight cache, and nothing in the step reads a device value on the host. A capture that fails
anyway (a library that synchronises inside its forward) is reported once, and the training goes
on eagerly: never a wrong result, at worst the eager speed.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import Counter

import torch

from pipeline.runtime import autocast

from .batches import Batch

PAD_TO = (32, 16)   # a CUDA-graph training pads subwords and words to these multiples
WARMUP = 2          # eager steps of a batch shape before it is captured


def uses_graphs(device: torch.device, enabled: bool) -> bool:
    return enabled and device.type == "cuda"


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float):
    """Each group's rate = its ``base_lr`` x ``factor``; a rate held in a tensor is filled in place
    (a captured optimiser step reads it from there)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(group["base_lr"] * factor)
        else:
            group["lr"] = group["base_lr"] * factor


class EagerStep:
    """``step(batch)`` trains on one batch (on the CPU, pinned or not); ``take_loss()`` returns
    the summed loss since the last call (one host sync) and restarts the sum."""

    pad_to = (1, 1)

    def __init__(self, model, optimizer, clip: float, device: torch.device, precision: str,
                 table: torch.Tensor | None = None):
        self.model, self.optimizer, self.clip = model, optimizer, clip
        self.device, self.precision, self.table = device, precision, table
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.total = torch.zeros((), device=device)
        self.eager_steps = 0

    def compute(self, batch: Batch, cache: bool = True) -> None:
        """The step on a batch already on the device (gathers its node rows from the table)."""
        with autocast(self.device, self.precision, cache):
            loss = self.model.loss(batch.to(self.device, self.table))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        self.optimizer.step()
        self.total += loss.detach()

    def __call__(self, batch: Batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.compute(batch.to(self.device))
        self.eager_steps += 1

    def take_loss(self) -> float:
        value = self.total.item()
        self.total.zero_()
        return value

    def record(self) -> dict:
        return {"mode": "eager", "eager_steps": self.eager_steps}


class CudaGraphs:
    """The CUDA calls of ``GraphedStep``, in one place: one memory pool shared by its graphs, a
    side stream for the eager warm-up steps, capture and synchronisation. (The tests run
    ``GraphedStep`` on the CPU through a stand-in with the same methods.)"""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def side_stream(self):
        main = torch.cuda.current_stream(self.device)
        self.side.wait_stream(main)
        with torch.cuda.stream(self.side):
            yield
        main.wait_stream(self.side)

    def capture(self, step):
        """Record ``step()`` (its kernels run only on ``replay()``)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            step()
        return graph

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


class GraphedStep(EagerStep):
    """The same step, replayed as one CUDA graph per batch shape (see the module docstring)."""

    pad_to = PAD_TO

    def __init__(self, *args, cuda=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cuda = cuda or CudaGraphs(self.device)
        self.graphs: dict[tuple, tuple[object, Batch]] = {}   # shape -> (graph, its inputs)
        self.seen: Counter = Counter()
        self.failure: str | None = None
        self.replays = 0

    def __call__(self, batch: Batch) -> None:
        key = batch.shape_key()
        entry = self.graphs.get(key)
        if entry is None and self.failure is None and self.seen[key] >= WARMUP:
            entry = self._capture(key, batch)
        if entry is None:
            self.seen[key] += 1
            with self.cuda.side_stream():
                super().__call__(batch)
            return
        graph, static = entry
        static.copy_(batch)
        graph.replay()
        self.replays += 1

    def _capture(self, key: tuple, batch: Batch):
        """A graph of the step on this shape, or None (and eager steps from now on) if the
        capture fails. The caller replays it for ``batch``: capturing runs nothing."""
        static = batch.to(self.device)        # the graph's input tensors, outside its pool
        self.optimizer.zero_grad(set_to_none=True)   # the captured backward writes them afresh
        try:
            graph = self.cuda.capture(lambda: self.compute(static, cache=False))
        except Exception as err:  # noqa: BLE001 - reported; the eager step then runs
            self.failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
            warnings.warn(f"CUDA graph capture failed ({self.failure}); training goes on "
                          "without CUDA graphs (eager steps)", RuntimeWarning, stacklevel=3)
            self.cuda.synchronize()
            return None
        self.graphs[key] = (graph, static)
        return graph, static

    def record(self) -> dict:
        return {"mode": "cuda-graph" if self.failure is None else "eager (capture failed)",
                "graphs": len(self.graphs), "graph_steps": self.replays,
                "eager_steps": self.eager_steps, "capture_failure": self.failure,
                "pad_to": list(self.pad_to), "warmup": WARMUP}


def make_step(model, optimizer, clip: float, device: torch.device, precision: str,
              table: torch.Tensor | None, graphs: bool) -> EagerStep:
    """``graphs``: as ``uses_graphs`` decided (the optimiser must have been made to match)."""
    kind = GraphedStep if graphs else EagerStep
    return kind(model, optimizer, clip, device, precision, table)
