"""pipeline.distributed and the sharded search across processes: two gloo processes on the CPU,
started the way torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), give
exactly the I and D of one process, on data with deliberate ties and from an HDF5 pool."""
from __future__ import annotations

import os
import socket

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pipeline.distributed import Distributed, launcher_env, share_bounds
from pipeline.errors import MnerError
from pipeline.sharded_search import sharded_search

WORLD = 2


def test_shares_are_contiguous_balanced_and_cover_every_row():
    for n in (0, 1, 5, 13):
        for world in (1, 2, 3, 4):
            bounds = [share_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1
    assert [share_bounds(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]


def test_without_a_launcher_it_is_one_process_and_joins_nothing():
    assert launcher_env({}) is None
    dist = Distributed.from_env(device="cpu", environ={})
    assert (dist.rank, dist.world, dist.is_main, dist.active) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()
    x = np.arange(6, dtype=np.float16).reshape(3, 2)
    assert np.array_equal(dist.all_gather(x)[0], x)
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}] and dist.share(7) == (0, 7)
    dist.barrier()
    dist.close()
    one = Distributed.from_env(device="cpu", environ={"WORLD_SIZE": "1", "RANK": "0"})
    assert not one.active and not torch.distributed.is_initialized()


def test_a_bad_launcher_environment_is_refused_in_one_line():
    with pytest.raises(MnerError, match=r"^the launcher gave rank 2 of a world of 2$"):
        launcher_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    with pytest.raises(MnerError, match="must be integers"):
        launcher_env({"WORLD_SIZE": "two"})
    with pytest.raises(MnerError, match=r"^WORLD_SIZE is 2 but MASTER_ADDR, MASTER_PORT is not "):
        Distributed.from_env(device="cpu", environ={"WORLD_SIZE": "2", "RANK": "0",
                                                    "LOCAL_RANK": "0"})


def cases(h5_path=None) -> dict:
    """name -> (xq, xb, k, options): the same data in every process (seeded)."""
    rng = np.random.default_rng(3)
    tie_pool = rng.integers(-1, 2, size=(101, 6)).astype(np.float32)
    tie_pool = np.concatenate([tie_pool, tie_pool[::-1], tie_pool[:1]])  # 203 rows, many ties
    tie_q = rng.integers(-1, 2, size=(37, 6)).astype(np.float32)
    unit = rng.standard_normal((150, 16)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    self_pairs = (np.arange(40), np.arange(40))
    out = {"ties": (tie_q, tie_pool, 7, dict(pool_rows=16, query_rows=10)),
           "random": (unit[:40], unit, 5, dict(pool_rows=32, query_rows=16,
                                                exclude=self_pairs)),
           "pool smaller than k": (tie_q[:4], tie_pool[:5], 7, dict(pool_rows=2, query_rows=3))}
    if h5_path is not None:
        handle = h5py.File(h5_path, "r")
        out["ties, pool from HDF5"] = (tie_q, handle["features"], 7,
                                       dict(pool_rows=16, query_rows=10))
    return out


def write_pool(path) -> None:
    """The ties pool as float16 rows in an HDF5 file (exact: the values are -1, 0, 1)."""
    xb = cases()["ties"][1]
    with h5py.File(path, "w") as h5:
        h5.create_dataset("features", data=xb.astype(np.float16), chunks=(16, xb.shape[1]))


def worker(rank: int, port: int, folder: str) -> None:
    """One rank, started as torchrun would start it; saves its results for the parent."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with Distributed.from_env(device="cpu") as dist:
        assert (dist.rank, dist.world, dist.backend, dist.active) == (rank, WORLD, "gloo", True)
        mine = np.full((rank + 1, 2), rank, dtype=np.float16)          # unequal row counts
        gathered = dist.all_gather(mine)
        assert [g.tolist() for g in gathered] == [[[0, 0]], [[1, 1], [1, 1]]]
        assert [g.dtype for g in gathered] == [np.float16] * 2
        assert dist.all_gather_object(("rank", rank)) == [("rank", 0), ("rank", 1)]
        dist.barrier()
        results = {}
        for n, (name, (xq, xb, k, options)) in enumerate(
                cases(os.path.join(folder, "pool.h5")).items()):
            results[f"D{n}"], results[f"I{n}"] = sharded_search(xq, xb, k, dist=dist, **options)
        np.savez(os.path.join(folder, f"rank{rank}.npz"), **results)
    assert not torch.distributed.is_initialized()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_give_exactly_what_one_process_gives(tmp_path):
    write_pool(tmp_path / "pool.h5")
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for n, (name, (xq, xb, k, options)) in enumerate(cases(tmp_path / "pool.h5").items()):
        D, I = sharded_search(xq, xb, k, **options)          # one process, no group
        for rank in range(WORLD):
            saved = np.load(tmp_path / f"rank{rank}.npz")
            np.testing.assert_array_equal(saved[f"I{n}"], I, err_msg=f"{name}, rank {rank}")
            np.testing.assert_array_equal(saved[f"D{n}"], D, err_msg=f"{name}, rank {rank}")
    D, I = sharded_search(*cases()["pool smaller than k"][:3], pool_rows=2)
    assert (I[:, 5:] == -1).all() and np.isnan(D[:, 5:]).all() and (I[:, :5] >= 0).all()
