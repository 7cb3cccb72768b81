"""``extract`` on two gloo ranks (started as torchrun starts them) writes the file one process
writes, and a killed rank's half-done shard is completed, not redone; a finished one is kept."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import TINY_KEY
from pipeline.extract import ExtractConfig, run_extract
from pipeline.feature_shards import ShardWriter, shard_path
from pipeline.features import file_path, read_features
from pipeline.store import decode_attrs
from test_distributed import free_port
from test_extract import IMAGES, bert, image_dir  # noqa: F401 (fixtures)

WORLD = 2


def rank_main(rank: int, port: int, options: dict, out: str) -> None:
    """One rank: run extract as under torchrun; save the notes it reports."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    summary = run_extract(ExtractConfig(**options))
    notes = {view: d["notes"] for view, d in summary["views"].items()}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(notes, handle)


def on_two_ranks(options: dict, out) -> list[dict]:
    mp.spawn(rank_main, args=(free_port(), options, str(out)), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


def options(tiny_dir, artifacts, bert, **more) -> dict:
    return {**dict(data_dir=str(tiny_dir), artifacts=str(artifacts), captions=None,
                   text_encoder=bert, batch_size=4, text_batch_size=4, workers=0), **more}


def assert_same_file(one, two, atol=1e-5) -> None:
    a, b = read_features(one), read_features(two)
    assert a.item_ids == b.item_ids and a.reason == b.reason
    assert np.array_equal(a.valid, b.valid) and a.content_sha256 == b.content_sha256
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"] and b.attrs["complete"]
    np.testing.assert_allclose(b.features, a.features, atol=atol)


def test_two_ranks_write_the_file_one_process_writes(tiny_dir, tmp_path, bert, image_dir):
    opts = options(tiny_dir, tmp_path / "two", bert, image_dir=str(image_dir),
                   image_encoder="efficientnet-lite0:random")
    on_two_ranks(opts, tmp_path)
    one = run_extract(ExtractConfig(**{**opts, "artifacts": str(tmp_path / "one")}))
    assert set(one["views"]) == {"text", "image_global", "object_types", "region_grid"}
    folder = tmp_path / "two" / "features" / TINY_KEY
    for view, d in one["views"].items():
        assert_same_file(d["path"], folder / d["file"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [d["file"] for d in one["views"].values()] + ["manifest.json"])     # no shard is left
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {v: e["fingerprint"] for v, e in manifest["views"].items()} == {
        v: d["fingerprint"] for v, d in one["views"].items()}


def test_a_killed_rank_resumes_its_shard_and_a_finished_shard_is_kept(tiny_dir, tmp_path, bert):
    opts = options(tiny_dir, tmp_path / "one", bert, views=("text",), text_batch_size=2)
    path = run_extract(ExtractConfig(**opts))["views"]["text"]["path"]
    truth = read_features(path)
    with h5py.File(path, "r") as h5:
        attrs = decode_attrs(h5.attrs)
    attrs.pop("complete"), attrs.pop("ids_sha256")
    target = file_path(tmp_path / "two", TINY_KEY, "text", attrs["fingerprint"])
    marked = truth.features * 2          # rows a rank wrote before: kept as written
    for rank, rows in ((0, range(0, 6)), (1, range(6, 9))):    # rank 0 done, rank 1 half done
        writer = ShardWriter(target, truth.item_ids, attrs, rank=rank, world=WORLD)
        rows = np.array(rows)
        writer.write(rows, marked[rows], truth.valid[rows], [truth.reason[r] for r in rows])
        if rank == 0:
            writer.finish()
        writer.close()
    assert shard_path(target, 0, WORLD).is_file()
    assert shard_path(target, 1, WORLD).with_name(f"{target.name}.shard1-of-2.tmp").is_file()
    notes = on_two_ranks({**opts, "artifacts": str(tmp_path / "two")}, tmp_path)
    assert notes[0]["text"] == [f"{target.name}.shard0-of-2: finished shard kept (6 rows)"]
    assert notes[1]["text"] == [f"{target.name}.shard1-of-2.tmp: resuming, 3 of 6 rows "
                                "already done"]
    merged = read_features(target)
    np.testing.assert_array_equal(merged.features[:9], marked[:9])     # never recomputed
    np.testing.assert_allclose(merged.features[9:], truth.features[9:], atol=1e-5)
    assert merged.reason == truth.reason and merged.attrs["fingerprint"] == attrs["fingerprint"]
    assert not list(target.parent.glob("*.shard*"))
