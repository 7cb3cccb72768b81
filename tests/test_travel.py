"""Runs that travel (issue 13): a run folder copied elsewhere, with the data and artifacts it was
trained from deleted, still tags new tweets (``pool.h5``); evaluate reads the data from another
folder after checking its content; the fine-tuned encoder is a folder AutoModel loads."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import TINY
from tagger_fixtures import invoke, tiny_encoder, tiny_pipeline, train_args  # noqa: F401


@pytest.fixture(scope="module")
def moved_run(tiny_pipeline, tiny_encoder, tmp_path_factory):
    """A full model with neighbour-tweet context trained on a private copy of the tiny pipeline,
    then copied to another folder while the data and artifacts are deleted: the copy's path."""
    data, artifacts = tiny_pipeline
    root = tmp_path_factory.mktemp("travel")
    shutil.copytree(data, root / "tiny")
    shutil.copytree(artifacts, root / "artifacts")
    result = invoke(*train_args(root / "tiny", root / "artifacts", tiny_encoder,
                                "--context", "inter", "--context-k", 2))
    assert result.exit_code == 0, result.output
    (run,) = (root / "artifacts" / "runs").iterdir()
    moved = tmp_path_factory.mktemp("elsewhere") / "my-run"
    shutil.copytree(run, moved)
    shutil.rmtree(root)
    return moved


def test_the_run_folder_holds_its_pool(moved_run, tmp_path):
    import h5py

    with h5py.File(moved_run / "pool.h5", "r") as h5:
        assert {"image", "search", "context", "words"} <= set(h5)
        assert set(h5["search"]) == {"inter", "intra", "context"}
        assert h5["search/inter/xb"].dtype == "float16"
    without = tmp_path / "no-pool"              # what the tests below would meet without it
    shutil.copytree(moved_run, without)
    (without / "pool.h5").unlink()
    result = invoke("predict", "--run", without, "--text", "Obama visits Paris")
    assert result.exit_code == 1 and "data folder of run" in result.output


@pytest.mark.parametrize("extra", [(), ("--caption", "a man waving at a crowd")])
def test_a_moved_run_tags_a_new_tweet_without_data_or_artifacts(moved_run, extra):
    result = invoke("predict", "--run", moved_run, "--text", "Obama visits Paris today", *extra)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines[:-1]] == ["Obama", "visits", "Paris", "today"]
    assert "neighbour tweets: " in result.stderr
    assert ("neither an image nor a caption" in result.stderr) == (not extra)


def test_evaluate_takes_the_data_from_another_folder_after_checking_it(moved_run, tmp_path):
    result = invoke("evaluate", "--run", moved_run)
    assert result.exit_code == 1
    assert "data folder of run" in result.output and "--data-dir" in result.output
    shutil.copytree(TINY, tmp_path / "renamed")
    result = invoke("evaluate", "--run", moved_run, "--data-dir", tmp_path / "renamed",
                    "-o", tmp_path / "scores.json", "--quiet")
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["split"] == "test" and "overall" in scores["conlleval"]
    recorded = json.loads((moved_run / "results.json").read_text())["test"]
    assert scores["conlleval"]["overall"] == pytest.approx(recorded["conlleval"]["overall"])
    test = tmp_path / "renamed" / "test.txt"
    test.write_text(test.read_text().replace("\tO\n", "\tB-PER\n", 1))
    result = invoke("evaluate", "--run", moved_run, "--data-dir", tmp_path / "renamed")
    assert result.exit_code == 1
    assert "test.txt is not the data run" in result.output


def test_the_encoder_folder_loads_with_automodel(moved_run):
    import torch
    from transformers import AutoModel

    from trainer.model import load_tagger

    encoder = AutoModel.from_pretrained(moved_run / "encoder")
    tagger, _, _ = load_tagger(moved_run)
    for name, tensor in tagger.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], tensor), name
    assert (moved_run / "encoder" / "model.safetensors").is_file()


def test_a_run_saved_with_the_whole_model_in_one_file_still_loads(moved_run, tmp_path):
    """Runs written before encoder/ held weights keep the whole tagger in model.safetensors."""
    import torch
    from safetensors.torch import save_model

    from trainer.model import load_tagger

    tagger, _, _ = load_tagger(moved_run)
    old = tmp_path / "old-run"
    shutil.copytree(moved_run, old)
    (old / "encoder" / "model.safetensors").unlink()
    save_model(tagger, str(old / "model.safetensors"))
    meta = json.loads((old / "model.json").read_text())
    del meta["encoder_weights"]
    (old / "model.json").write_text(json.dumps(meta))
    loaded, _, _ = load_tagger(old)
    for name, tensor in tagger.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.fixture(scope="module")
def referring_run(tiny_pipeline, tiny_encoder, tmp_path_factory):
    """A full model trained on a private copy of the tiny pipeline with ``pool_copy_gb`` 0, so
    that its pool.h5 refers to the node table's feature file: ``(root, run folder)``."""
    data, artifacts = tiny_pipeline
    root = tmp_path_factory.mktemp("referring")
    shutil.copytree(data, root / "tiny")
    shutil.copytree(artifacts, root / "artifacts", ignore=shutil.ignore_patterns("runs"))
    config = root / "config.json"
    config.write_text(json.dumps({"data_dir": str(root / "tiny"), "pool_copy_gb": 0}))
    result = invoke(*train_args(root / "tiny", root / "artifacts", tiny_encoder,
                                "--config", config))
    assert result.exit_code == 0, result.output
    (run,) = (root / "artifacts" / "runs").iterdir()
    return root, run


def table_ref(run) -> dict:
    """The ``table_ref`` attribute of a run's pool.h5 (its node table's feature file)."""
    import h5py

    with h5py.File(run / "pool.h5", "r") as h5:
        assert "table" not in h5["image"] and h5.attrs["format"] == 2
        return json.loads(h5["image"].attrs["table_ref"])


def outputs(run, data, folder):
    """What predict (a file with gold tags, a new tweet) and evaluate write for ``run``."""
    tagged = invoke("predict", "--run", run, "--input", data / "test.txt")
    new = invoke("predict", "--run", run, "--text", "Obama visits Paris", "--caption", "a man")
    scores = invoke("evaluate", "--run", run, "-o", folder / "scores.json", "--quiet")
    for result in (tagged, new, scores):
        assert result.exit_code == 0, result.output
    shown = new.stderr[new.stderr.index("neighbours:"):]      # after the loaders' progress
    scores = json.loads((folder / "scores.json").read_text())
    return tagged.stdout, new.stdout, shown, scores["conlleval"], scores["strict"]


def test_a_large_node_table_is_referred_to_not_copied(referring_run, tmp_path):
    """Issue 14: above pool_copy_gb pool.h5 holds the feature file's path and fingerprint, not
    the table; predict and evaluate give what the same run with the table copied gives."""
    import h5py

    from trainer.pool import read_pool, write_pool

    root, run = referring_run
    ref = table_ref(run)
    with h5py.File(ref["path"], "r") as features:
        assert ref["fingerprint"] == features.attrs["fingerprint"]
        assert ref["shape"] == list(features["features"].shape)
        table_bytes = features["features"].nbytes
    assert ref["relative"].startswith("../../features/")
    copied = tmp_path / "copied"
    shutil.copytree(run, copied)
    write_pool(copied / "pool.h5", read_pool(run / "pool.h5"))      # the table copied
    with h5py.File(copied / "pool.h5", "r") as h5:
        assert h5["image/table"].shape == tuple(ref["shape"]) and h5.attrs["format"] == 1
    saved = (copied / "pool.h5").stat().st_size - (run / "pool.h5").stat().st_size
    assert saved >= table_bytes
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    got = outputs(run, root / "tiny", tmp_path / "a")
    assert got == outputs(copied, root / "tiny", tmp_path / "b")
    assert got[0] == (run / "predictions_test.conll").read_text()


def test_a_referred_feature_file_moved_changed_or_gone(referring_run, tmp_path):
    """The artifacts moved with the run: found by its relative path. Replaced by another file
    or deleted: a one-line error naming it. Copied into the run folder: found there."""
    from tagger_fixtures import one_line_error

    root, run = referring_run
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    run = moved / run.relative_to(root)
    text = ("predict", "--run", run, "--text", "Obama visits Paris", "--caption", "a man")
    result = invoke(*text)
    assert result.exit_code == 0, result.output
    ref = table_ref(run)
    feature_file = (run / ref["relative"]).resolve()
    keep = tmp_path / "kept.h5"
    shutil.copy(feature_file, keep)
    other = next(p for p in feature_file.parent.glob("*.h5") if p != feature_file)
    shutil.copy(other, feature_file)
    one_line_error(invoke(*text), str(feature_file), "is not the node table this run refers to",
                   "copy the feature file into the run folder")
    one_line_error(invoke("evaluate", "--run", run, "--data-dir", moved / "tiny"),
                   str(feature_file))
    feature_file.unlink()
    one_line_error(invoke(*text), ref["path"], "feature file not found")
    shutil.copy(keep, run / feature_file.name)
    result = invoke(*text)
    assert result.exit_code == 0, result.output
