"""A dataset's optional ``pool`` split: unlabelled text-image pairs that are neighbour candidates
only. Read with optional, never-used tags; extracted like every item; searched by build-graphs but
never a query; never trained on, scored or tagged; a dataset without one keeps its fingerprints."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import ROOT, TINY_KEY
from pipeline import store
from pipeline.data import load_dataset
from pipeline.errors import DataFormatError
from pipeline.extract import ExtractConfig, run_extract
from pipeline.features import read_features
from pipeline.graph_store import load_graph_manifest
from pipeline.graphs import GraphConfig, build_graphs, read_graph
from pipeline.labels import LabelSet
from tagger_fixtures import (extract_graphs_train, invoke,  # noqa: F401 (fixture)
                             tiny_encoder)
from test_distributed import free_port
from test_extract import bert  # noqa: F401 (fixture)
from test_extract_sharded import assert_same_file, on_two_ranks, options
from test_graphs import IDS, TRAIN, unit, write_features
from test_graphs_sharded import build_all, feature_files
from test_graphs_streaming import guard

POOL_IDS = ["p1", "p2", "p3", "p4"]
UNTAGGED_UMT = ("IMGID:p1\nObama\nin\nParis\n\nIMGID:p2\nApple\nstore\n\n"
                "IMGID:p3\nLakers\ngame\ntonight\n\nIMGID:p4\nLondon\nbridge\n")
TYPES = ["CITY", "GAME", "TEAM"]


@pytest.fixture
def pooled_dir(tiny_dir):
    """The tiny dataset plus an untagged UMT pool split of four items (tokens alone)."""
    (tiny_dir / "pool.txt").write_text(UNTAGGED_UMT)
    return tiny_dir


# ---- reading ------------------------------------------------------------------------------------

def test_an_untagged_umt_pool_is_read_after_the_labelled_splits(pooled_dir):
    dataset = load_dataset(pooled_dir)
    assert dataset.item_ids() == IDS + POOL_IDS
    assert dataset.query_ids() == IDS and list(dataset.labelled_splits()) == ["train", "valid",
                                                                              "test"]
    assert [t.tokens for t in dataset.tweets("pool")][0] == ("Obama", "in", "Paris")
    assert all(t.tags == () and t.split == "pool" for t in dataset.tweets("pool"))
    assert load_dataset(pooled_dir).labels == load_dataset(pooled_dir.parent / "tiny").labels


def test_pool_tags_are_ignored_and_never_enter_the_label_set(tmp_path):
    data = tmp_path / "own"
    shutil.copytree(ROOT / "tests" / "fixtures" / "own" / "jsonl", data)
    rows = [{"id": "p1", "tokens": ["Mario", "in", "Rome"], "tags": ["S-PLUMBER", "O", "B-OTHER"]},
            {"id": "p2", "tokens": ["Tetris", "night"], "tags": ["B-GAME", "NOT-A-TAG"]}]
    (data / "pool.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dataset = load_dataset(data)
    assert list(dataset.labels.types) == TYPES and dataset.labels.scheme == "BIO"
    assert [t.tags for t in dataset.tweets("pool")] == [(), ()]
    (data / "pool.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items()
                                                           if k != "tags"}) for r in rows))
    assert dataset.item_ids() == load_dataset(data).item_ids()


@pytest.mark.parametrize("name, text, where, problem", [
    ("pool.txt", "Obama\nin\n", "pool.txt:1", "token line 'Obama' before any IMGID line"),
    ("pool.txt", "IMGID:p1\nObama\tO\nin\n", "pool.txt:3",
     "line 2 has a tag but line 3 has none; tag every token or none"),
    ("pool.txt", "IMGID:g101\nObama\n", "pool.txt:1", "IMGID g101 is also in train.txt"),
    ("pool.jsonl", '{"id": "p1", "tokens": ["a"]}\n{"tokens": ["b"]}\n', "pool.jsonl:2",
     "field 'id' is missing"),
    ("pool.jsonl", '{"id": "p1", "tokens": ["a"]}\n{"id": "p2", "tokens": [}\n', "pool.jsonl:2",
     "not valid JSON"),
])
def test_a_malformed_pool_line_is_one_line_naming_file_and_line(tmp_path, name, text, where,
                                                                 problem):
    data = tmp_path / "own"
    shutil.copytree(ROOT / "tests" / "fixtures" / "own" / name.split(".")[1].replace("txt", "umt"),
                    data)
    (data / name).write_text(text)
    with pytest.raises(DataFormatError) as err:
        load_dataset(data)
    assert f"{where}: {problem}" in str(err.value)
    result = invoke("stats", "--data-dir", data, "-o", tmp_path / "stats.csv")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and where in line and problem in line


def test_a_pool_in_the_other_format_is_refused(tiny_dir):
    (tiny_dir / "pool.jsonl").write_text('{"id": "p1", "tokens": ["a"]}\n')
    with pytest.raises(DataFormatError, match="split files in two formats"):
        load_dataset(tiny_dir)


# ---- graphs -------------------------------------------------------------------------------------

def pooled_features(folder) -> list:
    """text, image_global and object_types for the tiny items then the pool's: p1's image is
    101's text (its best inter neighbour), p3's object vector is 103's (its best intra one)."""
    ids = IDS + POOL_IDS
    text, image, objects = unit(16, 16, 3), unit(16, 16, 1), np.abs(unit(16, 10, 2))
    image[12], objects[14] = text[0], objects[2]
    sha = [f"h{i}" for i in range(16)]
    return [write_features(folder / "text.h5", "text", text, ids=ids),
            write_features(folder / "image.h5", "image_global", image, ids=ids, sha=sha),
            write_features(folder / "objects.h5", "object_types", objects, ids=ids, sha=sha,
                           space="objects:test")]


def graphs_of(dataset, artifacts, files, **config) -> dict:
    results = build_graphs(dataset, artifacts, GraphConfig(k=3, **config), features=files)
    return {r.name.split("@")[0]: read_graph(r.path) for r in results}


@pytest.mark.parametrize("pool, candidates", [("all", IDS + POOL_IDS), ("train", TRAIN + POOL_IDS)])
def test_pool_items_are_neighbours_never_queries(pooled_dir, tmp_path, pool, candidates):
    dataset = load_dataset(pooled_dir)
    graphs = graphs_of(dataset, tmp_path / "a", pooled_features(tmp_path), pool=pool)
    for graph in graphs.values():
        assert graph.query_ids == IDS and graph.pool_ids == candidates
        assert len(graph.I) == len(IDS)
    assert graphs["inter"].neighbours(["101"])[0][0][0] == "p1"
    assert graphs["intra"].neighbours(["103"])[0][0][0] == "p3"
    assert {"p1", "p3"} <= {graph.pool_ids[j] for graph in graphs.values()
                            for j in graph.I.ravel() if j >= 0}


@pytest.mark.parametrize("options", [{}, {"hubness": "csls", "csls_k": 2}])
def test_the_streamed_path_gives_the_pool_neighbours_of_the_in_memory_path(pooled_dir, tmp_path,
                                                                           monkeypatch, options):
    dataset, files = load_dataset(pooled_dir), pooled_features(tmp_path)
    whole = graphs_of(dataset, tmp_path / "whole", files, **options)
    guard(monkeypatch)
    streamed = graphs_of(dataset, tmp_path / "streamed", files, stream=True, **options)
    for name, graph in whole.items():
        assert streamed[name].query_ids == IDS and streamed[name].pool_ids == graph.pool_ids
        assert set(POOL_IDS) <= set(graph.pool_ids)
        np.testing.assert_array_equal(streamed[name].I, graph.I)
        np.testing.assert_allclose(streamed[name].D, graph.D, atol=1e-6)


def rank_main(rank: int, port: int, data: str, artifacts: str, files: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    graphs_of(load_dataset(data), artifacts, files, ties="index")


def test_two_ranks_search_the_pool_split_as_one_process(pooled_dir, tmp_path):
    files = pooled_features(tmp_path)
    one = graphs_of(load_dataset(pooled_dir), tmp_path / "one", files, ties="index")
    mp.spawn(rank_main, args=(free_port(), str(pooled_dir), str(tmp_path / "two"), files),
             nprocs=2, join=True)
    two = load_graph_manifest(tmp_path / "two", store.dataset_key(load_dataset(pooled_dir)))
    for name, graph in one.items():
        other = read_graph(two[name])
        assert other.attrs["fingerprint"] == graph.attrs["fingerprint"]
        assert other.query_ids == IDS and other.pool_ids == graph.pool_ids
        assert set(POOL_IDS) <= set(graph.pool_ids)
        np.testing.assert_array_equal(other.I, graph.I)


def test_two_ranks_extract_the_pool_items_as_one_process(pooled_dir, tmp_path, bert):
    captions = next((pooled_dir / "image_captions").iterdir())
    opts = options(pooled_dir, tmp_path / "two", bert, captions=str(captions))
    on_two_ranks(opts, tmp_path)
    one = run_extract(ExtractConfig(**{**opts, "artifacts": str(tmp_path / "one")}))
    assert {"text", "image_global", "object_types"} <= set(one["views"])
    folder = tmp_path / "two" / "features" / store.dataset_key(load_dataset(pooled_dir))
    for view in one["views"].values():
        assert read_features(view["path"]).item_ids == IDS + POOL_IDS
        assert_same_file(view["path"], folder / view["file"])


# Fingerprints of the tiny dataset's graphs (test_graphs_sharded's feature files) written before
# the pool split existed (commit 8bd1354): a dataset without a pool keeps its files.
PINNED = {"0:inter": "1308a5899cf52d1fadfbb3c4ec0500d67405c4feaa47c34288f7ef9ac1bc993c",
          "0:intra": "6a8a2e8e1463b0b1076b4a0a44cbe6a18ad5f17bbd1ca376c7540d440392e43a",
          "0:text": "55a4a60dd9f4a41ae594d396eecd86e734b81038c13663c0c5644139af3751de",
          "1:inter": "da8861630a596d5c455df984d1b329a62d6221b5c41c2de2fa112c26ea6bde52",
          "1:intra": "f9b8bbebc474afb9133d35f4e910e35d8ac691d4950fb5247f5895b31e9ba369",
          "2:inter": "060fc9aea577aafbbfe5418b18fcae8dc6a0bd9881f361c8e350f6bb3a8a4d69"}
TEXT_INPUTS = "d9e31c1505db8f4aa97e374c538426e250af2f6814a8ed02378e28274392c202"   # its digest


def test_a_dataset_without_a_pool_keeps_its_graph_fingerprints(tiny_dir, tmp_path):
    paths = build_all(tiny_dir, tmp_path / "a", feature_files(tmp_path))
    found = {f"{n}:{name}": read_graph(path).attrs["fingerprint"] for (n, name), path
             in paths.items()}
    assert found == PINNED
    dataset = load_dataset(tiny_dir)
    assert dataset.query_ids() == dataset.item_ids() and store.dataset_key(dataset) == TINY_KEY
    assert store.inputs_digest(store.text_inputs(dataset)) == TEXT_INPUTS


# ---- extract, train, evaluate, predict ----------------------------------------------------------

@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory, tiny_encoder):
    """The own dataset (UMT) with a tagged pool of three items (one type train lacks), through
    extract (captions), build-graphs and train: ``(data_dir, artifacts, run_dir)``."""
    root = tmp_path_factory.mktemp("pooled")
    data, artifacts = root / "own", root / "artifacts"
    shutil.copytree(ROOT / "tests" / "fixtures" / "own" / "umt", data)
    (data / "pool.txt").write_text("IMGID:p201\nMario\tB-PLUMBER\nplays\tO\nin\tO\nRome\tB-CITY\n"
                                   "\nIMGID:p202\nMadrid\tB-TEAM\nwins\tO\nagain\tO\n\n"
                                   "IMGID:p203\nTetris\tB-GAME\nnight\tO\n")
    with open(data / "image_captions" / "captions.txt", "a") as handle:
        handle.write("p201.jpg :a man playing a video game\np202.jpg :football players on a "
                     "field\np203.jpg :blocks falling on a screen\n")
    return data, artifacts, extract_graphs_train(data, artifacts, tiny_encoder, epochs=1)


POOLED = ["p201", "p202", "p203"]


def test_extract_covers_the_pool_items_in_every_view(pooled_run):
    data, artifacts, _ = pooled_run
    dataset = load_dataset(data)
    manifest = json.loads(next((artifacts / "features").glob("*/manifest.json")).read_text())
    assert {"text", "image_global", "object_types"} <= set(manifest["views"])
    for view, entry in manifest["views"].items():
        features = read_features(next((artifacts / "features").glob("*")) / entry["file"])
        assert features.item_ids == dataset.item_ids() and features.item_ids[-3:] == POOLED
        if view == "text":
            assert features.attrs["inputs"]["pool.txt"]["sha256"]
        if view != "object_types":
            assert features.valid[-3:].all()


def test_a_changed_pool_file_makes_the_features_stale(pooled_run, tmp_path):
    data, artifacts, _ = pooled_run
    copy = tmp_path / "own"
    shutil.copytree(data, copy)
    (copy / "pool.txt").write_text((data / "pool.txt").read_text().replace("Tetris", "Pacman"))
    result = invoke("build-graphs", "--data-dir", copy, "--artifacts", artifacts, "--k", 3,
                    "--quiet")
    assert result.exit_code == 1 and "pool.txt changed" in result.output, result.output


def test_the_graphs_query_labelled_items_and_find_pool_items(pooled_run):
    data, artifacts, _ = pooled_run
    dataset = load_dataset(data)
    manifest = load_graph_manifest(artifacts, store.dataset_key(dataset))
    inter = read_graph(manifest["inter"])
    assert inter.query_ids == dataset.query_ids() and not set(POOLED) & set(inter.query_ids)
    assert set(POOLED) <= set(inter.pool_ids)
    assert set(POOLED) & {inter.pool_ids[j] for j in inter.I.ravel() if j >= 0}


def test_training_never_sees_pool_items_but_their_images(pooled_run):
    import h5py

    data, _, run = pooled_run
    dataset = load_dataset(data)
    labels = LabelSet.from_json(json.loads((run / "labels.json").read_text()))
    assert list(labels.types) == TYPES
    record = json.loads((run / "inputs.json").read_text())
    assert record["splits"]["pool"]["tweets"] == 3
    assert set(json.loads((run / "results.json").read_text())) >= {"valid", "test"}
    assert not list(run.glob("*pool*.conll"))
    with h5py.File(run / "pool.h5") as h5:
        assert list(h5["image/item_id"].asstr()[()]) == dataset.query_ids()
        assert set(POOLED) <= set(h5["image/table_id"].asstr()[()])
        assert set(POOLED) <= set(h5["search/inter/pool_id"].asstr()[()])


def test_evaluate_scores_labelled_splits_and_refuses_the_pool(pooled_run):
    _, _, run = pooled_run
    result = invoke("evaluate", "--run", run, "--split", "test")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", "--run", run, "--split", "pool")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == ("Error: unknown split 'pool'; use one of "
                                                      "train, valid, test")
    result = invoke("predict", "--run", run, "--text", "Zelda fans in Paris", "--caption",
                    "a man playing a video game")
    assert result.exit_code == 0, result.output


def test_context_shows_pool_words_unlabelled(pooled_run, tiny_encoder):
    from trainer.config import TrainConfig
    from trainer.context import tweet_words
    from trainer.inputs import load_inputs

    data, artifacts, _ = pooled_run
    result = invoke("train", "--data-dir", data, "--artifacts", artifacts, "--encoder",
                    tiny_encoder, "--k", 3, "--epochs", 1, "--batch-size", 4, "--text-only",
                    "--context", "inter", "--context-k", 3, "--context-labels", "--quiet")
    assert result.exit_code == 0, result.output
    run = next((artifacts / "runs").glob("*ctx-inter*"))
    inputs = load_inputs(TrainConfig.from_json(run / "config.json"))
    assert list(inputs.context) == inputs.dataset.query_ids()
    shown = {n for found in inputs.context.values() for n in found}
    assert set(POOLED) & shown
    words = tweet_words(inputs.dataset, labels=True)
    assert words["p201"] == ["Mario", "plays", "in", "Rome"]
