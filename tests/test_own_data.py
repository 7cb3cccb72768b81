"""Your own data end to end: a tiny dataset with three made-up entity types (GAME, TEAM, CITY), in
UMT and in JSON lines, goes through stats, extract, build-graphs, train, evaluate and predict; its
labels come from the data, and the written predictions read back to the recorded scores."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT
from conlleval_port import conlleval
from tagger_fixtures import extract_graphs_train, invoke, tiny_encoder  # noqa: F401
from pipeline.labels import LabelSet

OWN = ROOT / "tests" / "fixtures" / "own"
TYPES = ["CITY", "GAME", "TEAM"]


@pytest.fixture(scope="module", params=["umt", "jsonl"])
def own_run(request, tmp_path_factory, tiny_encoder):
    """The own dataset in one format after extract (captions), build-graphs and train:
    ``(format, data_dir, run_dir)``."""
    root = tmp_path_factory.mktemp(f"own-{request.param}")
    data, artifacts = root / "own", root / "artifacts"
    shutil.copytree(OWN / request.param, data)
    return request.param, data, extract_graphs_train(data, artifacts, tiny_encoder)


def test_stats_shows_the_made_up_types(tmp_path):
    for fmt in ("umt", "jsonl"):
        result = invoke("stats", "--data-dir", OWN / fmt, "-o", tmp_path / f"{fmt}.json")
        assert result.exit_code == 0, result.output
        rows = {r["split"]: r for r in json.loads((tmp_path / f"{fmt}.json").read_text())}
        assert [rows["total"][f"{t}_conlleval"] for t in TYPES] == [10, 7, 8]
        assert not [c for c in rows["total"] if c.startswith("PER_")]


def test_the_run_records_and_scores_the_made_up_types(own_run):
    _, _, run = own_run
    labels = LabelSet.from_json(json.loads((run / "labels.json").read_text()))
    assert list(labels.types) == TYPES
    assert json.loads((run / "model.json").read_text())["labels"] == labels.labels
    results = json.loads((run / "results.json").read_text())
    for split in ("valid", "test"):
        assert list(results[split]["conlleval"]["types"]) == TYPES
    lines = (run / "predictions_test.conll").read_text(encoding="utf-8").splitlines()
    read_back = conlleval(lines)["overall"]
    overall = results["test"]["conlleval"]["overall"]
    assert read_back == pytest.approx((overall["precision"], overall["recall"], overall["f1"]))


def test_evaluate_prints_a_row_per_made_up_type(own_run):
    _, _, run = own_run
    result = invoke("evaluate", "--run", run, "--split", "test")
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert {"CITY", "GAME", "TEAM", "overall"} <= set(rows)


def test_predict_tags_a_new_tweet_with_the_made_up_labels(own_run):
    _, _, run = own_run
    result = invoke("predict", "--run", run, "--text", "Zelda fans in Paris", "--caption",
                    "a man playing a video game")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines[:-1]] == ["Zelda", "fans", "in", "Paris"]
    labels = json.loads((run / "model.json").read_text())["labels"]
    assert all(line.split(" ")[2] in labels for line in lines[:-1])


def test_predict_scores_the_test_split_file_as_train_did(own_run):
    fmt, data, run = own_run
    result = invoke("predict", "--run", run, "--input", data / f"test.{'txt' if fmt == 'umt' else fmt}")
    assert result.exit_code == 0, result.output
    assert result.stdout == (run / "predictions_test.conll").read_text()
    assert "GAME" in result.stderr


def test_predict_tags_untagged_text_without_scores(own_run, tmp_path):
    _, _, run = own_run
    path = tmp_path / "new.txt"
    path.write_text("Zelda fans in Paris\nthe Lakers visit Rome\n", encoding="utf-8")
    result = invoke("predict", "--run", run, "--input", path, "-o", tmp_path / "out.jsonl")
    assert result.exit_code == 0, result.output
    assert "overall" not in result.output and "Warning" not in result.output   # no made-up gold
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["line-1", "line-2"]
    assert all("gold" not in r and isinstance(r["entities"], list) for r in records)
