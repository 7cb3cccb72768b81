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

Under DDP (``GradientSync`` with a process group) each rank's batch is its share of the global
batch, its mean loss is scaled by that share (``Batch.weight``) and the gradients are summed over
the ranks between backward and the optimiser step: the summed gradient is the gradient of the
global batch's mean loss, as one process computes it. The gradients live in one flat buffer
(each ``.grad`` a view of it, as DDP's ``gradient_as_bucket_view``), so one all-reduce moves them
all. With CUDA graphs a rank replays forward + backward as a graph (the backward accumulates into
the fixed flat buffer, zeroed just before), then all-reduces eagerly and runs clipping and the
optimiser step eagerly: a collective inside a captured graph needs NCCL's graph support and
would tie every rank's graph to the others', so it stays outside, as PyTorch's CUDA-graph notes
advise for DDP. A rank whose share of a short last batch is empty gets ``None``: it adds zero
gradients and still takes part in the all-reduce.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections import Counter

import torch
import torch.distributed as td

from pipeline.distributed import Distributed
from pipeline.runtime import autocast

from .batches import Batch, HostTable

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


class GradientSync:
    """Gradients summed over the ranks of ``dist`` (see the module docstring); for one process
    every method is the plain single-process behaviour.

    On a group: the trainable parameters are broadcast from rank 0 (every rank starts from the
    same weights) and their ``.grad`` become views of one flat buffer, zeroed in place (never set
    to None, which would drop the views)."""

    def __init__(self, parameters: list[torch.Tensor], dist: Distributed | None = None):
        self.dist = dist or Distributed()
        self.parameters, self.flat = parameters, None
        if not self.dist.active:
            return
        with torch.no_grad():
            for param in parameters:
                td.broadcast(param.data, src=0)
        self.flat = torch.zeros(sum(p.numel() for p in parameters), dtype=parameters[0].dtype,
                                device=parameters[0].device)
        offset = 0
        for param in parameters:
            param.grad = self.flat[offset:offset + param.numel()].view_as(param)
            offset += param.numel()

    def zero(self, optimizer: torch.optim.Optimizer) -> None:
        if self.flat is None:
            optimizer.zero_grad(set_to_none=True)
        else:
            self.flat.zero_()

    def __call__(self) -> None:
        """Sum the gradients over the ranks (in place)."""
        if self.flat is not None:
            td.all_reduce(self.flat)

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the ranks (a copy; ``value`` itself is left as it is)."""
        value = value.clone()
        if self.flat is not None:
            td.all_reduce(value)
        return value


class EagerStep:
    """``step(batch)`` trains on one batch (on the CPU, pinned or not); ``take_loss()`` returns
    the summed loss since the last call (summed over the ranks: one host sync) and restarts the
    sum. ``table``: a device tensor (rows gathered on the device in the step) or a ``HostTable``
    (rows gathered on the host as the batch is sent). ``sync``: the ranks' gradient sum."""

    pad_to = (1, 1)

    def __init__(self, model, optimizer, clip: float, device: torch.device, precision: str,
                 table=None, sync: GradientSync | None = None):
        self.model, self.optimizer, self.clip = model, optimizer, clip
        self.device, self.precision = device, precision
        self.host = table if isinstance(table, HostTable) else None
        self.table = None if self.host is not None else table
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.sync = sync or GradientSync(self.parameters)
        self.total = torch.zeros((), device=device)
        self.eager_steps = 0

    def forward_backward(self, batch: Batch, cache: bool = True) -> None:
        """Loss and gradients of a batch already on the device (gathers its node rows from a
        device table); the loss is scaled by the batch's share of the global batch."""
        with autocast(self.device, self.precision, cache):
            loss = self.model.loss(batch.to(self.device, self.table))
        if batch.weight is not None:
            loss = loss * batch.weight
        loss.backward()
        self.total += loss.detach()

    def finish(self) -> None:
        """The ranks' gradient sum, clipping and the optimiser step."""
        self.sync()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        self.optimizer.step()

    def compute(self, batch: Batch, cache: bool = True) -> None:
        self.forward_backward(batch, cache)
        self.finish()

    def __call__(self, batch: Batch | None) -> None:
        self.sync.zero(self.optimizer)
        if batch is None:          # an empty share: zero gradients into the sum
            self.finish()
        else:
            host = self.host if batch.nodes_x is None else None   # not gathered yet
            self.compute(batch.to(self.device, host))
        self.eager_steps += 1

    def take_loss(self) -> float:
        value = self.sync.total(self.total).item()
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

    def __call__(self, batch: Batch | None) -> None:
        if batch is None:
            return super().__call__(batch)
        if self.host is not None:          # the graph's inputs take the gathered rows
            batch = batch.to("cpu", self.host)
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
        if self.sync.flat is None:
            graph.replay()                 # the whole step
        else:
            self.sync.zero(self.optimizer)
            graph.replay()                 # forward + backward into the flat gradients
            self.finish()                  # all-reduce, clip and step, eagerly
        self.replays += 1

    def _capture(self, key: tuple, batch: Batch):
        """A graph of the step on this shape, or None (and eager steps from now on) if the
        capture fails. The caller replays it for ``batch``: capturing runs nothing."""
        static = batch.to(self.device)        # the graph's input tensors, outside its pool
        if self.sync.flat is None:
            self.optimizer.zero_grad(set_to_none=True)   # the captured backward writes them
            work = functools.partial(self.compute, static, cache=False)
        else:       # forward + backward only, accumulating into the fixed flat gradients
            work = functools.partial(self.forward_backward, static, cache=False)
        try:
            graph = self.cuda.capture(work)
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
              table, graphs: bool, dist: Distributed | None = None) -> EagerStep:
    """``graphs``: as ``uses_graphs`` decided (the optimiser must have been made to match);
    ``dist``: the process group whose ranks sum their gradients (None: one process)."""
    kind = GraphedStep if graphs else EagerStep
    sync = GradientSync([p for p in model.parameters() if p.requires_grad], dist)
    return kind(model, optimizer, clip, device, precision, table, sync=sync)
