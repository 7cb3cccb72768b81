"""Per-epoch training time of the full R-GCN tagger against the text-only one (same encoder).

Both models go through the very same code as ``cli.py train`` (``trainer.run.prepare`` and
``trainer.loop.train``), with the same seed, batch order, encoder and precision; only the model
switch differs. The epoch time is the training pass alone (the validation pass after each epoch is
timed apart). The first epoch of a training carries one-off costs (allocator, kernel selection)
and is left out when there are more. ``--rounds`` alternates the two models (text-only, full,
text-only, full, ...) so that load from other processes hits both alike; the table gives the
minimum and the median epoch time of each, and the ratio of the minima (the least disturbed
measurement; on a dedicated GPU minimum and median agree). On CUDA the steps are CUDA-graph
replays, as in ``cli.py train`` (``trainer.steps``); ``--no-cuda-graphs`` times eager steps.

Node features come from the cache that ``extract`` / ``build-graphs`` wrote for the dataset
(``--nodes cached``), or are random arrays of a given shape with random neighbours
(``--nodes synthetic --node-shape 49x1280``): the trainer never looks at their values, so the
timing is the same. Usage::

    python bench/bench_train.py --device cuda --encoder /path/to/minilm --out bench/train-h100.json
    python bench/bench_train.py --device cpu --limit 480 --out /tmp/train-cpu.json   # 2-core CPU

DDP (``--ddp``, launched by torchrun): the step time of the full model on N processes against one
process, in the same invocation and with the same global batch: rank 0 first trains alone (no
process group, the others wait at a barrier), then all N ranks train together (``cli.py train``'s
DDP path); rank 0 prints the ms per global step of each rank and the ratio to the one-process
run (ideal: 1/N). On the CPU torchrun gives each rank one thread (``OMP_NUM_THREADS=1``), so the
baseline is one process on one core, as one GPU is against N::

    torchrun --nproc-per-node 2 bench/bench_train.py --ddp --device cpu --nodes synthetic \
        --limit 128 --encoder /tmp/tiny-bert --out /tmp/train-ddp-cpu.json
    torchrun --nproc-per-node 4 bench/bench_train.py --ddp --device cuda --out train-ddp-4.json
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine as base_machine  # noqa: E402
from bench.synthetic import random_feature_file  # noqa: E402

from pipeline.data import load_dataset  # noqa: E402
from pipeline.distributed import Distributed  # noqa: E402
from trainer.batches import ImageInputs  # noqa: E402
from trainer.config import ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from trainer.inputs import TrainInputs, load_inputs  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "twitter2017"


def machine(device: str) -> dict:
    import transformers

    return {**base_machine(device), "transformers": transformers.__version__}


def synthetic_image(item_ids: list[str], shape: tuple[int, ...], k: int, seed: int = 0):
    """Random node features (float32) and random neighbours among the other items."""
    rng = np.random.default_rng(seed)
    n = len(item_ids)
    table = rng.standard_normal((n, *shape), dtype=np.float32)

    def neighbours():
        rows = rng.integers(0, n - 1, size=(n, k))
        return rows + (rows >= np.arange(n)[:, None])   # skip the item itself
    score = rng.uniform(0.3, 0.9, size=(n, k)).astype(np.float32)
    return ImageInputs(item_ids, table, np.arange(n), neighbours(), score, neighbours(),
                       score.copy(), view="region_grid" if len(shape) == 2 else "image_global")


def node_file(folder: Path, rows: int, shape: tuple[int, ...], seed: int = 0) -> Path:
    """A float16 feature file of ``rows`` random node rows of ``shape`` (written a block at a time
    through ``FeatureWriter``; a complete one from an earlier run is reused)."""
    path = folder / f"nodes-{rows}-{'x'.join(map(str, shape))}.h5"
    if path.is_file():
        return path
    attrs = {"view": "region_grid" if len(shape) == 2 else "image_global", "source": "bench",
             "fingerprint": f"bench-nodes-{rows}-{shape}-{seed}"}
    block = max(1, (256 << 20) // (2 * int(np.prod(shape))))      # 256 MB per write
    return random_feature_file(path, [f"n{i:09d}" for i in range(rows)], attrs, shape, (seed,),
                               block)


def file_image(item_ids: list[str], path: Path, k: int, seed: int = 0) -> ImageInputs:
    """The node table read by rows from ``path`` (``FeatureRows``, never whole: the host-table
    path of ``cli.py train``), the items' own rows its first rows, random neighbours among all."""
    from pipeline.features import read_feature_rows

    table = read_feature_rows(path).features
    n, m = len(item_ids), table.shape[0]
    if m < n:
        raise SystemExit(f"--node-rows {m} is below the dataset's {n} items (their own rows)")
    rng = np.random.default_rng(seed)
    score = rng.uniform(0.3, 0.9, size=(n, k)).astype(np.float32)
    return ImageInputs(item_ids, table, np.arange(n), rng.integers(0, m, (n, k)), score,
                       rng.integers(0, m, (n, k)), score.copy(),
                       view="region_grid" if len(table.shape) == 3 else "image_global")


def subset(inputs: TrainInputs, train: int | None, valid: int) -> TrainInputs:
    """The first ``train`` train tweets and ``valid`` valid tweets (image rows kept by id)."""
    dataset = copy.copy(inputs.dataset)
    dataset.splits = {"train": inputs.dataset.splits["train"][:train],
                      "valid": inputs.dataset.splits["valid"][:valid],
                      "test": inputs.dataset.splits["test"][:1]}
    return TrainInputs(dataset, inputs.image, inputs.files)


def time_variant(config: TrainConfig, inputs: TrainInputs, compile_branch: bool = False,
                 dist: Distributed | None = None) -> dict:
    """Train ``config`` for its epochs; the training-pass seconds of each epoch. With
    ``compile_branch`` the image branch runs through ``torch.compile`` (dynamic shapes; an
    experiment: the compile lands in the first epoch, which the table leaves out). ``dist``: this
    rank of a group (each trains its share of every global batch)."""
    import torch

    from trainer.loop import train
    from trainer.run import prepare

    prep = prepare(config, inputs, dist)
    if compile_branch and prep.model.image is not None:
        prep.model.image.forward = torch.compile(prep.model.image.forward, dynamic=True)
    outcome = train(prep)
    epochs = [r["train_seconds"] for r in outcome.history]
    return {"variant": config.model.variant(), "epochs": epochs[1:] or epochs,
            "step_record": outcome.steps,
            "first_epoch": epochs[0], "parameters": sum(p.numel() for p in prep.model.parameters()),
            "node_shape": list(inputs.image.node_shape) if config.model.uses_image else None}


def profile_variant(config: TrainConfig, inputs: TrainInputs, folder: Path) -> None:
    """One short training of ``config`` under torch.profiler (CPU + CUDA) and torch's sync
    debug mode: ``<variant>-ops.txt`` (top ops by self CPU and by self device time, with the
    count of device synchronisations), ``<variant>-syncs.txt`` (where they happen) and
    ``<variant>-trace.json`` (chrome://tracing)."""
    import warnings

    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainer.loop import train
    from trainer.run import prepare

    folder.mkdir(parents=True, exist_ok=True)
    variant = config.model.variant()
    prep = prepare(config, inputs)
    cuda = prep.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with warnings.catch_warnings(record=True) as caught, profile(activities=activities) as prof:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        train(prep)
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
             if "synchroniz" in str(w.message)]
    (folder / f"{variant}-syncs.txt").write_text("\n".join(syncs) + "\n")
    averages = prof.key_averages()
    tables = [f"{len(syncs)} synchronising calls (see {variant}-syncs.txt)",
              averages.table(sort_by="self_cpu_time_total", row_limit=40)]
    if cuda:
        tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=40))
    (folder / f"{variant}-ops.txt").write_text("\n\n".join(tables) + "\n")
    prof.export_chrome_trace(str(folder / f"{variant}-trace.json"))


def summarise(runs: list[dict], steps: int) -> list[dict]:
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        times = [t for r in mine for t in r["epochs"]]
        rows.append({"variant": variant, "parameters": mine[0]["parameters"],
                     "node_shape": mine[0]["node_shape"], "epoch_seconds_min": min(times),
                     "epoch_seconds_median": statistics.median(times),
                     "ms_per_step_min": 1000 * min(times) / steps, "epoch_seconds": times,
                     "first_epochs": [r["first_epoch"] for r in mine],
                     "step_records": [r["step_record"] for r in mine]})
    for row in rows:
        row["ratio"] = row["epoch_seconds_min"] / rows[0]["epoch_seconds_min"]
        row["ratio_median"] = row["epoch_seconds_median"] / rows[0]["epoch_seconds_median"]
    return rows


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--encoder", default=ModelConfig.encoder)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--epochs", type=int, default=2, help="Epochs per training.")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Trainings of each model, alternated.")
    parser.add_argument("--batch-size", type=int, default=OptimConfig.batch_size)
    parser.add_argument("--limit", type=int, default=None, help="Train tweets used (default all).")
    parser.add_argument("--valid", type=int, default=64, help="Valid tweets scored per epoch.")
    parser.add_argument("--nodes", choices=("auto", "cached", "synthetic", "file"),
                        default="auto", help="auto: the cache when extract/build-graphs ran, "
                        "else synthetic; file: a float16 file of --node-rows random rows, read "
                        "by rows (host table).")
    parser.add_argument("--node-rows", type=int, default=100_000,
                        help="Rows of the --nodes file table (the pool size).")
    parser.add_argument("--node-dir", type=Path, default=Path("/tmp"),
                        help="Where the --nodes file table is written (kept for reuse).")
    parser.add_argument("--node-shape", default="384", help="Synthetic node shape: 384 or 49x1280.")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="On CUDA, eager steps instead of CUDA-graph replays.")
    parser.add_argument("--compile-branch", action="store_true",
                        help="Experiment: the image branch through torch.compile.")
    parser.add_argument("--ddp", action="store_true", help="Under torchrun: the full model on "
                        "N processes against one process (see the module docstring).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the results as JSON.")
    parser.add_argument("--profile", type=Path, default=None,
                        help="Also profile one epoch of each model on --profile-limit tweets "
                             "into this folder (ops tables, syncs, chrome traces).")
    parser.add_argument("--profile-limit", type=int, default=160)
    return parser.parse_args(argv)


def bench_inputs(args, base: TrainConfig, log: bool = True) -> tuple[TrainInputs, str]:
    """The cached inputs of the dataset (``--nodes cached``/``auto``) or synthetic nodes."""
    inputs, source = None, "synthetic"
    if args.nodes in ("auto", "cached"):
        try:
            inputs, source = load_inputs(base), "cached"
        except Exception as err:  # noqa: BLE001 - reported, then the synthetic path is used
            if args.nodes == "cached":
                raise
            if log:
                print(f"no cached inputs ({str(err).splitlines()[0]}); using synthetic nodes",
                      file=sys.stderr)
    if inputs is None:
        dataset = load_dataset(args.data_dir)
        shape = tuple(int(x) for x in args.node_shape.split("x"))
        if args.nodes == "file":
            path = node_file(args.node_dir, args.node_rows, shape)
            source = f"file of {args.node_rows:,} x {args.node_shape} float16 rows (host table)"
            inputs = TrainInputs(dataset, file_image(dataset.item_ids(), path, base.model.k))
        else:
            inputs = TrainInputs(dataset, synthetic_image(dataset.item_ids(), shape,
                                                          base.model.k))
    return subset(inputs, args.limit, args.valid), source


def main(argv=None) -> dict:
    args = parse(argv)
    base = TrainConfig(data_dir=str(args.data_dir), artifacts=str(args.artifacts),
                       device=args.device, precision=args.precision,
                       model=ModelConfig(encoder=args.encoder),
                       optim=OptimConfig(epochs=args.epochs, batch_size=args.batch_size,
                                         patience=args.epochs,
                                         cuda_graphs=not args.no_cuda_graphs))
    if args.nodes == "file":      # the table stays in its file, whatever its size
        base = base.with_overrides(node_table="host")
    if args.ddp:
        return ddp_main(args, base)
    inputs, source = bench_inputs(args, base)
    runs = []
    for _ in range(args.rounds):
        for text_only in (True, False):
            runs.append(time_variant(base.with_overrides(text_only=text_only), inputs,
                                     args.compile_branch))
            print(f"{runs[-1]['variant']}: epochs {[round(t, 2) for t in runs[-1]['epochs']]} s",
                  file=sys.stderr)
    steps = -(-len(inputs.dataset.splits["train"]) // args.batch_size)
    if args.profile:
        short = subset(inputs, args.profile_limit, 16)
        for text_only in (True, False):
            profile_variant(base.with_overrides(text_only=text_only, epochs=1, patience=1),
                            short, args.profile)
    result = {**common(args, inputs, source, steps),
              "compile_branch": args.compile_branch, "rounds": args.rounds,
              "cuda_graphs": runs[-1]["step_record"].get("mode") == "cuda-graph",
              "rows": summarise(runs, steps)}
    return report(result, table(result), args.out)


def common(args, inputs: TrainInputs, source: str, steps: int) -> dict:
    """The fields of both modes' results: machine, data, batch and precision."""
    return {"machine": machine(args.device), "device": args.device, "encoder": args.encoder,
            "dataset": inputs.dataset.name, "train_tweets": len(inputs.dataset.splits["train"]),
            "batch_size": args.batch_size, "epochs": args.epochs, "steps_per_epoch": steps,
            "nodes": source, "precision": args.precision, "peak_rss_mb": peak_rss_mb(),
            "device_max_allocated_mb": device_peak_mb(args.device)}


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux


def device_peak_mb(device: str) -> float | None:
    import torch

    return (round(torch.cuda.max_memory_allocated(device) / 2 ** 20)
            if device.startswith("cuda") else None)


def report(result: dict, text: str, out: Path | None) -> dict:
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def ddp_main(args, base: TrainConfig) -> dict | None:
    """``--ddp``: one process on rank 0 (the others wait), then every rank in the group; rank 0
    reports the ms per global step of each rank and their ratio to the one-process run."""
    with Distributed.from_env(device=args.device) as dist:
        inputs, source = bench_inputs(args, base, log=dist.is_main)
        steps = -(-len(inputs.dataset.splits["train"]) // args.batch_size)
        single = time_variant(base, inputs) if dist.is_main else None
        dist.barrier()
        mine = time_variant(base, inputs, dist=dist)
        ranks = dist.all_gather_object({"epochs": mine["epochs"], "device": str(dist.device),
                                        "threads": machine(args.device)["torch_threads"]})
        if not dist.is_main:
            return None
        one = 1000 * min(single["epochs"]) / steps
        rows = [{"rank": r, **part, "ms_per_step_min": 1000 * min(part["epochs"]) / steps,
                 "ratio_to_one_process": 1000 * min(part["epochs"]) / steps / one}
                for r, part in enumerate(ranks)]
        result = {**common(args, inputs, source, steps), "world": dist.world,
                  "backend": dist.backend, "one_process": {"epochs": single["epochs"],
                                                           "ms_per_step_min": one},
                  "step_record": mine["step_record"], "rows": rows}
        return report(result, ddp_table(result), args.out)


def ddp_table(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores)"
    lines = [f"machine: {where}; torch {m['torch']}; {result['world']} ranks ({result['backend']})"
             f" against 1 process, device {result['device']}",
             f"{result['dataset']}: {result['train_tweets']} train tweets, global batch "
             f"{result['batch_size']} ({result['steps_per_epoch']} steps), encoder "
             f"{result['encoder']}, nodes {result['nodes']}, {result['epochs']} epochs",
             f"one process: {result['one_process']['ms_per_step_min']:.1f} ms / global step (min)",
             "| rank | device | torch threads | ms / global step (min) | ratio to 1 process |",
             "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['rank']} | {row['device']} | {row['threads']} | "
                     f"{row['ms_per_step_min']:.1f} | {row['ratio_to_one_process']:.3f} |")
    return "\n".join(lines)


def table(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads)"
    lines = [f"machine: {where}; torch {m['torch']}; device {result['device']}, precision "
             f"{result['precision']}",
             f"{result['dataset']}: {result['train_tweets']} train tweets, batch "
             f"{result['batch_size']} ({result['steps_per_epoch']} steps), encoder "
             f"{result['encoder']}, nodes {result['nodes']}, {result['rounds']} round(s) x "
             f"{result['epochs']} epochs, steps "
             f"{'CUDA graphs' if result.get('cuda_graphs') else 'eager'}; peak RSS "
             f"{result['peak_rss_mb']:,} MB, device {result['device_max_allocated_mb']} MB",
             "| model | parameters | s / epoch (min) | s / epoch (median) | ms / step (min) "
             "| ratio to text-only (min) |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['parameters'] / 1e6:.2f} M | "
                     f"{row['epoch_seconds_min']:.2f} | {row['epoch_seconds_median']:.2f} | "
                     f"{row['ms_per_step_min']:.1f} | {row['ratio']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
