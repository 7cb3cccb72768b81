"""Per-epoch training time of the full R-GCN tagger against the text-only one (same encoder).

Both models go through the very same code as ``cli.py train`` (``trainer.run.prepare`` and
``trainer.loop.train``), with the same seed, batch order, encoder and precision; only the model
switch differs. The epoch time is the training pass alone (the validation pass after each epoch is
timed apart). The first epoch carries one-off costs (allocator, kernel selection), so with
``--epochs 2`` or more the table reports the median of the later epochs.

Node features come from the cache that ``extract`` / ``build-graphs`` wrote for the dataset
(``--nodes cached``), or are random arrays of a given shape with random neighbours
(``--nodes synthetic --node-shape 49x1280``): the trainer never looks at their values, so the
timing is the same. Usage::

    python bench/bench_train.py --device cuda --encoder /path/to/minilm --out bench/train-h100.json
    python bench/bench_train.py --device cpu --limit 480 --out /tmp/train-cpu.json   # 2-core CPU
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data import load_dataset  # noqa: E402
from trainer.batches import ImageInputs  # noqa: E402
from trainer.config import ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from trainer.inputs import TrainInputs, load_inputs  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "twitter2017"


def machine(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    import transformers
    info["transformers"] = transformers.__version__
    return info


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


def subset(inputs: TrainInputs, train: int | None, valid: int) -> TrainInputs:
    """The first ``train`` train tweets and ``valid`` valid tweets (image rows kept by id)."""
    dataset = copy.copy(inputs.dataset)
    dataset.splits = {"train": inputs.dataset.splits["train"][:train],
                      "valid": inputs.dataset.splits["valid"][:valid],
                      "test": inputs.dataset.splits["test"][:1]}
    return TrainInputs(dataset, inputs.image, inputs.files)


def time_variant(config: TrainConfig, inputs: TrainInputs) -> dict:
    import torch

    from trainer.loop import train
    from trainer.run import prepare

    prep = prepare(config, inputs)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    outcome = train(prep.model, prep.splits["train"], prep.splits["valid"], prep.config.optim,
                    prep.device, generator, prep.table, prep.config.precision,
                    inputs.dataset.type_names)
    wall = time.perf_counter() - start
    epochs = [r["train_seconds"] for r in outcome.history]
    steady = epochs[1:] or epochs
    steps = -(-len(inputs.dataset.splits["train"]) // config.optim.batch_size)
    return {"variant": config.model.variant(), "epoch_seconds": statistics.median(steady),
            "all_epochs": epochs, "steps_per_epoch": steps,
            "ms_per_step": 1000 * statistics.median(steady) / steps,
            "parameters": sum(p.numel() for p in prep.model.parameters()),
            "wall_seconds": wall, "node_shape": list(inputs.image.node_shape)
            if config.model.uses_image else None}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--encoder", default=ModelConfig.encoder)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=OptimConfig.batch_size)
    parser.add_argument("--limit", type=int, default=None, help="Train tweets used (default all).")
    parser.add_argument("--valid", type=int, default=64, help="Valid tweets scored per epoch.")
    parser.add_argument("--nodes", choices=("auto", "cached", "synthetic"), default="auto",
                        help="auto: the cache when extract/build-graphs ran, else synthetic.")
    parser.add_argument("--node-shape", default="384", help="Synthetic node shape: 384 or 49x1280.")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--out", type=Path, default=None, help="Also write the results as JSON.")
    args = parser.parse_args(argv)

    base = TrainConfig(data_dir=str(args.data_dir), artifacts=str(args.artifacts),
                       device=args.device, precision=args.precision,
                       model=ModelConfig(encoder=args.encoder),
                       optim=OptimConfig(epochs=args.epochs, batch_size=args.batch_size,
                                         patience=args.epochs))
    inputs, source = None, "synthetic"
    if args.nodes in ("auto", "cached"):
        try:
            inputs, source = load_inputs(base), "cached"
        except Exception as err:  # noqa: BLE001 - reported, then the synthetic path is used
            if args.nodes == "cached":
                raise
            print(f"no cached inputs ({str(err).splitlines()[0]}); using synthetic nodes",
                  file=sys.stderr)
    if inputs is None:
        dataset = load_dataset(args.data_dir)
        shape = tuple(int(x) for x in args.node_shape.split("x"))
        inputs = TrainInputs(dataset, synthetic_image(dataset.item_ids(), shape, base.model.k))
    inputs = subset(inputs, args.limit, args.valid)
    rows = []
    for text_only in (True, False):
        config = base.with_overrides(text_only=text_only)
        rows.append(time_variant(config, inputs))
        print(f"{rows[-1]['variant']}: {rows[-1]['epoch_seconds']:.2f} s/epoch", file=sys.stderr)
    for row in rows:
        row["ratio"] = row["epoch_seconds"] / rows[0]["epoch_seconds"]
    result = {"machine": machine(args.device), "device": args.device, "encoder": args.encoder,
              "dataset": inputs.dataset.name, "train_tweets": len(inputs.dataset.splits["train"]),
              "batch_size": args.batch_size, "epochs": args.epochs, "nodes": source,
              "precision": args.precision, "rows": rows}
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads)"
    lines = [f"machine: {where}; torch {m['torch']}; device {result['device']}",
             f"{result['dataset']}: {result['train_tweets']} train tweets, batch "
             f"{result['batch_size']}, encoder {result['encoder']}, nodes {result['nodes']}",
             "| model | parameters | s / epoch | ms / step | ratio to text-only |",
             "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['parameters'] / 1e6:.2f} M | "
                     f"{row['epoch_seconds']:.2f} | {row['ms_per_step']:.1f} | "
                     f"{row['ratio']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
