"""Peak host memory and wall time of build-graphs on a synthetic pool: the streaming path
against the in-memory one, same run, same files.

For each size N it writes two float16 feature files in the feature cache's format (``text`` and
``image_global``, one space, N random unit vectors of ``--dim``, written a block of rows at a
time through ``FeatureWriter``), then runs ``build_graphs`` (relation ``inter``, every item a
query, the whole pool) once per path, each in a fresh process, so that its peak RSS
(``ru_maxrss``) is its own:

- ``streamed``: ``ties="index"``, the streaming path (row views over the files, sharded search);
- ``in-memory``: the same config with build-graphs' switch ``graphs.streams`` turned off: the
  tables read whole, as before streaming (same search, ``sharded_search`` over arrays);
- with ``--default-path``: ``default`` (one process, ``ties="random"``: ``search``'s faiss /
  torch backend over whole arrays) and ``default-streamed`` (the same config with
  ``stream=True``: the streaming path, as under torchrun): may streaming replace the default path?

Each row checks its graph against the first path's (same neighbours, max |dD|). Usage::

    python bench/bench_pool.py --sizes 20000,100000 --out bench/results/pool-cpu-2core.json
    python bench/bench_pool.py --sizes 1000000 --device cuda --out bench/results/pool-h200.json
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import machine  # noqa: E402
from bench.synthetic import random_feature_file  # noqa: E402

import pipeline.graphs as graphs  # noqa: E402
from pipeline.data import Dataset  # noqa: E402
from pipeline.formats import Tweet  # noqa: E402
from pipeline.search import load_faiss  # noqa: E402

PATHS = {"streamed": dict(ties="index"), "in-memory": dict(ties="index"),
         "default": dict(ties="random"), "default-streamed": dict(ties="random", stream=True)}
BASE = {"streamed": "in-memory", "default-streamed": "default"}   # path: its same-run baseline
BLOCK = 16384    # rows per write of the synthetic files


def write_pool(folder: Path, n: int, dim: int, seed: int) -> list[Path]:
    """``text.h5`` and ``image.h5``: n float16 unit vectors each, written a block at a time."""
    ids, files = [f"{i:09d}" for i in range(n)], []
    for s, (view, name) in enumerate([("text", "text.h5"), ("image_global", "image.h5")]):
        attrs = {"view": view, "space": "sentence:bench", "source": "bench",
                 "fingerprint": f"bench-{n}-{dim}-{seed}-{view}", "dataset": "pool"}
        files.append(random_feature_file(folder / name, ids, attrs, (dim,), (seed, s), BLOCK,
                                         unit=True))
    return files


def dataset(n: int, folder: Path) -> Dataset:
    """n one-token tweets, all in train: every item a query and in the pool."""
    tweets = [Tweet(f"{i:09d}", ("x",), split="train") for i in range(n)]
    return Dataset("pool", folder, {"train": tweets, "valid": [], "test": []})


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux


def child(args) -> None:
    """One build in this process; prints its JSON record."""
    if args.child == "in-memory":        # build-graphs' own switch, forced off for ties "index"
        graphs.streams = lambda config, dist: False
    data = dataset(args.n, args.folder)
    config = graphs.GraphConfig(k=args.k, relations=("inter",), device=args.device,
                                **PATHS[args.child])
    files = [args.folder / "text.h5", args.folder / "image.h5"]
    before = peak_mb()
    start = time.perf_counter()
    [result] = graphs.build_graphs(data, args.folder / args.child, config, features=files,
                                   overwrite=True)
    record = {"path": args.child, "n": args.n, "seconds": time.perf_counter() - start,
              "peak_rss_mb": peak_mb(), "rss_before_build_mb": before,
              "build_rss_mb": peak_mb() - before,
              "graph": str(result.path), "backend": graphs.read_graph(result.path).attrs["backend"]}
    if args.device.startswith("cuda"):
        record["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(json.dumps(record))


def run_child(path: str, n: int, folder: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", path, "--n", str(n), "--folder", str(folder),
               "--k", str(args.k), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{path} at n={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(row: dict, base: dict) -> None:
    """Against the baseline's run: time and memory ratios, share of equal neighbours (``I``),
    largest cosine difference."""
    a, b = graphs.read_graph(base["graph"]), graphs.read_graph(row["graph"])
    row.update(same_I=float((a.I == b.I).mean()), max_abs_dD=float(np.nanmax(np.abs(a.D - b.D))),
               time_ratio=row["seconds"] / base["seconds"],
               peak_rss_ratio=row["peak_rss_mb"] / base["peak_rss_mb"],
               build_rss_ratio=row["build_rss_mb"] / base["build_rss_mb"])


def bench_size(n: int, args, root: Path) -> list[dict]:
    folder = root / f"pool-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_pool(folder, n, args.dim, args.seed)
    print(f"  {n:>8} wrote 2 x {n} x {args.dim} float16 in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)
    rows = {}
    for path in args.paths:
        rows[path] = row = run_child(path, n, folder, args)
        if path in BASE:
            compare(row, rows[BASE[path]])
        print(f"  {n:>8} {path:<17} {row['seconds']:8.1f} s {row['peak_rss_mb']:8.0f} MB",
              file=sys.stderr, flush=True)
    for row in rows.values():
        del row["graph"]
    return list(rows.values())


def table(rows: list[dict]) -> str:
    lines = ["| N | path | backend | wall s | peak RSS MB (at start) | RSS growth MB | ratio: time, "
             "peak, growth | same I |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (f"{r['time_ratio']:.2f}, {r['peak_rss_ratio']:.2f}, {r['build_rss_ratio']:.2f}"
                 if "time_ratio" in r else "-")
        same = f"{r['same_I']:.4f}" if "same_I" in r else "-"
        lines.append(f"| {r['n']:,} | {r['path']} | {r['backend']} | {r['seconds']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} ({r['rss_before_build_mb']:.0f}) | "
                     f"{r['build_rss_mb']:.0f} | {ratio} | "
                     f"{same} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default-path", action="store_true",
                        help="also time the one-process default (ties random) both ways")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    args.paths = ["in-memory", "streamed"] + (["default", "default-streamed"]
                                              if args.default_path else [])
    faiss = load_faiss()
    info = {**machine(args.device), "h5py": __import__("h5py").__version__,
            "faiss": getattr(faiss, "__version__", None) if faiss else None}
    print(f"machine: {info}", file=sys.stderr)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)    # a new folder is fine
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [row for n in map(int, args.sizes.split(",")) for row in
                bench_size(n, args, Path(tmp))]
    print(table(rows))
    if args.out:
        command = "python bench/bench_pool.py " + " ".join(argv or sys.argv[1:])
        args.out.write_text(json.dumps({"machine": info, "command": command, "k": args.k,
                                        "dim": args.dim, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
