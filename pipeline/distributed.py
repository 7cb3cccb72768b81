"""The process group under ``torchrun``: one small object, a no-op for a single process.

    dist = Distributed.from_env()      # joins torchrun's group; rank 0 of 1 without a launcher
    lo, hi = dist.share(n)             # this rank's contiguous rows [lo, hi) of n items
    parts = dist.all_gather(array)     # every rank's numpy array, in rank order
    dist.close()                       # or ``with Distributed.from_env() as dist: ...``

Launch (torch's own engine; no process pool, socket protocol or scheduler of ours)::

    torchrun --nproc-per-node N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT] SCRIPT ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each
process; ``from_env`` reads them and joins the group with NCCL when the rank runs on CUDA (device
``cuda:LOCAL_RANK``), gloo on the CPU. Without them (a plain ``python ...``) or with
``WORLD_SIZE=1`` no process group is made: rank 0 of 1, every collective returns its input,
``barrier`` returns at once.

Shares are contiguous and deterministic: rank r of w gets rows ``[n*r//w, n*(r+1)//w)``, so the
shares in rank order are the rows in order and their sizes differ by at most one.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
import torch.distributed as td

from .errors import MnerError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def share_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` items that rank ``rank`` of ``world`` takes (contiguous)."""
    return n * rank // world, n * (rank + 1) // world


def launcher_env(environ=None) -> dict[str, int] | None:
    """``{"rank", "world", "local_rank"}`` from torchrun's variables, or None when absent."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    try:
        values = {name: int(environ.get(name, "0")) for name in ENV}
    except ValueError:
        raise MnerError("the launcher's RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                        + ", ".join(f"{n}={environ.get(n)!r}" for n in ENV),
                        value=[environ.get(n) for n in ENV]) from None
    rank, world = values["RANK"], values["WORLD_SIZE"]
    if world < 1 or not 0 <= rank < world:
        raise MnerError(f"the launcher gave rank {rank} of a world of {world}",
                        value=(rank, world))
    return {"rank": rank, "world": world, "local_rank": values["LOCAL_RANK"]}


def launched_rank(environ=None) -> int:
    """This process's rank as the launcher numbered it (0 without a launcher): who prints."""
    env = launcher_env(environ)
    return 0 if env is None else env["rank"]


@dataclasses.dataclass
class Distributed:
    """This process's place in the group. ``Distributed()`` is the single process (no group);
    ``from_env`` joins the group torchrun describes. ``device`` is where this rank computes
    (``cuda:LOCAL_RANK`` under NCCL, ``cpu`` under gloo); collectives move data through it."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None        # "nccl" or "gloo" once a group is joined, else None
    owns_group: bool = False          # we initialised the group, so ``close`` destroys it

    @classmethod
    def from_env(cls, device: str = "auto", backend: str | None = None,
                 environ=None) -> "Distributed":
        """Join torchrun's group (see the module docstring); a single process without it.

        ``device``: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``; ``backend``
        overrides nccl/gloo; ``environ`` (default ``os.environ``) is where the launcher's
        variables are read (the group itself reads MASTER_ADDR/PORT from ``os.environ``)."""
        env = launcher_env(environ)
        local = 0 if env is None else env["local_rank"]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        cuda = device.startswith("cuda")
        where = f"cuda:{local}" if device == "cuda" else device
        if env is None or env["world"] == 1:
            return cls(device=where)
        if cuda:
            torch.cuda.set_device(torch.device(where))
        backend = backend or ("nccl" if cuda else "gloo")
        owns = not td.is_initialized()
        if owns:
            missing = [n for n in ("MASTER_ADDR", "MASTER_PORT")
                       if n not in (os.environ if environ is None else environ)]
            if missing:
                raise MnerError(f"WORLD_SIZE is {env['world']} but {', '.join(missing)} is not "
                                "set; start the processes with torchrun", value=missing)
            td.init_process_group(backend, rank=env["rank"], world_size=env["world"])
        return cls(env["rank"], env["world"], local, where, td.get_backend(), owns)

    @property
    def active(self) -> bool:
        """True when there is a group of more than one process."""
        return self.backend is not None and self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> str:
        """Where collectives move tensors: this rank's GPU under NCCL, the CPU under gloo."""
        return self.device if self.backend == "nccl" else "cpu"

    def share(self, n: int) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of ``n`` items (``share_bounds``)."""
        return share_bounds(n, self.rank, self.world)

    def barrier(self) -> None:
        if self.active:
            td.barrier()

    def all_gather(self, array) -> list[np.ndarray]:
        """Every rank's ``array``, in rank order. The arrays may differ in their first dimension;
        dtype and the other dimensions must agree. Any fixed-size dtype travels (as bytes)."""
        array = np.ascontiguousarray(array)
        if array.ndim == 0:
            raise MnerError("all_gather takes arrays with rows; gather a scalar as shape (1,)",
                            value=array.shape)
        if not self.active:
            return [array]
        cells = int(np.prod(array.shape[1:], dtype=np.int64))
        rows = array.reshape(len(array), cells).view(np.uint8)       # each row as its bytes
        width, where = cells * array.itemsize, self.comm_device
        sizes = [torch.zeros(1, dtype=torch.int64, device=where) for _ in range(self.world)]
        td.all_gather(sizes, torch.tensor([len(rows)], dtype=torch.int64, device=where))
        sizes = [int(s.item()) for s in sizes]
        padded = torch.zeros((max(1, *sizes), width), dtype=torch.uint8, device=where)
        padded[:len(rows)] = torch.from_numpy(rows).to(where)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        td.all_gather(parts, padded)
        return [part[:size].cpu().numpy().view(array.dtype).reshape((size,) + array.shape[1:])
                for part, size in zip(parts, sizes)]

    def all_gather_object(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order."""
        if not self.active:
            return [obj]

        out = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Leave the group if we joined it (idempotent)."""
        if self.owns_group:
            if td.is_initialized():
                td.destroy_process_group()
            self.owns_group = False

    def __enter__(self) -> "Distributed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
