"""The CLI: help texts, the stats table (pinned on the benchmark data) and one-line errors."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import cli
from conftest import SHARED_DATA, needs_shared_data


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_help_lists_every_stage():
    result = invoke("--help")
    assert result.exit_code == 0
    for stage in ("extract", "build-graphs", "train", "evaluate", "predict", "stats"):
        assert stage in result.output


def test_every_command_has_help_with_an_example():
    for name, command in cli.main.commands.items():
        result = invoke(name, "-h")
        assert result.exit_code == 0, name
        assert "Example: python cli.py" in result.output, name


def test_stats_on_the_tiny_dataset_writes_csv_and_json(tiny_dir, tmp_path):
    result = invoke("stats", "--data-dir", tiny_dir, "--output", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    rows = {r["split"]: r for r in json.loads((tmp_path / "s.json").read_text())}
    assert rows["train"]["tweets"] == 6 and rows["total"]["tweets"] == 12
    assert rows["train"]["OTHER_conlleval"] == 2 and rows["train"]["LOC_conlleval"] == 5
    assert rows["train"]["LOC_strict"] == 4
    assert rows["train"]["captions_found"] == 6 and rows["train"]["captions_missing"] == 0
    assert rows["train"]["images_found"] is None
    result = invoke("stats", "--data-dir", tiny_dir, "--output", tmp_path / "s.csv")
    assert result.exit_code == 0 and (tmp_path / "s.csv").read_text().startswith("split,tweets")


def test_stats_counts_images_found_and_missing(tiny_dir, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for item in ("101", "102", "301"):
        (images / f"{item}.jpg").write_bytes(b"x")
    result = invoke("stats", "--data-dir", tiny_dir, "--image-dir", images, "-o", tmp_path / "s.json")
    rows = {r["split"]: r for r in json.loads((tmp_path / "s.json").read_text())}
    assert (rows["train"]["images_found"], rows["train"]["images_missing"]) == (2, 4)
    assert (rows["total"]["images_found"], rows["total"]["images_missing"]) == (3, 9)


def test_bad_input_is_one_line_without_traceback(tmp_path):
    (tmp_path / "train.txt").write_text("IMGID:1\nhello O\n", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("IMGID:2\na\tO\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("IMGID:3\na\tO\n", encoding="utf-8")
    result = invoke("stats", "--data-dir", tmp_path)
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path / 'train.txt'}:2: no tab in 'hello O'; expected "
                             "token<TAB>tag\n")
    result = invoke("stats", "--data-dir", tmp_path / "missing")
    assert result.exit_code == 1 and "data directory not found" in result.output
    assert "Traceback" not in result.output


@needs_shared_data
@pytest.mark.parametrize("name, tweets", [("twitter2015", (4000, 1000, 3257)),
                                          ("twitter2017", (3373, 723, 723))])
def test_stats_reproduces_the_verified_numbers(tmp_path, name, tweets):
    result = invoke("stats", "--data-dir", SHARED_DATA / name, "-o", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    rows = {r["split"]: r for r in json.loads((tmp_path / "s.json").read_text())}
    assert tuple(rows[s]["tweets"] for s in ("train", "valid", "test")) == tweets
    assert rows["total"]["captions_missing"] == 0
    if name == "twitter2015":
        assert rows["train"]["tokens"] == 64439
        orphans = [rows[s]["entities_conlleval"] - rows[s]["entities_strict"]
                   for s in ("train", "valid", "test")]
        assert orphans == [186, 53, 135]
        assert rows["train"]["OTHER_conlleval"] == 975 and rows["total"]["captions_empty"] == 2
    else:
        test = rows["test"]
        assert test["entities_conlleval"] == test["entities_strict"] == 1351
        assert (test["PER_conlleval"], test["LOC_conlleval"], test["ORG_conlleval"],
                test["MISC_conlleval"]) == (621, 178, 395, 157)


@needs_shared_data
def test_rgcn_files_match_the_umt_files():
    from pipeline.data import load_dataset
    from pipeline.rgcn import check_against_umt, read_rgcn
    for name in ("twitter2015", "twitter2017"):
        dataset = load_dataset(SHARED_DATA / name)
        for split, tweets in dataset.splits.items():
            path = SHARED_DATA / name / "rgcn" / f"{split}_2.txt"
            check = check_against_umt(path, read_rgcn(path), tweets)
            assert check.extra == []
            assert check.missing == ([tweets[-1].item_id] if name == "twitter2015" else [])
            expected = [("73309", 18, ":\u00a0", "\u00a0")] if (name, split) == (
                "twitter2015", "valid") else []
            assert check.token_diffs == expected


def test_the_default_text_encoder_depends_on_the_gpu_and_is_said(monkeypatch):
    import torch

    import pipeline.packaged as packaged
    asked = []
    monkeypatch.setattr(packaged, "best_available_text_encoder",
                        lambda gpu: asked.append(gpu) or ("mpnet-base" if gpu else "minilm-l6"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.default_text_encoder("cpu")[0] == "minilm-l6"
    name, note = cli.default_text_encoder("auto")
    assert name == "mpnet-base" and note == (
        "text encoder: mpnet-base (default with a GPU; --encoder chooses another)")
    assert cli.default_text_encoder("auto", "--text-encoder")[1].endswith(
        "; --text-encoder chooses another)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.default_text_encoder("cuda")[0] == "minilm-l6"
    assert asked == [False, True, True, False]
    help_text = " ".join(invoke("train", "-h").output.split())
    assert "[default: mpnet-base on a GPU when its wheels are installed, else minilm-l6]" \
        in help_text
