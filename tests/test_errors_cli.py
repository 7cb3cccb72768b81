"""How the command line words the library's errors (``cli.describe_error``), the option <-> config
mapping read from the commands and dataclasses, and the raw tracebacks of issue 12 case 5 turned
into one line each (exit 1, ``Error: ...``, before any work where an output cannot be written)."""
from __future__ import annotations

import pytest

import cli
from cli_common import config_values, option_of
from pipeline.errors import (CacheMismatch, DataFormatError, InvalidConfig, MissingInput,
                             OutputError, writable_file, writable_folder)
from tagger_fixtures import (invoke, one_line_error, tiny_encoder,  # noqa: F401
                             tiny_pipeline, tiny_run)
from trainer.config import TrainConfig, field_groups

TRAIN, EXTRACT = cli.main.commands["train"], cli.main.commands["extract"]
EVALUATE = cli.main.commands["evaluate"]


def test_an_error_without_fix_fields_reads_as_before():
    err = DataFormatError("d/train.txt", 2, "no tab in 'hello O'; expected token<TAB>tag")
    assert cli.describe_error(err, TRAIN) == str(err) == \
        "d/train.txt:2: no tab in 'hello O'; expected token<TAB>tag"
    assert cli.describe_error(MissingInput("plain old message"), TRAIN) == "plain old message"


def test_fields_become_this_clis_words():
    err = CacheMismatch("made by another configuration", path="f.h5", rerun="extract",
                        setting="overwrite")
    assert cli.describe_error(err, EXTRACT) == \
        "f.h5: made by another configuration; pass --overwrite"
    assert cli.describe_error(err, TRAIN) == \
        "f.h5: made by another configuration; re-run `python cli.py extract --overwrite ...`"
    err = InvalidConfig("the graphs hold 3 neighbours", setting="k", rerun="build-graphs")
    assert cli.describe_error(err, TRAIN) == (
        "the graphs hold 3 neighbours; re-run `python cli.py build-graphs ...` or set --k")
    err = InvalidConfig("too long", setting="context_subwords", hint="lower the budget")
    assert cli.describe_error(err, TRAIN) == "too long; lower the budget (--context-subwords)"
    err = InvalidConfig("too long", setting="model.max_subwords")
    assert cli.describe_error(err, TRAIN) == "too long; set model.max_subwords in a --config file"
    assert cli.describe_error(err, EVALUATE) == "too long; set model.max_subwords"
    err = MissingInput("no weights", path="r", rerun="train", setting="inter")
    assert cli.describe_error(err, TRAIN) == "r: no weights; pass --no-inter"
    assert cli.describe_error(err, EVALUATE) == (
        "r: no weights; re-run `python cli.py train --no-inter ...`")
    err = CacheMismatch("stale", rerun="build-graphs", hint="the features changed")
    assert cli.describe_error(err, TRAIN) == (
        "stale; the features changed; re-run `python cli.py build-graphs ...`")


def test_the_library_sentence_names_no_option():
    assert str(CacheMismatch("stale", path="f.h5", rerun="extract", setting="overwrite")) == (
        "f.h5: stale; run the extract stage again or set overwrite")
    assert str(InvalidConfig("too long", setting="context_subwords", hint="lower it")) == (
        "too long; lower it (context_subwords)")
    assert str(InvalidConfig("k too big", setting="k")) == "k too big; set k"
    assert str(MissingInput("gone", hint="restore it", rerun="train")) == (
        "gone; restore it; run the train stage again")


def test_a_command_is_never_told_of_an_option_it_does_not_have():
    err = MissingInput("data moved", setting="data_dir")
    assert "--data-dir" not in cli.describe_error(err, cli.main.commands["predict"])
    assert cli.describe_error(err, TRAIN) == "data moved; set --data-dir"
    assert cli.describe_error(err, EVALUATE) == "data moved; set --data-dir"   # it has one now


def test_every_train_option_sets_a_config_field_by_its_name():
    settings = field_groups()
    assert len(settings) == len(set(settings))
    for param in TRAIN.params:
        if param.name in ("config_file", "seeds", "quiet"):
            continue
        field = param.name[3:] if param.name.startswith("no_") else param.name
        assert field in settings, param.name
        assert option_of(TRAIN, field) is param
    given = {"no_inter": True, "no_gate": False, "k": 3, "epochs": 2, "pool": "train",
             "no_cuda_graphs": True}
    config = TrainConfig(data_dir="d").with_overrides(**config_values(given))
    assert (config.model.inter, config.model.gate, config.model.k) == (False, True, 3)
    assert (config.optim.epochs, config.optim.cuda_graphs, config.pool) == (2, False, "train")
    with pytest.raises(InvalidConfig, match="unknown setting 'no_inter'"):
        TrainConfig(data_dir="d").with_overrides(no_inter=True)


def test_the_group_has_a_version():
    result = invoke("--version")
    assert result.exit_code == 0 and "version" in result.output


def test_output_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    assert writable_file(tmp_path / "out.csv") == tmp_path / "out.csv"
    assert writable_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    with pytest.raises(OutputError, match="is a folder"):
        writable_file(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        writable_file(tmp_path / "missing" / "x.csv")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        writable_file(tmp_path / "file" / "x.csv")
    with pytest.raises(OutputError, match="a file is in the way"):
        writable_folder(tmp_path / "file")
    with pytest.raises(OutputError, match="a file is in the way"):
        writable_folder(tmp_path / "file" / "below")


def test_the_extract_note_names_its_own_option(tiny_dir, tmp_path, monkeypatch):
    from pipeline import extract
    monkeypatch.setattr(extract, "run_extract", lambda config, progress: {})
    monkeypatch.setattr(extract, "summary_lines", lambda summary: ["done"])
    result = invoke("extract", "--data-dir", tiny_dir, "--artifacts", tmp_path / "a", "--device",
                    "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "--text-encoder chooses another" in result.output and "--encoder " not in result.output


def test_a_run_has_a_train_log(tiny_run):
    lines = (tiny_run / "train.log").read_text().splitlines()
    assert lines[0].split(" ", 2)[2].startswith(f"run {tiny_run.name}: full with encoder")
    assert any("epoch 2: loss" in line for line in lines)
    assert "finished in" in lines[-1]
