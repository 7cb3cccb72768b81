"""Start a command under ``torchrun`` on this machine and time it (the benchmarks' N-rank rows;
``extract_ranks``: bench_extract.py's).

Every rank gets ``OMP_NUM_THREADS = cores // N`` (torch's threads), so 1 rank and N ranks use the
same cores; the wall time covers process start, the group's rendezvous and model loading."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, argv: list[str], threads: int | None = None) -> float:
    """Run ``torchrun --nproc-per-node nproc argv...`` from the repository root; wall seconds.
    A failing run raises with the tail of its output."""
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *map(str, argv)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} rank(s) failed:\n{done.stderr[-3000:]}")
    return seconds


def extract_ranks(model, data, images, args, folder: Path) -> list[dict]:
    """Wall time of ``cli.py extract`` (region_grid) under ``torchrun`` with 1 and ``--ranks``
    ranks on the same images (the 1-rank run is the baseline), and whether the N-rank file
    equals the 1-rank file (float tolerance)."""
    import numpy as np

    from pipeline.data import load_dataset
    from pipeline.features import load_manifest, read_features
    from pipeline.store import dataset_key

    rows, files = [], {}
    key = dataset_key(load_dataset(data, None, images))
    for ranks in sorted({1, args.ranks}):
        artifacts = folder / f"artifacts-{ranks}-ranks"
        seconds = torchrun(ranks, [
            "cli.py", "extract", "--data-dir", data, "--image-dir", images, "--quiet",
            "--artifacts", artifacts, "--views", "region_grid", "--image-encoder", model,
            "--device", args.device, "--batch-size", args.batch_size, "--workers", args.workers,
            "--overwrite"] + (["--float16"] if args.float16 else []))
        files[ranks] = read_features(load_manifest(artifacts, key)["region_grid"])
        rows.append({"ranks": ranks, "seconds": seconds, "images_per_s": args.images / seconds,
                     "speedup": rows[0]["seconds"] / seconds if rows else 1.0})
    one = files[1]
    for row in rows:
        other = files[row["ranks"]]
        row["equal_to_1_rank"] = bool(
            other.item_ids == one.item_ids and other.reason == one.reason
            and np.allclose(other.features, one.features, atol=1e-3))
    return rows
