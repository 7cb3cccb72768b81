"""build-graphs' streaming path (sharded search: ties="index" or under torchrun) never reads a
whole feature table: every read of a ``features`` dataset is at most a block of rows, and the
graphs equal the in-memory path's."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import pipeline.graph_rank as graph_rank
import pipeline.graphs as graphs
from pipeline import row_views
from pipeline.data import load_dataset
from pipeline.graphs import GraphConfig, build_graphs, read_graph
from pipeline.row_views import Columns, FileRows, read_rows, usable_rows
from test_graphs import IDS, unit, write_features

BLOCK = 5      # rows per pool block and per validity read; query blocks are 4 rows


def rows_asked(dataset, key) -> int:
    """How many rows a read ``dataset[key]`` asks for."""
    key = key[0] if isinstance(key, tuple) and key else key
    if isinstance(key, tuple) or key is Ellipsis:          # ds[()] / ds[...]: all of it
        return dataset.shape[0]
    if isinstance(key, slice):
        return len(range(*key.indices(dataset.shape[0])))
    return len(np.atleast_1d(key))


def guard(monkeypatch) -> None:
    """Small blocks, and any read of more than a block of a ``features`` dataset fails."""
    monkeypatch.setattr(row_views, "QUERY_ROWS", 4)
    monkeypatch.setattr(row_views, "POOL_ROWS", BLOCK)
    read = h5py.Dataset.__getitem__

    def getitem(self, key, *args, **kwargs):
        if self.name == "/features" and rows_asked(self, key) > BLOCK:
            raise AssertionError(f"read {rows_asked(self, key)} rows of {self.file.filename}")
        return read(self, key, *args, **kwargs)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", getitem)


@pytest.fixture
def guarded(monkeypatch):
    guard(monkeypatch)


def feature_files(folder) -> list:
    """text (rows stored in reverse dataset order, one invalid, one non-finite), image_global
    (a duplicate image, one all-zero) and object_types (massive exact ties, one empty)."""
    text, image = unit(12, 16, 3), unit(12, 16, 1)
    image[3], image[9], text[0], text[6, 2] = image[0], 0, image[0], np.nan
    sha = [f"h{i}" for i in range(12)]
    sha[3] = sha[0]
    objects = np.round(np.abs(unit(12, 10, 2)) * 2) / 2
    objects[5] = 0
    valid = [True] * 7 + [False] + [True] * 4
    return [write_features(folder / "text.h5", "text", text[::-1], ids=IDS[::-1],
                           valid=valid[::-1], reason=["", "", "", "", "empty caption"] + [""] * 7),
            write_features(folder / "image.h5", "image_global", image, sha=sha),
            write_features(folder / "objects.h5", "object_types", objects, sha=sha,
                           space="objects:test")]


def force_path(monkeypatch, stream: bool) -> None:
    """``stream=False``: build-graphs reads whole tables and ranks in memory (the path before
    streaming; its search is still the sharded one for ties="index"); ``True``: it streams, and
    the search is the sharded one for any ties (as under torchrun)."""
    for module in (graphs,) if not stream else (graphs, graph_rank):
        monkeypatch.setattr(module, "streams", lambda config, dist: stream)


@pytest.mark.parametrize("options", [dict(ties="index"), dict(ties="index", pool="train"),
                                     dict(ties="index", hubness="csls", csls_k=3),
                                     dict(ties="random", hubness="csls", csls_k=2)])
def test_the_streaming_path_reads_blocks_only_and_equals_the_in_memory_path(
        tiny_dir, tmp_path, monkeypatch, options):
    files, dataset = feature_files(tmp_path), load_dataset(tiny_dir)
    config = GraphConfig(k=3, relations=("inter", "intra", "text"), **options)
    with monkeypatch.context() as patch:
        force_path(patch, False)
        memory = build_graphs(dataset, tmp_path / "memory", config, features=files)
    with monkeypatch.context() as patch:
        force_path(patch, True)
        guard(patch)
        streamed = build_graphs(dataset, tmp_path / "streamed", config, features=files)
    for a, b in zip(memory, streamed):
        a, b = read_graph(a.path), read_graph(b.path)
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
        assert a.pool_ids == b.pool_ids and a.flag_reason == b.flag_reason
        np.testing.assert_array_equal(b.I, a.I)
        np.testing.assert_allclose(b.D, a.D, atol=1e-6)
    assert read_graph(streamed[0].path).flag_reason[7] == "text: empty caption"
    assert read_graph(streamed[0].path).flag_reason[6] == "text: all-zero vector"


def test_the_default_ties_index_build_is_the_streaming_one(tiny_dir, tmp_path, guarded):
    files = feature_files(tmp_path)
    results = build_graphs(load_dataset(tiny_dir), tmp_path / "a", GraphConfig(k=2, ties="index"),
                           features=files)
    assert [read_graph(r.path).attrs["backend"] for r in results] == [
        "sharded exact (1 rank(s), cpu)"] * 2


def test_tables_larger_than_the_memory_budget_are_streamed(tiny_dir, tmp_path, monkeypatch):
    files, dataset = feature_files(tmp_path), load_dataset(tiny_dir)
    whole = build_graphs(dataset, tmp_path / "whole", GraphConfig(k=3), features=files)
    guard(monkeypatch)
    with pytest.raises(AssertionError, match="rows of"):      # the default budget: read whole
        build_graphs(dataset, tmp_path / "again", GraphConfig(k=3), features=files)
    small = build_graphs(dataset, tmp_path / "small", GraphConfig(k=3, memory_gb=1e-7),
                         features=files)
    for a, b in zip(whole, small):
        a, b = read_graph(a.path), read_graph(b.path)
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
        assert b.attrs["backend"].startswith("sharded exact")
        np.testing.assert_array_equal(b.I, a.I)
        np.testing.assert_allclose(b.D, a.D, atol=1e-6)


def test_file_rows_read_increasing_rows_and_put_them_back(tmp_path):
    X = unit(30, 6, 7) * 3
    X[4] = 0
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5.create_dataset("features", data=X.astype(np.float16), chunks=(4, 6))
    with h5py.File(tmp_path / "f.h5") as h5:
        ok = usable_rows(h5["features"], np.arange(30) != 9, rows=7)
        assert np.flatnonzero(~ok).tolist() == [4, 9]
        rows = np.array([20, 3, 4, 9, 3, 28, 0])
        view = FileRows(h5["features"], rows, ok)
        assert view.shape == (7, 6)
        wide = X.astype(np.float16).astype(np.float32)[rows]
        norms = np.where(ok[rows], np.linalg.norm(wide, axis=1), 1)[:, None]
        expected = np.where(ok[rows, None], wide / norms, 0)
        np.testing.assert_array_equal(view[0:7], expected.astype(np.float32))
        np.testing.assert_array_equal(view[2:5], view[:][2:5])
        np.testing.assert_array_equal(read_rows(h5["features"], [29, 0]),      # sparse: fancy
                                      X.astype(np.float16)[[29, 0]])
        both = Columns(Columns(view, -np.ones((7, 1)), scale=2), np.arange(14.).reshape(7, 2))
        assert both.shape == (7, 9)
        np.testing.assert_array_equal(both[1:3], np.hstack([2 * view[1:3], -np.ones((2, 1)),
                                                            [[2, 3], [4, 5]]]))
        with pytest.raises(TypeError):
            view[[0, 1]]


@pytest.mark.parametrize("k", [1, 3, 8, 12])
def test_block_topk_is_a_stable_sort_of_the_scores_with_or_without_ties(k):
    from pipeline.sharded_search import _block_topk

    rng = np.random.default_rng(k)
    S = torch.from_numpy(rng.integers(0, 4, size=(40, 12)).astype(np.float32))   # massive ties
    S[:20] += torch.from_numpy(rng.random((20, 12), dtype=np.float32))           # rows without
    D, I = _block_topk(S, k)
    expected = torch.sort(-S, dim=1, stable=True).indices[:, :k]
    assert torch.equal(I, expected) and torch.equal(D, torch.gather(S, 1, expected))
