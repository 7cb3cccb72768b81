"""Exact top-k search: every backend against a brute-force numpy reference (ties allowed)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline import search as search_module
from pipeline.errors import MissingInput, MnerError
from pipeline.search import estimate_recall, recall_at_k, same_item_pairs, search
from pipeline.sharded_search import merge_topk, row_blocks, sharded_search


def torch_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def unit(rows, dims, seed=0):
    x = np.random.default_rng(seed).standard_normal((rows, dims)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(xq, xb, k, exclude=()):
    """Reference: float64 scores, excluded pairs removed, sorted (stable) best first."""
    S = xq.astype(np.float64) @ xb.astype(np.float64).T
    for q, b in exclude:
        S[q, b] = -np.inf
    I = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, I, axis=1), I, S


def assert_exact(D, I, xq, xb, k, exclude=(), atol=1e-5):
    """Same score multiset per row as brute force; an id that differs must have a tied score."""
    D_ref, I_ref, S = brute_force(xq, xb, k, exclude)
    assert D.shape == I.shape == (len(xq), k) and D.dtype == np.float32 and I.dtype == np.int64
    np.testing.assert_allclose(D, D_ref, atol=atol)
    np.testing.assert_allclose(np.take_along_axis(S, I, axis=1), D, atol=atol)
    for row in np.nonzero((I != I_ref).any(axis=1))[0]:
        for b in set(I[row]) ^ set(I_ref[row]):
            assert abs(S[row, b] - D_ref[row, -1]) <= atol, (row, b)
    assert all(len(set(row)) == k for row in I)


def with_ties(seed=0):
    """A pool where every vector appears twice (tied scores) plus unrelated queries."""
    base = unit(150, 24, seed)
    return unit(40, 24, seed + 1), np.concatenate([base, base[::-1]])


@pytest.mark.parametrize("backend, precision", [("faiss", "auto"), ("torch", "float32"),
                                                ("torch", "float16"), ("torch", "bfloat16")])
def test_every_backend_equals_brute_force_with_ties(backend, precision):
    xq, xb = with_ties()
    info = {}
    D, I = search(xq, xb, 7, backend=backend, precision=precision, info=info)
    assert_exact(D, I, xq, xb, 7)
    assert info["backend"] == ("faiss-cpu" if backend == "faiss" else "torch")


def test_torch_equals_faiss_on_a_larger_pool_in_chunks():
    xb = unit(2000, 64, 3)
    xq = xb[:300]
    D_f, I_f = search(xq, xb, 10, backend="faiss")
    D_t, I_t = search(xq, xb, 10, backend="torch", chunk_rows=70)
    np.testing.assert_allclose(D_t, D_f, atol=1e-5)
    assert (I_t == I_f).mean() > 0.999
    assert_exact(D_t, I_t, xq, xb, 10)


def test_low_precision_rows_too_close_to_call_are_searched_again_in_float32():
    base = unit(1, 32, 5)
    xb = np.concatenate([base + 1e-4 * unit(80, 32, 6), unit(40, 32, 7)])
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = base + 1e-3 * unit(3, 32, 8)
    info = {}
    D, I = search(xq, xb, 5, backend="torch", precision="float16", info=info)
    assert info["fallback_rows"] == 3
    assert_exact(D, I, xq, xb, 5, atol=1e-6)


def test_self_and_same_key_pairs_are_excluded():
    xb = unit(60, 16, 2)
    xb[7] = xb[3]                       # an exact duplicate of item 3 under another id
    ids = [f"i{j}" for j in range(60)]
    sha = ["" for _ in range(60)]
    sha[3] = sha[7] = "dup"
    exclude = same_item_pairs(list(zip(ids, sha)), list(zip(ids, sha)))
    assert sorted(zip(*exclude))[:5] == [(0, 0), (1, 1), (2, 2), (3, 3), (3, 7)]
    for backend in ("faiss", "torch"):
        D, I = search(xb, xb, 4, backend=backend, exclude=exclude)
        assert not (I == np.arange(60)[:, None]).any()
        assert 7 not in I[3] and 3 not in I[7]
        pairs = [(q, b) for q, b in zip(*exclude)]
        assert_exact(D, I, xb, xb, 4, exclude=pairs)


def test_empty_keys_never_match_and_keys_match_only_in_their_slot():
    q, b = same_item_pairs([("a", ""), ("x", "a")], [("b", ""), ("a", "z"), ("c", "")])
    assert list(zip(q, b)) == [(0, 1)]


def test_fewer_candidates_than_k_are_padded_with_minus_one_and_nan():
    xb = unit(3, 8)
    D, I = search(xb, xb, 5, exclude=(np.array([0]), np.array([0])))
    assert (I[0, 2:] == -1).all() and np.isnan(D[0, 2:]).all() and 0 not in I[0]
    assert (I[1, 3:] == -1).all() and (I[1, :3] >= 0).all()
    D, I = search(xb[:2], np.zeros((0, 8), np.float32), 2)
    assert (I == -1).all() and np.isnan(D).all()


def test_approximate_indexes_report_their_recall():
    xb = unit(3000, 32, 4)
    for kind in ("hnsw", "ivf"):
        info = {}
        D, I = search(xb, xb, 10, approx=kind, info=info)
        assert info["backend"] == f"faiss-{kind}"
        recall = estimate_recall(xb, xb, I, 10, sample=300)
        assert 0.8 < recall <= 1.0, (kind, recall)
    _, I_exact = search(xb, xb, 10)
    assert estimate_recall(xb, xb, I_exact, 10, sample=200) == 1.0
    assert recall_at_k(np.array([[1, 2, -1]]), np.array([[2, 3, -1]])) == 0.5


def test_without_faiss_auto_falls_back_to_torch_and_faiss_is_refused(monkeypatch):
    monkeypatch.setattr(search_module, "load_faiss", lambda: None)
    xb = unit(50, 8)
    info = {}
    D, I = search(xb, xb, 3, info=info)
    assert info["backend"] == "torch"
    assert_exact(D, I, xb, xb, 3)
    with pytest.raises(MissingInput) as err:
        search(xb, xb, 3, backend="faiss")
    assert str(err.value) == ("the faiss backend needs faiss, which is not installed (pip "
                              "install faiss-cpu); set backend")
    assert (err.value.setting, err.value.value) == ("backend", "faiss")
    with pytest.raises(MissingInput, match=r"^approximate search \(hnsw\) needs faiss"):
        search(xb, xb, 3, approx="hnsw")


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(MnerError) as err:
        search(unit(2, 8), unit(3, 9), 1)
    assert str(err.value) == ("query vectors have 8 dims but pool vectors 9; both must come from "
                              "the same encoder")
    with pytest.raises(MnerError, match="^unknown search backend 'gpu'; use one of auto, faiss, "):
        search(unit(2, 8), unit(3, 8), 1, backend="gpu")


def test_the_benchmark_runs_small_and_lists_what_it_did_not_run(tmp_path, capsys):
    import importlib.util
    import json
    from conftest import ROOT

    path = ROOT / "bench" / "bench_graphs.py"
    spec = importlib.util.spec_from_file_location("bench_graphs", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--sizes", "400,600", "--dim", "32", "--cpu-max", "500", "--device", "cpu",
                       "--approx-max", "400", "--out", str(tmp_path / "b.json")]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    rows = {(r["size"], r["backend"]): r for r in result["rows"]}
    assert sorted(rows) == [(400, "faiss HNSW"), (400, "faiss IVF"), (400, "faiss IndexFlatIP"),
                            (400, "numpy brute force"), (400, "torch (ours)")]
    assert rows[(400, "faiss IndexFlatIP")]["recall"] == 1.0
    assert rows[(400, "torch (ours)")]["recall"] == 1.0
    assert rows[(400, "numpy brute force")]["ratio"] == 1.0
    assert ("600: numpy brute force not run (over --cpu-max 500 for exact search on the CPU)"
            in result["not_run"])
    assert "400: torch fp16+rescore (ours) not run (no CUDA device)" in result["not_run"]
    assert "not run: 600: faiss HNSW not run (over --approx-max 400)" in capsys.readouterr().out


def integer_ties(seed=3):
    """Vectors of -1, 0, 1: every score is an exact integer, so ties are real ties."""
    rng = np.random.default_rng(seed)
    xb = rng.integers(-1, 2, size=(90, 6)).astype(np.float32)
    return rng.integers(-1, 2, size=(31, 6)).astype(np.float32), np.concatenate([xb, xb[::-1]])


@pytest.mark.parametrize("pool_rows, query_rows", [(1000, 1000), (16, 10), (7, 1), (1, 31)])
def test_sharded_search_breaks_ties_by_the_lower_pool_row(pool_rows, query_rows):
    xq, xb = integer_ties()
    D, I = sharded_search(xq, xb, 9, pool_rows=pool_rows, query_rows=query_rows)
    D_ref, I_ref, _ = brute_force(xq, xb, 9)             # a stable sort: the lower row first
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_array_equal(D, D_ref.astype(np.float32))
    pairs = [(q, q) for q in range(len(xq))] + [(3, 0), (3, 179)]
    exclude = tuple(np.array(side) for side in zip(*pairs))
    D, I = sharded_search(xq, xb, 9, exclude=exclude, pool_rows=pool_rows,
                          query_rows=query_rows)
    np.testing.assert_array_equal(I, brute_force(xq, xb, 9, pairs)[1])


def test_sharded_search_equals_search_on_data_without_ties():
    xb = unit(300, 24, 9)
    xq = xb[:70]
    exclude = (np.arange(70), np.arange(70))
    D_ref, I_ref = search(xq, xb, 6, backend="torch", precision="float32", exclude=exclude)
    D, I = sharded_search(xq, xb, 6, exclude=exclude, pool_rows=64, query_rows=32)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, atol=1e-6)
    assert_exact(D, I, xq, xb, 6, exclude=list(zip(*exclude)))


class CountingRows:
    """An array-like that records how many rows each read asks for."""

    def __init__(self, data):
        self.data, self.shape, self.reads = data, data.shape, []

    def __getitem__(self, rows):
        self.reads.append(rows.stop - rows.start)
        return self.data[rows]


def test_the_pool_streams_from_hdf5_in_row_blocks_and_equals_the_in_memory_path(tmp_path):
    xq, xb = integer_ties()
    xb16 = (xb / 3 + unit(len(xb), 6, 4) / 7).astype(np.float16)   # no ties; float16 storage
    with h5py.File(tmp_path / "pool.h5", "w") as h5:
        h5.create_dataset("features", data=xb16, chunks=(8, 6))
    with h5py.File(tmp_path / "pool.h5", "r") as h5:
        blocks = list(row_blocks(h5["features"], 50, start=10))
        assert [first for first, _ in blocks] == [10, 60, 110, 160]
        assert all(b.dtype == np.float32 for _, b in blocks) and len(blocks[-1][1]) == 20
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), xb16[10:])
        counting = CountingRows(h5["features"])
        D, I = sharded_search(xq, counting, 5, pool_rows=16, query_rows=8)
    assert max(counting.reads) == 16 and sum(counting.reads) == len(xb)
    D_mem, I_mem = sharded_search(xq, xb16.astype(np.float32), 5, pool_rows=16, query_rows=8)
    np.testing.assert_array_equal(I, I_mem)
    np.testing.assert_array_equal(D, D_mem)
    D_one, I_one = sharded_search(xq, xb16.astype(np.float32), 5, pool_rows=len(xb))
    np.testing.assert_array_equal(I, I_one)
    np.testing.assert_allclose(D, D_one, atol=1e-6)


def test_merge_keeps_the_best_k_of_the_union_ties_to_the_lower_row():
    a = (np.array([[0.9, 0.5, np.nan]], np.float32), np.array([[7, 3, -1]]))
    b = (np.array([[0.5, 0.5]], np.float32), np.array([[9, 1]]))
    D, I = merge_topk([a, b], 4)
    assert I.tolist() == [[7, 1, 3, 9]] and D[0].tolist() == pytest.approx([0.9, 0.5, 0.5, 0.5])
    D, I = merge_topk([a], 4)
    assert I.tolist() == [[7, 3, -1, -1]] and np.isnan(D[0, 2:]).all()


def test_sharded_search_refuses_non_finite_rows_and_mismatched_dims():
    xb = unit(20, 4)
    xb[13, 2] = np.nan
    with pytest.raises(MnerError, match="^row 13 holds a value that is not finite"):
        sharded_search(unit(3, 4), xb, 2, pool_rows=8)
    with pytest.raises(MnerError, match="^query vectors have 4 dims but pool vectors 5"):
        sharded_search(unit(3, 4), unit(3, 5), 2)


@pytest.mark.skipif(search_module.faiss_gpus() == 0 or not torch_cuda(),
                    reason="needs faiss with GPUs (the gpu extra: faiss-gpu-cu12) and CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])   # every GPU (sharded) / one GPU
def test_faiss_on_gpu_equals_the_torch_path(device):
    xq, xb = with_ties(4)
    info = {}
    D_f, I_f = search(xq, xb, 7, backend="faiss", device=device, info=info)
    D_t, I_t = search(xq, xb, 7, backend="torch", device=device, precision="float32")
    assert info["backend"] == "faiss-gpu"
    np.testing.assert_allclose(D_f, D_t, atol=1e-5)
    assert_exact(D_f, I_f, xq, xb, 7)


def test_faiss_on_cuda_shards_the_pool_over_every_gpu_and_on_cuda_n_uses_that_one():
    calls = []

    class Options:
        shard = False

    class Config:
        device = None

    class FakeFaiss:                     # only the calls the GPU route makes
        GpuMultipleClonerOptions, GpuIndexFlatConfig = Options, Config

        def __init__(self, gpus):
            self.gpus = gpus

        def get_num_gpus(self):
            return self.gpus

        def IndexFlatIP(self, dims):
            return ("flat", dims)

        def index_cpu_to_all_gpus(self, index, options):
            calls.append(("all", index, options.shard))
            return "sharded"

        def StandardGpuResources(self):
            return "res"

        def GpuIndexFlatIP(self, res, dims, config):
            calls.append(("one", dims, config.device))
            return "one"

    assert search_module._faiss_gpu_flat(FakeFaiss(4), 8, "cuda") == "sharded"
    assert search_module._faiss_gpu_flat(FakeFaiss(4), 8, "cuda:2") == "one"
    assert search_module._faiss_gpu_flat(FakeFaiss(1), 8, "cuda") == "one"
    assert calls == [("all", ("flat", 8), True), ("one", 8, 2), ("one", 8, 0)]
