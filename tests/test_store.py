"""The artefact store through the real stages (issue 12, cases 1-3): a changed input is never
reused silently, two datasets with the same folder name never share an artefact, and a partial
extract keeps the views extracted before."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import TINY, TINY_KEY
from pipeline import store
from pipeline.data import load_dataset
from pipeline.errors import StaleArtifact
from pipeline.graphs import GraphConfig, build_graphs
from tagger_fixtures import invoke, tiny_encoder, train_args  # noqa: F401


def extract_and_graphs(data, artifacts, encoder, *extra):
    result = invoke("extract", "--data-dir", data, "--artifacts", artifacts, "--text-encoder",
                    encoder, "--quiet", *extra)
    assert result.exit_code == 0, result.output
    result = invoke("build-graphs", "--data-dir", data, "--artifacts", artifacts, "--k", 3,
                    "--quiet")
    assert result.exit_code == 0, result.output


@pytest.fixture
def built(tmp_path, tiny_encoder):
    """A fresh copy of the tiny dataset after extract and build-graphs: (data, artifacts)."""
    data, artifacts = tmp_path / "tiny", tmp_path / "artifacts"
    shutil.copytree(TINY, data)
    extract_and_graphs(data, artifacts, tiny_encoder)
    return data, artifacts


def change_first(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_changed_token_is_refused_by_build_graphs_and_train(built, tiny_encoder):
    data, artifacts = built
    first = (data / "train.txt").read_text().split("\n")[1].split("\t")[0]
    change_first(data / "train.txt", first + "\t", first + "x\t")
    result = invoke("build-graphs", "--data-dir", data, "--artifacts", artifacts, "--k", 3)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "train.txt" in result.output and "changed" in result.output
    assert "reused" not in result.output
    result = invoke(*train_args(data, artifacts, tiny_encoder))
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "train.txt" in result.output and "changed" in result.output
    with pytest.raises(StaleArtifact) as err:
        build_graphs(load_dataset(data), artifacts, GraphConfig(k=3))
    assert (err.value.input, err.value.rerun, err.value.stage) == ("train.txt", "extract",
                                                                   "build-graphs")


def test_a_changed_caption_is_refused_by_build_graphs_and_train(built, tiny_encoder):
    data, artifacts = built
    change_first(data / "image_captions" / "captions.txt", "a phone on a table",
                 "a phone on a chair")
    with pytest.raises(StaleArtifact) as err:
        build_graphs(load_dataset(data), artifacts, GraphConfig(k=3))
    assert (err.value.input, err.value.rerun) == ("captions", "extract")
    result = invoke(*train_args(data, artifacts, tiny_encoder))
    assert result.exit_code == 1 and "captions" in result.output and "changed" in result.output
    extract_and_graphs(data, artifacts, tiny_encoder)       # re-extracting makes it usable again
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--epochs", 1))
    assert result.exit_code == 0, result.output


def test_regraphed_features_make_the_old_graph_stale_for_train(built, tiny_encoder):
    data, artifacts = built
    folder = artifacts / "graphs" / TINY_KEY
    manifest = json.loads((folder / "manifest.json").read_text())
    inter = folder / manifest["graphs"]["inter"]
    with h5py.File(inter, "r+") as h5:
        inputs = json.loads(h5.attrs["inputs"])
        inputs["features:text"]["sha256"] = "0" * 64
        h5.attrs["inputs"] = json.dumps(inputs)
    result = invoke(*train_args(data, artifacts, tiny_encoder))
    assert result.exit_code == 1, result.output
    assert "features text" in result.output and "build-graphs" in result.output


def test_two_datasets_with_the_same_folder_name_share_nothing(tmp_path, tiny_encoder):
    full, cut, artifacts = tmp_path / "a" / "tiny", tmp_path / "b" / "tiny", tmp_path / "art"
    shutil.copytree(TINY, full)
    shutil.copytree(TINY, cut)
    lines = (cut / "train.txt").read_text().split("\n\n")
    (cut / "train.txt").write_text("\n\n".join(lines[1:]))      # drop the first train tweet
    extract_and_graphs(full, artifacts, tiny_encoder)
    result = invoke("build-graphs", "--data-dir", cut, "--artifacts", artifacts, "--k", 3)
    assert result.exit_code == 1 and "no views recorded" in result.output, result.output
    result = invoke(*train_args(cut, artifacts, tiny_encoder))
    assert result.exit_code == 1, result.output
    extract_and_graphs(cut, artifacts, tiny_encoder)
    keys = sorted(p.name for p in (artifacts / "features").iterdir())
    assert len(keys) == 2 and all(k.startswith("tiny-") for k in keys)
    files = [set(p.name for p in (artifacts / "features" / k).glob("*.h5")) for k in keys]
    assert not files[0] & files[1]


def test_a_partial_extract_keeps_the_earlier_views(built, tiny_encoder):
    data, artifacts = built
    result = invoke("extract", "--data-dir", data, "--artifacts", artifacts, "--text-encoder",
                    tiny_encoder, "--views", "text", "--keep-urls", "--quiet")
    assert result.exit_code == 0, result.output
    views = json.loads((artifacts / "features" / TINY_KEY / "manifest.json").read_text())["views"]
    assert set(views) == {"text", "image_global", "object_types"}
    result = invoke("build-graphs", "--data-dir", data, "--artifacts", artifacts, "--k", 3)
    assert result.exit_code == 0, result.output


def test_attributes_round_trip_and_image_hashes_are_cached(tmp_path):
    path = tmp_path / "x.h5"
    attrs = {"a": {"b": [1, 2]}, "n": 3, "s": "{not json}", "l": ["x"]}
    with h5py.File(path, "w") as h5:
        store.write_attrs(h5, attrs)
    assert store.read_attrs(path) == attrs
    image = tmp_path / "i.jpg"
    image.write_bytes(b"one")
    digests = store.DigestCache(tmp_path)
    first = digests.sha256(image)
    digests.save()
    again = store.DigestCache(tmp_path)
    assert again.sha256(image) == first and not again.changed
    image.write_bytes(b"two!")
    assert again.sha256(image) != first
    assert np.asarray(json.loads((tmp_path / "cache" / "sha256.json").read_text())
                      [str(image.resolve())][:2]).shape == (2,)
