"""``train`` under torchrun: two gloo processes on the CPU, started the way torchrun starts them
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and running the real ``cli.py train``, give the
per-epoch losses and validation scores of one process (same global batch and seed; dropout off,
since each rank draws its own masks), and only rank 0 writes a run folder or prints. Also: the
step's gradient sum (eager and CUDA-graph bookkeeping, a last batch that leaves a rank empty) and
the out-of-core node table (float16 on the host, the feature file read by rows) against the
device table."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.multiprocessing as mp

from conftest import TINY
from pipeline.data import load_dataset
from pipeline.distributed import Distributed
from tagger_fixtures import (invoke, tiny_dataset, tiny_encoder, tiny_image_inputs,  # noqa: F401
                             tiny_pipeline, tiny_tagger)
from test_distributed import free_port
from trainer.batches import HostTable
from trainer.config import OptimConfig, TrainConfig
from trainer.loop import _param_groups, _share
from trainer.steps import EagerStep, GradientSync, GraphedStep

WORLD = 2


def launch(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def no_dropout_encoder(encoder: str, folder: Path) -> str:
    """A copy of the tiny encoder with its dropout off (each rank would draw its own masks)."""
    shutil.copytree(encoder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def cli_rank(rank: int, port: int, config: str, out: str) -> None:
    launch(rank, port)
    result = invoke("train", "--config", config, "--slug", "ddp", "--quiet")
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"code": result.exit_code, "output": result.output}))


def epochs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_train_as_one_and_only_rank_0_writes(tiny_pipeline, tiny_encoder,
                                                                 tmp_path):
    data, artifacts = tiny_pipeline
    shutil.copytree(artifacts, tmp_path / "artifacts")         # runs land in a fresh store
    encoder = no_dropout_encoder(tiny_encoder, tmp_path / "encoder")
    config = TrainConfig(data_dir=str(data), artifacts=str(tmp_path / "artifacts"),
                         device="cpu").with_overrides(
        encoder=encoder, k=3, dropout=0.0, epochs=2, patience=2, batch_size=5, lr_head=0.01)
    config.to_json(tmp_path / "config.json")                   # 6 tweets: batches of 5 and 1
    one = invoke("train", "--config", tmp_path / "config.json", "--slug", "one", "--quiet")
    assert one.exit_code == 0, one.output
    mp.spawn(cli_rank, args=(free_port(), str(tmp_path / "config.json"), str(tmp_path)),
             nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["code"] for r in ranks] == [0, 0], ranks
    assert "wrote" in ranks[0]["output"] and "test F1" in ranks[0]["output"]
    quiet = [line for line in ranks[1]["output"].splitlines()
             if line.strip() and "Loading weights" not in line]   # transformers' own bar
    assert quiet == [], ranks[1]["output"]
    runs = sorted((tmp_path / "artifacts" / "runs").iterdir(), key=lambda p: p.name[-3:])
    assert [p.name[-4:] for p in runs] == ["-ddp", "-one"], runs     # one folder each
    ddp, single = runs
    assert "(rank 0 of 2, gloo)" in (ddp / "train.log").read_text()
    assert [json.loads((run / "results.json").read_text())["processes"] for run in runs] == [2, 1]
    got, want = epochs(ddp), epochs(single)
    assert len(got) == len(want) == 2
    np.testing.assert_allclose([e["train_loss"] for e in got], [e["train_loss"] for e in want],
                               rtol=1e-4, atol=1e-5)
    assert want[1]["train_loss"] != want[0]["train_loss"]          # the weights do move
    for a, b in zip(got, want):
        assert a["valid"]["conlleval"]["overall"] == b["valid"]["conlleval"]["overall"]
    assert (ddp / "predictions_test.conll").read_text() == (
        single / "predictions_test.conll").read_text()


def setup(encoder, dataset, host: bool = False):
    """A tiny full model without dropout, its collator and a node table of float16 values (as a
    device tensor, or with ``host`` as a ``HostTable``)."""
    image = tiny_image_inputs(dataset, k=3)
    image.table = image.table.astype(np.float16).astype(np.float32)
    model, collator, table, _ = tiny_tagger(encoder, dataset, image, dropout=0.0)
    table = HostTable(image.table) if host else table
    return model.eval(), collator, table


def make(kind, model, table, sync_dist=None, **kwargs):
    optimizer = torch.optim.AdamW(_param_groups(model, OptimConfig()))
    params = [p for p in model.parameters() if p.requires_grad]
    return kind(model, optimizer, 1.0, torch.device("cpu"), "fp32", table,
                sync=GradientSync(params, sync_dist), **kwargs)


GLOBAL = [[0, 1, 2, 3, 4], [5, 2, 3, 1, 0], [4, 1, 5], [3]]   # the last leaves rank 0 empty


def run(step, collator, rank: int = 0, world: int = 1) -> list[float]:
    losses = []
    for positions in GLOBAL * 3:                     # every shape more often than the warm-up
        step(_share(collator, (1, 1), rank, world, positions))
        losses.append(step.take_loss())
    return losses


class Replays:
    """A CPU stand-in for ``steps.CudaGraphs`` as a DDP rank uses it: a capture runs nothing; a
    replay runs forward + backward, which accumulates into the (zeroed) flat gradients."""

    def side_stream(self):
        return contextlib.nullcontext()

    def capture(self, work):
        return SimpleNamespace(replay=work)

    def synchronize(self):
        pass


def step_rank(rank: int, port: int, encoder: str, out: str) -> None:
    launch(rank, port)
    with Distributed.from_env(device="cpu") as dist:
        results = {}
        for name, kind, extra in (("eager", EagerStep, {}),
                                  ("graphed", GraphedStep, {"cuda": Replays()})):
            model, collator, table = setup(encoder, load_dataset(TINY))
            step = make(kind, model, table, dist, **extra)
            results[name] = run(step, collator, dist.rank, dist.world)
            results[name + "_params"] = [p.detach().numpy().tolist()
                                         for p in model.new_parameters()][-1]
            results[name + "_record"] = step.record()
        Path(out, f"steps{rank}.json").write_text(json.dumps(results))


def test_the_gradient_sum_of_two_ranks_is_the_one_process_gradient(tiny_encoder, tiny_dataset,
                                                                   tmp_path):
    model, collator, table = setup(tiny_encoder, tiny_dataset)
    single = run(make(EagerStep, model, table), collator)
    last = [p.detach().numpy() for p in model.new_parameters()][-1]
    mp.spawn(step_rank, args=(free_port(), tiny_encoder, str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"steps{rank}.json").read_text())
        assert got["graphed_record"]["graph_steps"] > 0
        for name in ("eager", "graphed"):
            np.testing.assert_allclose(got[name], single, rtol=1e-5, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(got[name + "_params"], last, rtol=1e-4, atol=1e-6)


def test_the_host_table_trains_exactly_as_the_device_table(tiny_encoder, tiny_dataset):
    model, collator, table = setup(tiny_encoder, tiny_dataset)
    twin, _, host = setup(tiny_encoder, tiny_dataset, host=True)
    assert isinstance(host, HostTable) and host.source.array.dtype == np.float16
    on_device, on_host = run(make(EagerStep, model, table), collator), run(
        make(EagerStep, twin, host), collator)
    np.testing.assert_allclose(on_host, on_device, rtol=1e-6, atol=1e-7)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_host_path_reads_the_feature_file_by_rows(tiny_pipeline):
    from pipeline.features import FeatureRows, read_features
    from trainer.inputs import build_inputs, resolve_files

    data, artifacts = tiny_pipeline
    config = TrainConfig(data_dir=str(data), artifacts=str(artifacts)).with_overrides(k=3)
    dataset = load_dataset(data)
    files = resolve_files(config, dataset)
    host = build_inputs(dataset, files, 3, "all", table_on_host=lambda rows, shape: True)
    device = build_inputs(dataset, files, 3, "all")
    assert isinstance(host.image.table, FeatureRows) and isinstance(device.image.table, np.ndarray)
    whole = read_features(files["features"]).features
    np.testing.assert_array_equal(np.asarray(host.image.table), whole)
    np.testing.assert_array_equal(host.image.table[[4, 0, 4, 2]], whole[[4, 0, 4, 2]])
    nodes = torch.tensor([[3, 1], [1, 0]])
    gathered = host.image.node_table(torch.device("cpu"), host=True).gather(nodes, "cpu")
    np.testing.assert_array_equal(gathered.numpy(), whole[nodes.numpy()].astype(np.float16))
    copy.deepcopy(host.image.table).rows(np.array([0, 1]))      # pickles without its handle
    for table_on, expected in (("auto", False), ("host", True), ("device", False)):
        assert TrainConfig(data_dir="x", node_table=table_on).table_on_host(10, (4,)) == expected
    assert TrainConfig(data_dir="x", node_table_budget_gb=1e-9).table_on_host(10, (4,))
