"""Build time of exact and approximate top-k graphs against pool size, vs brute force, one run.

Every vector is also a query (n x n x d). For each size it times, when possible:

- the brute-force baselines: numpy matmul + argpartition on the CPU, and plain torch float32
  matmul + topk on CUDA (both chunked by query rows, nothing else);
- our exact search (``pipeline.search.search``): faiss ``IndexFlatIP`` on the CPU, faiss's GPU
  index when the installed faiss has GPUs, the torch backend on the CPU and on CUDA (float16
  matmul, float32 re-score of the candidates);
- approximate faiss indexes (HNSW, IVF), build included, with recall@k against exact search.

Recall is measured on ``--recall-sample`` random queries against the first exact result of the
same size (an exact backend should show 1.0). Nothing is extrapolated: what was not run is listed
with the reason. Usage (GPU machine)::

    python bench/bench_graphs.py --device cuda --out bench/graphs-h100.json
    python bench/bench_graphs.py --sizes 10000,100000 --out /tmp/bench.json   # 2-core CPU
    python bench/bench_graphs.py --sizes 1000000 --device cuda --ranks 8       # 1 GPU and 8

``--ranks N`` adds ``sharded_search`` (pipeline/sharded_search.py) under ``torchrun`` with 1 and N
ranks (NCCL on GPUs, gloo on the CPU): the pool split over the ranks, per-rank top-k merged; the
ratio column of those rows is against the 1-rank run of the same size.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine as base_machine  # noqa: E402

from pipeline.search import faiss_gpus, load_faiss, recall_at_k, search  # noqa: E402


def machine(device: str) -> dict:
    """CPU model and cores, GPU name, library versions: the 'machine' every number belongs to."""
    faiss = load_faiss()
    return {**base_machine(device), "numpy": np.__version__,
            "faiss": getattr(faiss, "__version__", None) if faiss else None,
            "faiss_gpus": faiss_gpus()}


def describe(info: dict) -> str:
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    return (f"{info['cpu']} ({info['cores']} cores){gpu}; torch {info['torch']}, "
            f"faiss {info['faiss'] or 'not installed'}; load average at start "
            f"{info['load_average_1min_at_start']}")


def vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def numpy_baseline(x: np.ndarray, k: int, rows: int = 1024) -> np.ndarray:
    """Brute force: chunked matmul, argpartition, then sort the k."""
    I = np.empty((len(x), k), np.int64)
    for start in range(0, len(x), rows):
        S = x[start:start + rows] @ x.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(S, part, axis=1), axis=1)
        I[start:start + rows] = np.take_along_axis(part, order, axis=1)
    return I


def torch_baseline(x: np.ndarray, k: int, device: str, budget: int = 1 << 32) -> np.ndarray:
    """Brute force on the GPU: plain float32 matmul + topk, chunked to fit memory."""
    import torch

    xb = torch.from_numpy(x).to(device)
    rows = max(1, budget // (4 * len(x)))
    I = np.empty((len(x), k), np.int64)
    with torch.inference_mode():
        for start in range(0, len(x), rows):
            top = torch.topk(xb[start:start + rows] @ xb.T, k, dim=1)[1]
            I[start:start + rows] = top.cpu().numpy()
    return I


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def plan(n: int, args, cuda: bool) -> tuple[list[tuple], list[str]]:
    """``(runs, not_run)``: runs are (name, kind, device, fn(x) -> (I, info))."""
    k, runs, skipped = args.k, [], []
    faiss = load_faiss() is not None
    cpu_ok = n <= args.cpu_max

    def ours(**kw):
        def run(x):
            info = {}
            return search(x, x, k, info=info, **kw)[1], info
        return run

    def add(ok, reason, *run):
        if ok:
            runs.append(run)
        else:
            skipped.append(f"{n}: {run[0]} not run ({reason})")

    too_big = f"over --cpu-max {args.cpu_max} for exact search on the CPU"
    add(cpu_ok, too_big, "numpy brute force", "baseline", "cpu",
        lambda x: (numpy_baseline(x, k), {}))
    add(cuda, "no CUDA device", "torch fp32 brute force", "baseline", args.device,
        lambda x: (torch_baseline(x, k, args.device), {}))
    add(faiss and cpu_ok, too_big if faiss else "faiss not installed", "faiss IndexFlatIP",
        "exact", "cpu", ours(backend="faiss", device="cpu"))
    add(cpu_ok, too_big, "torch (ours)", "exact", "cpu", ours(backend="torch", device="cpu"))
    add(cuda, "no CUDA device", "torch fp16+rescore (ours)", "exact", args.device,
        ours(backend="torch", device=args.device))
    add(cuda and faiss_gpus() > 0, "installed faiss has no GPU support" if cuda else
        "no CUDA device", "faiss GpuIndexFlatIP", "exact", args.device,
        ours(backend="faiss", device=args.device))
    for kind in ("hnsw", "ivf"):
        add(faiss and n <= args.approx_max, "faiss not installed" if not faiss else
            f"over --approx-max {args.approx_max}", f"faiss {kind.upper()}", "approx", "cpu",
            ours(approx=kind))
    return runs, skipped


def bench_size(n: int, args, cuda: bool) -> tuple[list[dict], list[str]]:
    x = vectors(n, args.dim, args.seed)
    runs, skipped = plan(n, args, cuda)
    sample = np.random.default_rng(args.seed + 1).choice(n, min(n, args.recall_sample),
                                                         replace=False)
    rows, reference, baselines = [], None, {}
    for name, kind, device, fn in runs:
        _sync(device)
        start = time.perf_counter()
        I, info = fn(x)
        _sync(device)
        seconds = time.perf_counter() - start
        if reference is None and kind != "approx":
            reference = I[sample]
        if kind == "baseline":
            baselines.setdefault("cuda" if device.startswith("cuda") else "cpu", (name, seconds))
        row = {"size": n, "backend": name, "kind": kind, "device": device,
               "seconds": round(seconds, 3), "_seconds": seconds,
               "fallback_rows": info.get("fallback_rows"),
               "recall": None if reference is None else round(recall_at_k(I[sample], reference), 4)}
        rows.append(row)
        if kind != "approx" and not any(r.get("_I") is not None for r in rows[:-1]):
            row["_I"] = I[sample]
        print(f"  {n:>8} {name:<28} {seconds:9.2f} s", file=sys.stderr, flush=True)
        del I
    for row in rows:
        side = "cuda" if row["device"].startswith("cuda") else "cpu"
        base = baselines.get(side) or next(iter(baselines.values()), None)
        row["baseline"] = base[0] if base else None
        seconds = row.pop("_seconds")
        row["ratio"] = round(seconds / base[1], 3) if base else None
    return rows, skipped


def rank_worker(args) -> None:
    """One rank of the sharded exact search under torchrun: every rank makes the same vectors
    (seeded), the ranks split the pool (``sharded_search``); rank 0 saves the time and the
    sampled rows of ``I``."""
    import torch

    from pipeline.distributed import Distributed
    from pipeline.sharded_search import sharded_search

    with Distributed.from_env(device=args.device) as dist:
        x = vectors(args.worker_size, args.dim, args.seed)
        sample = np.random.default_rng(args.seed + 1).choice(
            len(x), min(len(x), args.recall_sample), replace=False)
        if dist.device.startswith("cuda"):
            sharded_search(x[:64], x[:4096], args.k, dist=dist)      # context, cuBLAS set-up
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        _, I = sharded_search(x, x, args.k, dist=dist)
        _sync(dist.device)
        dist.barrier()
        seconds = time.perf_counter() - start
        if dist.is_main:
            np.savez(args.worker_out, seconds=seconds, I=I[sample], world=dist.world)


def bench_ranks(n: int, args, rows: list[dict], folder: Path) -> None:
    """Rows for ``sharded_search`` under torchrun with 1 and ``--ranks`` ranks (search time
    inside the ranks; process start and data generation excluded), ratio to the 1-rank run and
    recall against the first exact result of the size."""
    from bench.launch import torchrun

    reference = next((r for r in rows if r["size"] == n and r.get("_I") is not None), None)
    one = None
    for ranks in sorted({1, args.ranks}):
        out = folder / f"sharded-{n}-{ranks}.npz"
        torchrun(ranks, [Path(__file__).resolve(), "--rank-worker", "--worker-size", n,
                         "--worker-out", out, "--dim", args.dim, "--k", args.k, "--seed",
                         args.seed, "--device", args.device, "--recall-sample",
                         args.recall_sample])
        got = np.load(out)
        seconds = float(got["seconds"])
        one = one or seconds
        ref = reference["_I"] if reference else got["I"]
        rows.append({"size": n, "backend": f"sharded exact, {ranks} rank(s)", "kind": "exact",
                     "device": args.device if ranks == 1 else f"{ranks}x {args.device}",
                     "seconds": round(seconds, 3), "baseline": "sharded exact, 1 rank(s)",
                     "ratio": round(seconds / one, 3), "fallback_rows": None,
                     "recall": round(recall_at_k(got["I"], ref), 4)})
        print(f"  {n:>8} sharded exact, {ranks} rank(s) {seconds:9.2f} s", file=sys.stderr,
              flush=True)


def warm_up(device: str) -> None:
    """First CUDA call pays for context and cuBLAS setup; keep it out of the timings."""
    if device.startswith("cuda"):
        x = vectors(4096, 64, 0)
        search(x, x, 10, backend="torch", device=device)
        torch_baseline(x, 10, device)


def table(rows: list[dict]) -> str:
    head = (f"{'size':>9}  {'backend':<28} {'device':<7} {'seconds':>9} {'x baseline':>10}  "
            f"{'recall':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        recall = f"{r['recall']:.4f}" if r["recall"] is not None else "-"
        lines.append(f"{r['size']:>9}  {r['backend']:<28} {r['device']:<7} {r['seconds']:>9.2f} "
                     f"{ratio:>10}  {recall:>7}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated pool sizes (every vector is also a query)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--cpu-max", type=int, default=100_000,
                        help="largest size for exact search on the CPU (n^2 d work)")
    parser.add_argument("--approx-max", type=int, default=1_000_000,
                        help="largest size for the approximate faiss indexes")
    parser.add_argument("--recall-sample", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ranks", type=int, default=0,
                        help="also time the sharded exact search under torchrun with 1 and this "
                        "many ranks (gloo on the CPU, NCCL on GPUs)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_worker:
        rank_worker(args)
        return 0
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    info = machine(args.device)
    print(f"machine: {describe(info)}", file=sys.stderr)
    warm_up(args.device)
    rows, skipped = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        size_rows, size_skipped = bench_size(n, args, cuda)
        if args.ranks:
            with tempfile.TemporaryDirectory() as folder:
                bench_ranks(n, args, size_rows, Path(folder))
        for row in size_rows:
            row.pop("_I", None)
        rows += size_rows
        skipped += size_skipped
    print(f"top-{args.k} over n random {args.dim}-d unit vectors, every vector a query; "
          f"machine: {describe(info)}")
    print(table(rows))
    for line in skipped:
        print(f"not run: {line}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        info["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
        args.out.write_text(json.dumps({"machine": info, "k": args.k, "dim": args.dim,
                                        "rows": rows, "not_run": skipped}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
