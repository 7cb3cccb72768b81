"""Start a command under ``torchrun`` on this machine and time it (the benchmarks' N-rank rows).

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
