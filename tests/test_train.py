"""`train` and `evaluate` through the CLI on the tiny dataset after the real extract and
build-graphs: the run folder, re-scoring, reproducibility from config.json, seeds, and refused
inputs."""
from __future__ import annotations

import json
import shutil

import h5py
import pytest

import cli
from tagger_fixtures import (invoke, tiny_encoder, tiny_pipeline, tiny_run,  # noqa: F401
                             train_args)
from trainer.config import ModelConfig, OptimConfig, TrainConfig
from conftest import TINY_KEY


def test_config_round_trips_and_refuses_bad_values(tmp_path):
    config = TrainConfig(data_dir="d", model=ModelConfig(inter=False, k=3),
                         optim=OptimConfig(epochs=2))
    path = tmp_path / "c.json"
    config.to_json(path)
    assert TrainConfig.from_json(path) == config
    assert config.model.variant() == "no-inter"
    text_only = ModelConfig(text_only=True)
    assert text_only.inter is False and text_only.variant() == "text-only"
    assert config.with_overrides(gate=False, epochs=4, pool="train") == TrainConfig(
        data_dir="d", pool="train", model=ModelConfig(inter=False, k=3, gate=False),
        optim=OptimConfig(epochs=4))
    assert config.optim.cuda_graphs and not config.with_overrides(
        cuda_graphs=False).optim.cuda_graphs
    path.write_text(json.dumps({"data_dir": "d", "model": {"layers": 2}}))
    with pytest.raises(Exception) as err:
        TrainConfig.from_json(path)
    assert str(err.value) == (f"{path}: model: unknown key 'layers'; valid keys: bio_constraints, "
                              "context, context_k, context_labels, context_subwords, dropout, "
                              "encoder, gate, gcn_layers, graph_dim, heads, inter, intra, k, "
                              "max_subwords, node_view, region_pool, shape, text_only")
    with pytest.raises(Exception) as err:
        ModelConfig(graph_dim=30, heads=4)
    assert str(err.value) == "model.graph_dim (30) must be a positive multiple of model.heads (4)"


def test_train_writes_a_complete_run(tiny_run, tiny_pipeline):
    data, artifacts = tiny_pipeline
    assert tiny_run.name.endswith("-tiny-full-s1") and not tiny_run.name.endswith(".tmp")
    for name in ("config.json", "env.json", "inputs.json", "metrics.jsonl", "results.json",
                 "predictions_valid.conll", "predictions_test.conll", "model.safetensors",
                 "model.json", "encoder/config.json", "curve.png"):
        assert (tiny_run / name).is_file(), name
    config = TrainConfig.from_json(tiny_run / "config.json")
    assert config.model.node_view == "image_global" and config.model.k == 3 and config.seed == 1
    epochs = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    steps = json.loads((tiny_run / "results.json").read_text())["steps"]
    assert steps == {"mode": "eager", "eager_steps": 4}   # CPU: 6 tweets, batch 4, 2 epochs
    assert set(epochs[0]["valid"]) == {"conlleval", "strict"}
    assert (tiny_run / "curve.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tiny_run / "inputs.json").read_text())
    manifest = json.loads((artifacts / "graphs" / TINY_KEY / "manifest.json").read_text())["graphs"]
    assert record["image"]["inter"]["path"].endswith(manifest["inter"])
    with h5py.File(record["image"]["intra"]["path"]) as h5:
        assert record["image"]["intra"]["fingerprint"] == h5.attrs["fingerprint"]
    assert record["image"]["masked"]["intra"]["flagged_queries"] == 4  # captions naming no object
    env = json.loads((tiny_run / "env.json").read_text())
    assert env["device"]["name"] == "cpu" and "git_sha" in env["code"]
    conll = (tiny_run / "predictions_test.conll").read_text().split("\n\n")
    assert conll[0].splitlines()[0].split(" ")[:3] == ["Messi", "301", "B-PER"]
    assert (data / "test.txt").read_text().count("\t") == sum(
        len(block.splitlines()) for block in conll)


def test_evaluate_rescores_the_saved_run(tiny_run):
    from trainer.run import evaluate_run

    results = json.loads((tiny_run / "results.json").read_text())
    result = invoke("evaluate", "--run", tiny_run, "--split", "test")
    assert result.exit_code == 0, result.output
    overall = [line for line in result.output.splitlines() if line.startswith("overall")][0]
    f1 = {m: 100 * results["test"][m]["overall"]["f1"] for m in ("conlleval", "strict")}
    assert overall.split()[-1] == f"{f1['strict']:.2f}"
    assert overall.split()[-5] == f"{f1['conlleval']:.2f}"
    evaluation, _ = evaluate_run(tiny_run, "test", "cpu")
    saved = [[line.split(" ")[3] for line in block.splitlines()]
             for block in (tiny_run / "predictions_test.conll").read_text().strip().split("\n\n")]
    assert [[t.replace("MISC", "OTHER") for t in tags] for tags in evaluation.tags] == saved


def test_a_run_is_reproduced_from_its_config_json(tiny_run, tmp_path):
    result = invoke("train", "--config", tiny_run / "config.json", "--artifacts", tmp_path,
                    "--quiet")
    assert result.exit_code == 0, result.output
    again = next((tmp_path / "runs").iterdir())
    first = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(x) for x in (again / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(first, second):
        assert a["train_loss"] == b["train_loss"] and a["valid"] == b["valid"]
    assert (again / "predictions_test.conll").read_text() == (
        tiny_run / "predictions_test.conll").read_text()


def test_text_only_seeds_need_no_features_and_report_mean_std(tiny_dir, tmp_path, tiny_encoder):
    result = invoke(*train_args(tiny_dir, tmp_path, tiny_encoder, "--text-only", "--seeds", "1,2",
                                "--epochs", 1))
    assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert [r.split("-", 2)[2] for r in runs] == ["tiny-text-only-s1", "tiny-text-only-s2"]
    lines = result.output.splitlines()
    assert any(line.startswith("test F1 conlleval: ") and "± " in line and "over 2 seeds" in line
               for line in lines)
    assert any(line.startswith("test F1 strict: ") for line in lines)


def test_an_image_model_without_extract_says_what_to_run(tiny_dir, tmp_path, tiny_encoder):
    result = invoke(*train_args(tiny_dir, tmp_path, tiny_encoder))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {tmp_path / 'features' / TINY_KEY / 'manifest.json'}")
    assert "extract" in result.output.split(";", 1)[1]
    assert result.output.count("\n") == 1


@pytest.fixture
def other_dataset(tmp_path, tiny_pipeline, tiny_encoder):
    """The tweets with one token changed, under another dataset name, extracted and with graphs."""
    data, _ = tiny_pipeline
    other = tmp_path / "other"
    shutil.copytree(data, other)
    text = (other / "train.txt").read_text()
    (other / "train.txt").write_text(text.replace("\t", "x\t", 1))
    artifacts = tmp_path / "artifacts"
    assert invoke("extract", "--data-dir", other, "--artifacts", artifacts, "--text-encoder",
                  tiny_encoder, "--quiet").exit_code == 0
    assert invoke("build-graphs", "--data-dir", other, "--artifacts", artifacts, "--k", 3,
                  "--quiet").exit_code == 0
    return artifacts


def test_features_or_graphs_of_another_dataset_are_refused(tiny_pipeline, tiny_encoder,
                                                           other_dataset, tmp_path):
    data, artifacts = tiny_pipeline
    [features] = (other_dataset / "features").glob("other-*/image_global-*.h5")
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--features", features))
    assert result.exit_code == 0, result.output      # captions only: same content, so usable
    [graph] = (other_dataset / "graphs").glob("other-*/inter-*.h5")
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--inter-graph", graph))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {graph}: train.txt changed since this artefact was "
                                    "made;")


def test_graphs_of_both_pools_live_side_by_side_and_a_wrong_pool_is_refused(
        tiny_pipeline, tiny_encoder, tmp_path):
    data, artifacts = tiny_pipeline
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts / "features", copy / "features")
    result = invoke("build-graphs", "--data-dir", data, "--artifacts", copy, "--k", 3, "--pool",
                    "train", "--quiet")
    assert result.exit_code == 0, result.output
    graphs = json.loads((copy / "graphs" / TINY_KEY / "manifest.json").read_text())["graphs"]
    assert set(graphs) == {"inter@train", "intra@train"}
    result = invoke(*train_args(data, copy, tiny_encoder))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: no inter graph for tiny in {copy};")
    inter = copy / "graphs" / TINY_KEY / graphs["inter@train"]
    result = invoke(*train_args(data, copy, tiny_encoder, "--inter-graph", inter, "--no-intra"))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {inter}: built over pool 'train' but this run uses "
                                    "pool 'all';")
    result = invoke(*train_args(data, copy, tiny_encoder, "--pool", "train", "--epochs", 1))
    assert result.exit_code == 0, result.output
    config = json.loads(next((copy / "runs").iterdir()).joinpath("config.json").read_text())
    assert config["inter_graph"].endswith(graphs["inter@train"]) and config["pool"] == "train"


def test_evaluate_refuses_a_changed_graph_file(tiny_run, tmp_path):
    run = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run)
    (run / "pool.h5").unlink()      # a run from before pool.h5 re-reads its recorded files
    record = json.loads((run / "inputs.json").read_text())
    graph = tmp_path / "inter.h5"
    shutil.copy(record["image"]["inter"]["path"], graph)
    with h5py.File(graph, "r+") as h5:
        h5.attrs["fingerprint"] = "0" * 64
    record["image"]["inter"]["path"] = str(graph)
    (run / "inputs.json").write_text(json.dumps(record))
    result = invoke("evaluate", "--run", run)
    assert result.exit_code == 1
    expected = record["image"]["inter"]["fingerprint"][:12]
    assert result.output == (f"Error: {graph}: changed since run {run.name} was trained "
                             f"(fingerprint 000000000000, recorded {expected}); restore it or "
                             "train again\n")


def test_an_fp16_encoder_copy_trains_with_fp32_weights(tiny_dir, tmp_path, tiny_encoder):
    import torch
    from safetensors import safe_open
    from transformers import AutoModel, AutoTokenizer

    half = tmp_path / "encoder-fp16"
    AutoModel.from_pretrained(tiny_encoder).half().save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(half)
    result = invoke(*train_args(tiny_dir, tmp_path, half, "--text-only", "--epochs", 1))
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    with safe_open(run / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float32}


def test_train_help_states_the_config_defaults():
    """The CLI repeats the defaults in its help text; they must be the config's (defined there)."""
    import re

    text = " ".join(invoke("train", "-h").output.split())
    segments = {part.split()[0]: part for part in text.split(" --")[1:]}
    model, optim = ModelConfig(), OptimConfig()
    expected = {"k": model.k, "epochs": optim.epochs,
                "batch-size": optim.batch_size, "lr-encoder": optim.lr_encoder,
                "lr-head": optim.lr_head, "patience": optim.patience}
    for option, value in expected.items():
        stated = re.search(r"\[default: ([^\]]+?)\.?\]", segments[option]).group(1)
        assert (float(stated) if isinstance(value, (int, float)) else stated) == value, option
    # the encoder's default depends on the machine (cli.default_text_encoder); the CPU one is the
    # config's
    assert segments["encoder"].endswith(f"else {model.encoder}].")


def test_a_run_folder_is_never_reused(tmp_path, monkeypatch):
    import datetime as real

    from pipeline.errors import CacheMismatch
    from trainer import run

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 5, 1, 12, 0, 0)
    monkeypatch.setattr(run, "datetime", Frozen)
    tmp, final = run.new_run_dir(tmp_path, "tiny-full-s1")
    assert tmp.is_dir() and final.name == "20240501-120000-tiny-full-s1"
    with pytest.raises(CacheMismatch) as err:
        run.new_run_dir(tmp_path, "tiny-full-s1")
    assert str(err.value) == (f"{final}: run folder already exists and runs are never "
                              "overwritten; wait a second or choose another slug (slug)")
    assert cli.describe_error(err.value, cli.main.commands["train"]).endswith(
        "; wait a second or choose another slug (--slug)")


def test_authors_neighbours_outside_the_dataset_are_masked_not_refused(tiny_pipeline, tiny_encoder,
                                                                        tmp_path):
    """The authors' 2015 lists name images that are no tweet of the dataset (74471 in 45% of
    them): the importer keeps them in ``pool_unknown``; training masks them and counts them."""
    import shutil

    from pipeline.data import load_dataset
    from trainer.config import TrainConfig
    from trainer.inputs import load_inputs

    data, artifacts = tiny_pipeline
    copy_data, copy_art = tmp_path / "tiny", tmp_path / "artifacts"
    shutil.copytree(data, copy_data)
    shutil.copytree(artifacts, copy_art)
    (copy_data / "rgcn").mkdir()
    for split, tweets in load_dataset(copy_data).splits.items():
        lines = []
        for tweet in tweets:
            others = [t.item_id for t in tweets if t.item_id != tweet.item_id][:2]
            ids = " ".join(f"{i}.jpg" for i in (["777"] + others + ["777"] * 7)[:10])
            scores = " ".join(["0.5"] * 10)
            lines += [" ".join(tweet.tokens), " ".join(tweet.tags).replace("MISC", "OTHER"),
                      f"{tweet.item_id}.jpg", scores, ids, scores, ids]
        (copy_data / "rgcn" / f"{split}_2.txt").write_text("\n".join(lines) + "\n",
                                                           encoding="utf-8")
    result = invoke("build-graphs", "--data-dir", copy_data, "--artifacts", copy_art, "--k", 3,
                    "--relation", "none", "--quiet")
    assert result.exit_code == 0, result.output
    config = TrainConfig(data_dir=copy_data, artifacts=copy_art, graph_source="rgcn")
    inputs = load_inputs(config.with_overrides(encoder=tiny_encoder, k=3))
    masked = inputs.files["masked"]["inter"]
    assert masked["not_in_dataset"] == 12          # one "777" in each tweet's first 3
    assert masked["missing_neighbours"] >= 12
    assert (inputs.image.inter[:, 0] == -1).all()


def test_a_run_without_checkpoint_keeps_its_record_and_says_why_it_cannot_predict(
        tiny_dir, tmp_path, tiny_encoder):
    result = invoke(*train_args(tiny_dir, tmp_path, tiny_encoder, "--text-only", "--epochs", 1,
                                "--no-checkpoint"))
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    assert {"results.json", "model.json", "predictions_test.conll"} <= {
        p.name for p in run.iterdir()}
    assert not (run / "model.safetensors").exists() and not (run / "encoder").exists()
    assert json.loads((run / "model.json").read_text())["weights"] is False
    assert json.loads((run / "config.json").read_text())["checkpoint"] is False
    result = invoke("evaluate", "--run", run)
    assert result.exit_code == 1
    assert result.output == (f"Error: {run}: this run was trained without saving its weights: "
                             "it holds scores and predictions but no model; re-run "
                             "`python cli.py train ...`\n")
