"""experiments/results_matrix.py: the plan (which runs, their order and commands), resuming (done
runs skipped, killed folders moved aside, runs of another configuration refused), the device slots
and the process queue, the gain arithmetic, the report on synthetic run folders made here, and one
tiny end-to-end call through the real CLI. No test reads the GPU run folders committed under
experiments/results/."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import sys
import time

import pytest

from conftest import TINY
from experiments import matrix_report as report
from experiments import results_matrix as matrix
from experiments.matrix_runner import Status, device_slots, pick_device, run_queue, scan_runs
from pipeline.errors import CacheMismatch, InvalidConfig, MissingInput
from tagger_fixtures import tiny_encoder  # noqa: F401
from trainer.config import ModelConfig, OptimConfig

TYPES = ("LOC", "MISC", "ORG", "PER")


def scores_of(f1: float) -> dict:
    """One split's seqeval record with test F1 ``f1``, P = F1 + 0.01, R = F1 - 0.01, each type
    at the overall scores."""
    overall = {"f1": f1, "precision": f1 + 0.01, "recall": f1 - 0.01, "support": 100}
    mode = {"overall": overall, "types": {name: dict(overall) for name in TYPES}}
    return {"conlleval": mode, "strict": mode}


def fake_run(runs, slug: str, f1: float, seconds: float, encoder: str = "/tmp/minilm-l6-fp16",
             stamp: str = "20261128-045035"):
    """A finished run folder as ``cli.py train`` writes it (config, env, inputs, results), with
    made-up scores: what the matrix reads of a run, nothing more."""
    folder = runs / f"{stamp}-{slug}"
    folder.mkdir(parents=True)
    text_only = "text-only" in slug
    graph = {"source": "ours", "pool": "all", "k": 5, "space": "sentence:minilm-l6",
             "path": "/x/graphs/twitter2017/inter-ours-34cec8f8da3b.h5"}
    records = {
        "config": {"data_dir": "/x/twitter2017", "graph_source": "ours", "pool": "all",
                   "precision": "auto", "seed": int(slug.rsplit("-s", 1)[1]),
                   "model": dataclasses.asdict(ModelConfig(encoder=encoder, text_only=text_only)),
                   "optim": dataclasses.asdict(OptimConfig())},
        "env": {"code": {"git_sha": "abc1234", "git_dirty": False},
                "device": {"gpu": "NVIDIA H200", "name": "cuda:0", "threads": 64},
                "packages": {"torch": "2.11.0", "transformers": "5.17.0"}},
        "inputs": {"dataset": "twitter2017", "image": {} if text_only else {"inter": graph}},
        "results": {"seconds": seconds, "best_epoch": 3, "epochs_run": 5,
                    "stopped_early": False, "test": scores_of(f1), "valid": scores_of(f1)}}
    for name, record in records.items():
        (folder / f"{name}.json").write_text(json.dumps(record))
    return folder


def data_root(tmp_path, sizes=(("twitter2015", 5), ("twitter2017", 3))):
    """Datasets with ``n`` training tweets each (enough for the planner)."""
    root = tmp_path / "data"
    for name, n in sizes:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "train.txt").write_text("".join(f"IMGID:{i}\nRT\tO\n\n" for i in range(n)))
    return root


def config(tmp_path, **kw):
    kw.setdefault("data_root", data_root(tmp_path))
    return matrix.MatrixConfig(artifacts=tmp_path / "a", **kw)


def test_plan_lists_every_run_longest_first(tmp_path):
    cfg = config(tmp_path, datasets=("twitter2017", "twitter2015"))
    jobs = matrix.plan(cfg)
    assert len(jobs) == 2 * (8 * 5 + 4 * 3) and len({j.slug for j in jobs}) == len(jobs)
    assert [j.dataset for j in jobs] == ["twitter2015"] * 52 + ["twitter2017"] * 52
    order = list(dict.fromkeys(j.row.name for j in jobs[:52]))
    assert order == ["ctx-images-k5", "full-ctx-images", "ctx-images", "ctx-text",
                     "ctx-images-train", "full", "no-gate", "full-rgcn", "no-inter", "no-intra",
                     "no-graphs", "text-only"]
    assert [j.seed for j in jobs if j.dataset == "twitter2017" and j.row.name == "full"] == [
        1, 2, 3, 4, 5]
    assert [j.seed for j in jobs if j.dataset == "twitter2017" and j.row.name == "no-gate"] == [
        1, 2, 3]
    first = next(j for j in jobs if j.row.name == "ctx-images")
    assert matrix.train_command(first, cfg, "cuda:1") == [
        sys.executable, "cli.py", "train", "--data-dir", str(cfg.data_root / "twitter2015"),
        "--artifacts", str(tmp_path / "a"), "--encoder", "minilm-l6", "--text-only",
        "--context", "inter", "--seeds", "1", "--slug", "twitter2015-ctx-images-s1", "--device",
        "cuda:1", "--no-checkpoint", "--quiet"]
    kept = matrix.MatrixConfig(**{**cfg.__dict__, "keep_checkpoints": True})
    assert "--no-checkpoint" not in matrix.train_command(first, kept, "cuda:1")


def test_prepare_builds_the_text_and_train_pool_graphs_only_when_a_row_needs_them(tmp_path):
    cfg = config(tmp_path, device="cpu", epochs=2)
    rows = matrix.select_rows(matrix.ROWS, ("full", "text-only"))
    steps = matrix.prepare_commands(cfg, "twitter2017", rows)
    assert [(name, required) for name, _, required in steps] == [("extract", True),
                                                                 ("build-graphs", True)]
    assert steps[0][1][2:] == ["extract", "--data-dir", str(cfg.data_root / "twitter2017"),
                               "--artifacts", str(tmp_path / "a"), "--text-encoder",
                               "minilm-l6", "--device", "cpu", "--quiet"]
    steps = matrix.prepare_commands(cfg, "twitter2017", matrix.ROWS)
    assert steps[2][0] == "text-graph" and steps[2][2] is False
    assert steps[2][1][-6:] == ["--relation", "text", "--no-import-rgcn", "--device", "cpu",
                                "--quiet"]
    assert steps[3][0] == "train-pool-graphs" and steps[3][1][-8:] == [
        "--pool", "train", "--relation", "inter", "--no-import-rgcn", "--device", "cpu", "--quiet"]
    assert steps[4][0] == "intra-text-graph" and steps[4][1][-8:] == [
        "--relation", "intra", "--intra-view", "image_global", "--no-import-rgcn", "--device",
        "cpu", "--quiet"]
    job = matrix.Job("twitter2017", rows[0], 2)
    assert matrix.train_command(job, cfg, "cpu")[-6:] == ["--device", "cpu", "--epochs", "2",
                                                          "--no-checkpoint", "--quiet"]


def test_bad_options_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(InvalidConfig) as err:
        matrix.plan(config(tmp_path, rows=("full", "fulll")))
    assert str(err.value) == ("unknown row 'fulll'; rows: text-only, full, no-graphs, no-inter, "
                              "no-intra, no-gate, full-rgcn, ctx-images, ctx-text, ctx-images-k5, "
                              "full-ctx-images, ctx-images-train, full-intra-text, "
                              "no-inter-intra-text, ctx-intra-text, ctx-labels, "
                              "full-ctx-labels")
    with pytest.raises(InvalidConfig) as err:
        matrix.MatrixConfig(seeds=(1, 1))
    assert str(err.value) == "a seed is listed twice"
    with pytest.raises(MissingInput) as err:
        matrix.plan(config(tmp_path, datasets=("twitter2016",)))
    assert str(err.value) == (f"{tmp_path / 'data' / 'twitter2016' / 'train.txt'}: not found; "
                              "--data-root must hold one folder per dataset with train.txt, "
                              "valid.txt and test.txt")
    assert matrix.main(["train", "--data-root", str(tmp_path / "none"), "--artifacts",
                        str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.startswith(f"Error: {tmp_path / 'none' / 'twitter2015'}")


def test_resume_skips_done_runs_and_moves_killed_ones_aside(tmp_path, capsys):
    cfg = config(tmp_path, datasets=("twitter2017",), rows=("full",),
                 headline_seeds=(1, 2, 3), encoder="/tmp/minilm-l6-fp16")
    runs, killed = tmp_path / "a" / "runs", tmp_path / "a" / "runs-killed"
    fake_run(runs, "twitter2017-full-s1", 0.83, 200)
    (runs / "20261128-050000-twitter2017-full-s2.tmp").mkdir()       # killed while training
    (runs / "20261128-050001-twitter2017-full-s3").mkdir()           # no results.json
    (runs / "20261128-050001-twitter2017-full-s3" / "config.json").write_text("{}")
    (killed / "20261128-050000-twitter2017-full-s2.tmp").mkdir(parents=True)  # moved before
    todo, done, moved = matrix.triage(matrix.plan(cfg), cfg)
    assert [j.slug for j in todo] == ["twitter2017-full-s2", "twitter2017-full-s3"]
    assert [j.slug for j in done] == ["twitter2017-full-s1"]
    assert moved == [killed / "20261128-050000-twitter2017-full-s2.tmp-1",
                     killed / "20261128-050001-twitter2017-full-s3"]
    assert (moved[1] / "config.json").is_file()
    assert sorted(p.name for p in runs.iterdir()) == ["20261128-045035-twitter2017-full-s1"]
    finished, unfinished = scan_runs(runs)
    assert list(finished) == ["twitter2017-full-s1"] and unfinished == {}
    late = config(tmp_path, datasets=("twitter2017",), rows=("full",), headline_seeds=(1, 2, 3),
                  encoder="/tmp/minilm-l6-fp16", device="cpu", deadline=5)
    started = time.monotonic() - 6                  # the deadline counts from the call's start
    assert matrix.run_train(late, matrix.plan(late), set(), Status(late.artifacts),
                            started) == matrix.EXIT_DEADLINE
    assert ("[train] deadline (5 s after the start) reached: 2 runs not launched; call again "
            "to resume") in capsys.readouterr().out
    assert not (tmp_path / "a" / "logs").exists()
    other = config(tmp_path, datasets=("twitter2017",), rows=("full",), headline_seeds=(1,))
    with pytest.raises(CacheMismatch) as err:
        matrix.triage(matrix.plan(other), other)
    assert str(err.value) == (f"{runs / '20261128-045035-twitter2017-full-s1'}: a finished run "
                              "trained with encoder /tmp/minilm-l6-fp16, this matrix asks for "
                              "minilm-l6; pass another --artifacts or move that folder away")


def test_devices_fill_round_robin_up_to_their_slots():
    slots = {"cuda:0": 2, "cuda:1": 2}
    load, picks = {}, []
    for _ in range(5):
        device = pick_device(load, slots)
        picks.append(device)
        if device:
            load[device] = load.get(device, 0) + 1
    assert picks == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", None]
    assert pick_device({"cuda:0": 2, "cuda:1": 1}, slots) == "cuda:1"
    assert device_slots("cpu", None, 3, 2) == {"cpu": 2}
    assert device_slots("cuda", 3, 2, 1) == {"cuda:0": 2, "cuda:1": 2, "cuda:2": 2}
    assert device_slots("cuda:1", None, 4, 1) == {"cuda:1": 4}


def test_queue_runs_processes_on_free_slots_until_the_deadline(tmp_path):
    ended = []
    sleep = lambda job, device: [sys.executable, "-c", f"import time; time.sleep({job})"]  # noqa
    left = run_queue([0.4, 0.1, 0.1], {"a": 1, "b": 1}, sleep, lambda job: tmp_path / "q.log",
                     lambda run: ended.append((run.job, run.device, run.proc.returncode)),
                     poll=0.05)
    assert left == [] and sorted(ended) == [(0.1, "b", 0), (0.1, "b", 0), (0.4, "a", 0)]
    ended.clear()
    left = run_queue([0.6, 0.1, 0.1], {"a": 1}, sleep, lambda job: tmp_path / "q.log",
                     lambda run: ended.append(run.job), deadline=0.3, poll=0.05)
    assert left == [0.1, 0.1] and ended == [0.6]
    assert (tmp_path / "q.log").read_text().count("=== ") == 4


def test_queue_stops_its_own_children_when_interrupted(tmp_path):
    def log_for(job):
        if job == "second":
            raise KeyboardInterrupt    # what SIGTERM raises in results_matrix.py
        return tmp_path / "q.log"

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_queue(["first", "second"], {"a": 2},
                  lambda job, device: [sys.executable, "-c", "import time; time.sleep(60)"],
                  log_for, lambda run: None, poll=0.05)
    assert time.monotonic() - started < 15    # terminated, not waited for


def test_gain_standard_error_and_verdict():
    assert report.gain([1, 2, 3], [0, 0, 0]) == {
        "diff": 2.0, "se": pytest.approx(0.5773502691896257), "sd_a": 1.0, "sd_b": 0.0,
        "n_a": 3, "n_b": 3, "verdict": "clear"}
    noisy = report.gain([72.0, 71.0, 73.0], [71.5, 71.0, 72.0])
    assert noisy["diff"] == 0.5 and noisy["se"] == pytest.approx((1 / 3 + 0.25 / 3) ** 0.5)
    assert noisy["verdict"] == "within noise"
    spread = report.gain([10, 12, 14, 16, 18], [11] * 5)   # diff 3 > 2 SE = 2.83 but < sd 3.16
    assert spread["diff"] == 3 and spread["verdict"] == "within noise"
    assert report.gain([1.0], [0.0, 0.0])["verdict"] == "too few seeds"


def test_report_from_run_folders(tmp_path):
    root = data_root(tmp_path)
    art = tmp_path / "a"
    for seed, (f1_text, f1_full, seconds) in enumerate(
            [(0.83, 0.82, 200), (0.84, 0.83, 212), (0.85, 0.84, 224)], start=1):
        fake_run(art / "runs", f"twitter2017-text-only-s{seed}", f1_text, seconds - 100)
        fake_run(art / "runs", f"twitter2017-full-s{seed}", f1_full, seconds)
    killed = fake_run(art / "runs", "twitter2017-full-s4", 0.99, 1, stamp="20261128-050000")
    killed.rename(killed.with_name(killed.name + ".tmp"))      # killed after results.json
    status = Status(art)
    status.record("runs", "twitter2017-ctx-images-s1", {"status": "failed", "error":
                                                        "Error: No such option: --context"})
    out = {name: tmp_path / f"matrix.{name}" for name in ("results", "csv", "json")}
    argv = ["report", "--datasets", "twitter2017", "--data-root", str(root), "--artifacts",
            str(art), "--seeds", "1,2,3", "--headline-seeds", "1,2,3,4"]
    argv += [arg for name, path in out.items() for arg in (f"--{name}", str(path))]
    (tmp_path / "reading.md").write_text("The reading, by hand.\n")
    assert matrix.main(argv + ["--reading", str(tmp_path / "reading.md")]) == 0
    text = out["results"].read_text()
    assert text.split("\n\n")[2:4] == ["The reading, by hand.", "---"]
    # P = F1 + 1, R = F1 - 1 points; three seeds one point apart: sample std 1
    assert ("| text-only: text only (no image) | 3/4 (incomplete) | 85.00 ± 1.00 | "
            "83.00 ± 1.00 | 84.00 ± 1.00 | 84.00 ± 1.00 |") in text
    assert "| full: R-GCN, our graphs | 3/4 (incomplete) | 84.00 ± 1.00 | 82.00 ± 1.00 | " \
           "83.00 ± 1.00 |" in text
    assert "| 212 | NVIDIA H200 | 87.11 |" in text and "F1 MISC" in text
    assert "| ctx-images: text + tweets of the inter-modal neighbour images as context | " \
           "0/4 (failed) |" in text
    assert "- ctx-images, seed 1: failed: `` Error: No such option: --context ``" in text
    # diff -1, SE = sqrt(1/3 + 1/3) = 0.82 < |diff| / 2 is false: within noise
    assert ("| full - text-only | image gain | 3 / 3 | -1.00 | 0.82 | 1.00 | within noise |"
            in text)
    assert "| full - no-graphs | relation gain (both graphs) | - | - | - | - | no finished " \
           "runs: no-graphs |" in text
    assert "| text encoder | /tmp/minilm-l6-fp16 |" in text
    assert ("| inter-modal graph | ours graph, pool all, K=5, space sentence:minilm-l6 "
            "(inter-ours-34cec8f8da3b.h5) (rows: full) |") in text
    assert (f"No graph diagnostics: {art / 'graphs' / 'twitter2017' / 'manifest.json'}: no "
            "graphs recorded for this dataset; run the build-graphs stage again") in text
    rows = {r["row"]: r for r in csv.DictReader(out["csv"].open())}
    assert rows["full"]["seeds_done"] == "1 2 3"
    assert float(rows["full"]["conlleval_f1"]) == pytest.approx(83.0)
    assert rows["ctx-images"]["status"] == "failed" and rows["no-gate"]["status"] == "not run"
    saved = json.loads(out["json"].read_text())
    assert saved["rows"][1]["per_seed"]["1"]["conlleval"] == pytest.approx(82.0)
    assert saved["gains"]["twitter2017"][1]["verdict"] == "within noise"


BROKEN = matrix.Row("broken", "a row whose flag the CLI refuses", ("--no-such-flag",))


def test_tiny_matrix_end_to_end_through_the_cli(tmp_path, tiny_encoder, capsys):  # noqa: F811
    shutil.copytree(TINY, tmp_path / "tiny")
    table = matrix.ROWS[:2] + (BROKEN,)
    argv = ["--datasets", "tiny", "--data-root", str(tmp_path), "--artifacts",
            str(tmp_path / "a"), "--encoder", tiny_encoder, "--rows", "text-only,full,broken",
            "--seeds", "1", "--headline-seeds", "1", "--device", "cpu", "--jobs", "2",
            "--epochs", "1", "--results", str(tmp_path / "R.md"), "--csv",
            str(tmp_path / "m.csv"), "--json", str(tmp_path / "m.json")]
    assert matrix.main(argv, table=table) == 1
    printed = capsys.readouterr().out
    assert "[train] 3 runs planned: 0 done (skipped), 3 to launch; at once: cpu x2" in printed
    assert "tiny-broken-s1: FAILED (exit 2)" in printed and "No such option" in printed
    assert sum("test F1" in line for line in printed.splitlines()) == 2
    text = (tmp_path / "R.md").read_text()
    assert "| text-only: text only (no image) | 1/1 | " in text
    assert "| full: R-GCN, our graphs | 1/1 | " in text
    assert "| broken: a row whose flag the CLI refuses | 0/1 (failed) |" in text
    assert "diagnostics (first 5 neighbours of each graph):" in text
    assert "| node features | image_global: the image's caption embedded by " in text
    assert (tmp_path / "a" / "logs" / "prepare-tiny.log").is_file()
    done = [a if a != "text-only,full,broken" else "text-only,full" for a in argv]
    assert matrix.main(["train", *done], table=table) == 0      # resumes: nothing to launch
    printed = capsys.readouterr().out                           # (a failed run is relaunched:
    assert "[train] 2 runs planned: 2 done (skipped), 0 to launch" in printed   # test_resume)
    assert len(list((tmp_path / "a" / "runs").iterdir())) == 2
    subset = [a if a != "text-only,full,broken" else "text-only" for a in argv]
    assert matrix.main(["report", *subset], table=table) == 0     # a subset keeps the rest
    text = (tmp_path / "R.md").read_text()
    assert "| full: R-GCN, our graphs | 1/1 | " in text and "| broken: a row whose" in text


def test_summarize_runs_keeps_context_and_ablations_apart():
    from experiments.summarize_runs import variant

    assert variant({"text_only": True, "context": "none"}) == "text-only"
    assert variant({"text_only": True, "context": "inter", "context_k": 5}) == \
        "text-only+ctx-inter-k5"
    assert variant({"inter": True, "intra": True, "gate": True, "context": "text",
                    "context_k": 3}) == "full+ctx-text-k3"
    assert variant({"inter": False, "intra": False, "gate": True, "shape": False}) == \
        "no-inter+no-intra+no-shape"
