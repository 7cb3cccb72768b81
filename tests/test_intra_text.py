"""The intra-modal graph from the image-text view (``intra_view="image_global"``): built beside the
object-type one, equal to brute force, and read by train, evaluate and predict."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import TINY_KEY
from pipeline.errors import InvalidConfig
from pipeline.graphs import GraphConfig, graph_views, load_graph_manifest, read_graph
from tagger_fixtures import invoke, tiny_encoder, tiny_pipeline, train_args  # noqa: F401
from test_graphs import IDS, features, reference  # noqa: F401
from trainer.config import TrainConfig


def build(tiny_dir, artifacts, features, *extra):
    result = invoke("build-graphs", "--data-dir", tiny_dir, "--artifacts", artifacts,
                    "--features", features / "manifest.json", "--k", 3, "--relation", "intra",
                    "--no-import-rgcn", "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return result


def test_intra_from_image_text_equals_brute_force_cosine_own_excluded(tiny_dir, features,
                                                                       tmp_path):
    result = build(tiny_dir, tmp_path, features, "--intra-view", "image_global")
    assert "wrote intra:image_global:" in result.output
    graph = read_graph(load_graph_manifest(tmp_path, TINY_KEY)["intra:image_global"])
    assert graph.attrs["relation"] == "intra" and graph.attrs["config"]["intra_view"] == \
        "image_global"
    assert graph_views(graph.attrs) == ("image_global", "image_global")
    assert [k for k in graph.attrs["inputs"] if k.startswith("features:")] == [
        "features:image_global"]
    with h5py.File(features / "image.h5") as h5:
        X = h5["features"][()]
    forbid = [(q, q) for q in range(12)] + [(0, 3), (3, 0)]    # own item; 104 duplicates 101
    I_ref, S = reference(X, X, 3, forbid)
    assert not graph.flagged.any() and graph.pool_ids == IDS
    np.testing.assert_allclose(graph.D, np.take_along_axis(S, I_ref, 1), atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(S, graph.I, 1), graph.D, atol=1e-6)
    assert (graph.I == I_ref).mean() > 0.9       # ties allowed (101 and 104 are identical)
    assert all(q not in row for q, row in enumerate(graph.I))


def test_both_intra_graphs_live_side_by_side_and_the_default_is_unchanged(tiny_dir, features,
                                                                          tmp_path):
    first = tmp_path / "first"
    build(tiny_dir, first, features)
    before = load_graph_manifest(first, TINY_KEY)["intra"]
    build(tiny_dir, tmp_path, features)
    build(tiny_dir, tmp_path, features, "--intra-view", "image_global")
    result = build(tiny_dir, tmp_path, features)
    assert "reused intra:" in result.output
    manifest = load_graph_manifest(tmp_path, TINY_KEY)
    assert sorted(manifest) == ["intra", "intra:image_global"]
    assert manifest["intra"].name == before.name          # same fingerprint as without the field
    assert manifest["intra"] != manifest["intra:image_global"]
    assert graph_views(read_graph(manifest["intra"]).attrs) == ("object_types", "object_types")


def test_an_unknown_intra_view_is_refused():
    with pytest.raises(InvalidConfig, match="intra_view must be one of object_types, "
                                            "image_global, got 'text'"):
        GraphConfig(intra_view="text")
    with pytest.raises(InvalidConfig, match="the authors' graphs have no intra graph"):
        TrainConfig(data_dir="x", graph_source="rgcn", intra_view="image_global")
    text = TrainConfig(data_dir="x", intra_view="image_global")
    assert text.variant() == "full-intra-text"
    assert text.with_overrides(text_only=True).variant() == "text-only"
    assert text.with_overrides(text_only=True, context="intra").variant() == \
        "text-only-ctx-intra-intra-text"


@pytest.fixture(scope="module")
def text_intra_pipeline(tiny_pipeline, tmp_path_factory):
    """A copy of the tiny pipeline with the intra graph from the caption vectors built too."""
    data, artifacts = tiny_pipeline
    copy = tmp_path_factory.mktemp("intra_text") / "artifacts"
    shutil.copytree(artifacts, copy, ignore=shutil.ignore_patterns("runs"))
    result = invoke("build-graphs", "--data-dir", data, "--artifacts", copy, "--k", 3,
                    "--relation", "intra", "--intra-view", "image_global", "--quiet")
    assert result.exit_code == 0, result.output
    return data, copy


def test_train_reads_the_intra_graph_of_its_intra_view(text_intra_pipeline, tiny_encoder):
    data, artifacts = text_intra_pipeline
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--intra-view", "image_global",
                                "--epochs", 1))
    assert result.exit_code == 0, result.output
    [run] = (artifacts / "runs").glob("*-tiny-full-intra-text-s1")
    manifest = json.loads((artifacts / "graphs" / TINY_KEY / "manifest.json").read_text())
    assert TrainConfig.from_json(run / "config.json").intra_view == "image_global"
    recorded = json.loads((run / "inputs.json").read_text())["image"]
    assert recorded["intra"]["path"].endswith(manifest["graphs"]["intra:image_global"])
    assert recorded["inter"]["path"].endswith(manifest["graphs"]["inter"])
    assert recorded["intra"]["views"] == ["image_global", "image_global"]
    result = invoke("evaluate", "--run", run)
    assert result.exit_code == 0, result.output
    result = invoke("predict", "--run", run, "--text", "Obama visits Paris",
                    "--caption", "a man waving")    # the new tweet's intra search: its caption
    assert result.exit_code == 0, result.output


def test_a_missing_image_text_intra_graph_says_what_to_build(tiny_pipeline, tiny_encoder):
    data, artifacts = tiny_pipeline
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--intra-view", "image_global"))
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(
        f"Error: no intra:image_global graph for tiny in {artifacts};")


def test_neighbour_entities_scores_the_image_text_intra_graph(text_intra_pipeline, capsys):
    from experiments.neighbour_entities import evaluate, main

    data, artifacts = text_intra_pipeline
    rows = evaluate(data, artifacts, ["inter", "intra", "intra:image_global", "nothere"], 2,
                    "test")
    assert [r["graph"] for r in rows] == ["inter", "intra", "intra:image_global", "random"]
    assert all(0 <= r["mention_recall"] <= 1 and r["mentions"] > 0 for r in rows)
    assert "skipped nothere" in capsys.readouterr().err
    assert main(["--data-dir", str(data), "--artifacts", str(artifacts), "--graphs",
                 "intra:image_global", "--k", "2"]) == 0
    assert "| tiny | intra:image_global | 2 | test |" in capsys.readouterr().out


def test_an_intra_graph_file_from_image_text_works_through_the_existing_option(
        text_intra_pipeline, tiny_encoder):
    data, artifacts = text_intra_pipeline
    graph = load_graph_manifest(artifacts, TINY_KEY)["intra:image_global"]
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--intra-graph", graph,
                                "--epochs", 1, "--slug", "given-file"))
    assert result.exit_code == 0, result.output
    [run] = (artifacts / "runs").glob("*-given-file")
    recorded = json.loads((run / "inputs.json").read_text())["image"]["intra"]
    assert recorded["path"] == str(graph.resolve())
    assert recorded["views"] == ["image_global", "image_global"]
    result = invoke("predict", "--run", run, "--text", "Obama visits Paris", "--caption",
                    "a man waving")
    assert result.exit_code == 0, result.output
