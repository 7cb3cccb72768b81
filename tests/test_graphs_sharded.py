"""``build-graphs`` on two gloo ranks (started as torchrun starts them) writes the graph files one
process writes: the ranks share the pool of the exact search, rank 0 writes."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.multiprocessing as mp

from pipeline.data import load_dataset
from pipeline.graphs import GraphConfig, build_graphs, read_graph
from test_distributed import free_port
from test_graphs import write_features

WORLD = 2
CONFIGS = [dict(k=3, relations=("inter", "intra", "text"), ties="index"),
           dict(k=3, relations=("inter", "intra"), ties="random"),
           dict(k=2, relations=("inter",), hubness="csls", csls_k=3, ties="index")]


def feature_files(folder) -> list:
    """text and image_global in one space, object_types with massive exact ties."""
    rng = np.random.default_rng(5)
    unit = rng.standard_normal((24, 8)).astype(np.float32)
    objects = rng.integers(0, 2, size=(12, 3)).astype(np.float32)    # 8 patterns for 12 rows
    objects[4] = 0                                                   # one without objects
    sha = [f"h{i}" for i in range(12)]
    sha[7] = sha[2]                                                  # a duplicate image
    return [write_features(folder / "text.h5", "text", unit[:12]),
            write_features(folder / "image.h5", "image_global", unit[12:], sha=sha),
            write_features(folder / "objects.h5", "object_types", objects,
                           space="objects:test", sha=sha)]


def build_all(tiny_dir, artifacts, files) -> dict:
    dataset = load_dataset(tiny_dir)
    return {(n, r.name): r.path for n, config in enumerate(CONFIGS)
            for r in build_graphs(dataset, artifacts, GraphConfig(**config), features=files)}


def rank_main(rank: int, port: int, tiny_dir: str, artifacts: str, files: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    build_all(tiny_dir, artifacts, files)


def test_two_ranks_write_the_graphs_one_process_writes(tiny_dir, tmp_path):
    files = feature_files(tmp_path)
    one = build_all(tiny_dir, tmp_path / "one", files)
    mp.spawn(rank_main, args=(free_port(), str(tiny_dir), str(tmp_path / "two"), files),
             nprocs=WORLD, join=True)
    assert len(one) == 6
    for key, path in one.items():
        a, b = read_graph(path), read_graph(tmp_path / "two" / path.relative_to(tmp_path / "one"))
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"], key
        assert a.query_ids == b.query_ids and a.pool_ids == b.pool_ids, key
        np.testing.assert_array_equal(b.I, a.I, err_msg=str(key))
        np.testing.assert_allclose(b.D, a.D, atol=1e-6, err_msg=str(key))
        np.testing.assert_array_equal(b.flagged, a.flagged)
        assert a.flag_reason == b.flag_reason
        assert "sharded exact (2 rank(s), cpu)" in b.attrs["backend"]
        if CONFIGS[key[0]]["ties"] == "index":
            assert a.attrs["backend"] == "sharded exact (1 rank(s), cpu)"
