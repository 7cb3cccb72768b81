"""Issue 12, case 5: inputs that used to end in a raw traceback give one line each (exit 1,
``Error: ...``), and an output that cannot be written is refused before any work. Only the command
line is used here, so each test also runs against the code before the change (where it fails)."""
from __future__ import annotations

import os
import shutil

import pytest

from tagger_fixtures import (invoke, one_line_error, tiny_encoder,  # noqa: F401
                             tiny_pipeline, tiny_run)


def test_stats_to_a_missing_folder_or_a_folder_is_one_line(tiny_dir, tmp_path):
    one_line_error(invoke("stats", "--data-dir", tiny_dir, "-o", tmp_path / "missing" / "x.csv"),
                   "missing/x.csv: cannot write here: the folder", "does not exist")
    one_line_error(invoke("stats", "--data-dir", tiny_dir, "-o", tmp_path), "is a folder")
    one_line_error(invoke("stats", "--data-dir", tiny_dir, "-o", tmp_path / "x.txt"),
                   "unknown table format; use a .csv or .json file name (--output)")


def test_extract_into_an_artifacts_path_that_is_a_file_is_one_line(tiny_dir, tmp_path):
    (tmp_path / "artifacts").write_text("not a folder")
    one_line_error(invoke("extract", "--data-dir", tiny_dir, "--artifacts", tmp_path / "artifacts",
                          "--quiet"), "is not a folder: a file is in the way")


def test_extract_refuses_an_image_encoder_without_images(tiny_dir, tmp_path):
    one_line_error(invoke("extract", "--data-dir", tiny_dir, "--artifacts", tmp_path / "a",
                          "--image-encoder", "resnet50", "--quiet"),
                   "--image-encoder encodes images", "give --image-dir")
    assert not (tmp_path / "a").exists()


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.mark.parametrize("content", ["pickle", "random"])
def test_weights_that_are_not_safetensors_are_one_line(run_copy, content):
    import torch
    weights = run_copy / "model.safetensors"
    if content == "pickle":
        torch.save({"emit.weight": torch.zeros(3)}, weights)
    else:
        weights.write_bytes(os.urandom(4096))
    one_line_error(invoke("evaluate", "--run", run_copy, "--device", "cpu"),
                   f"{weights}: not a safetensors file")
    one_line_error(invoke("predict", "--run", run_copy, "--text", "obama visits paris",
                          "--device", "cpu"), f"{weights}: not a safetensors file")


def test_another_runs_weights_are_one_line(run_copy):
    from safetensors.torch import load_file, save_file
    weights = run_copy / "model.safetensors"
    tensors = load_file(weights)
    tensors["emit.weight"] = tensors["emit.weight"][:-1].clone()   # another label set's head
    save_file(tensors, weights)
    one_line_error(invoke("evaluate", "--run", run_copy, "--device", "cpu"),
                   "these weights are not the model that model.json describes",
                   "size mismatch for emit.weight")


def test_predict_into_a_folder_is_refused_before_the_work(run_copy, tmp_path, monkeypatch):
    import trainer.predict
    monkeypatch.setattr(trainer.predict, "predict", lambda *a: pytest.fail("work was done"))
    one_line_error(invoke("predict", "--run", run_copy, "--text", "obama visits paris",
                          "-o", tmp_path), "is a folder")


def test_predict_writes_its_output_file(run_copy, tmp_path):
    result = invoke("predict", "--run", run_copy, "--text", "obama visits paris", "--device",
                    "cpu", "-o", tmp_path / "p.conll")
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p.conll").read_text().splitlines()
    assert [line.split()[0] for line in lines if line] == ["obama", "visits", "paris"]


@pytest.mark.parametrize("kind", ["folder", "binary", "bad json"])
def test_a_config_file_that_cannot_be_read_is_one_line(tiny_dir, tmp_path, kind):
    config = tmp_path / "config.json"
    if kind == "folder":
        config.mkdir()
    else:
        config.write_bytes(b"\xff\xfe\x00" if kind == "binary" else b'{"data_dir": "d",\n  x}')
    expected = {"folder": "cannot read the config file (Is a directory)",
                "binary": "cannot read the config file (UnicodeDecodeError)",
                "bad json": f"{config}:2: not valid JSON"}[kind]
    one_line_error(invoke("train", "--data-dir", tiny_dir, "--artifacts", tmp_path / "a",
                          "--config", config), expected)
