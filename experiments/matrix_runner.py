"""The process side of experiments/results_matrix.py: child processes with their logs, the device
slots they run on, run folders found by slug, the status file and the lock. Knows nothing of
the matrix's rows: the caller says what to launch and what a finished process means."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.artifacts import write_json  # noqa: E402
from pipeline.encoders import resolve_device  # noqa: E402
from pipeline.errors import MissingInput, MnerError  # noqa: E402

RUN_NAME = re.compile(r"^\d{8}-\d{6}-(?P<slug>.+?)(?P<tmp>\.tmp)?$")  # <time>-<slug>[.tmp]


def pick_device(load: dict[str, int], slots: dict[str, int]) -> str | None:
    """The least busy device with a free slot (ties: the first); None when all are full. From
    empty, launches go to cuda:0, cuda:1, ... in turn (run i on cuda:(i % N))."""
    free = [name for name in slots if load.get(name, 0) < slots[name]]
    return min(free, key=lambda name: load.get(name, 0)) if free else None


def device_slots(device: str, gpus: int | None, per_gpu: int, jobs: int) -> dict[str, int]:
    """Device name -> how many processes it runs at once: ``jobs`` on CPU, ``per_gpu`` on each
    of ``gpus`` GPUs (default: all visible) or on the one GPU named."""
    device = resolve_device(device)
    if device == "cpu":
        return {"cpu": jobs}
    if ":" in device:
        return {device: per_gpu}
    import torch
    gpus = gpus or torch.cuda.device_count()
    if gpus < 1:
        raise MissingInput("no CUDA device found; use --device cpu")
    return {f"cuda:{i}": per_gpu for i in range(gpus)}


def scan_runs(runs_dir: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """``(finished, unfinished)`` run folders by slug, oldest first. Finished = has results.json;
    unfinished = a ``.tmp`` folder or one without results.json (a killed run)."""
    finished: dict[str, list[Path]] = {}
    unfinished: dict[str, list[Path]] = {}
    for folder in sorted(Path(runs_dir).iterdir()) if Path(runs_dir).is_dir() else ():
        match = RUN_NAME.match(folder.name)
        if not folder.is_dir() or not match:
            continue
        done = not match["tmp"] and (folder / "results.json").is_file()
        (finished if done else unfinished).setdefault(match["slug"], []).append(folder)
    return finished, unfinished


def move_aside(folder: Path, killed_dir: Path) -> Path:
    """Move a killed run folder into ``killed_dir`` (never deleted); returns its new path."""
    killed_dir.mkdir(parents=True, exist_ok=True)
    target, n = killed_dir / folder.name, 1
    while target.exists():
        target, n = killed_dir / f"{folder.name}-{n}", n + 1
    shutil.move(str(folder), str(target))
    return target


def child_env(parallel: int) -> dict:
    """Unbuffered output, and the CPU threads shared among the processes running at once
    (OMP_NUM_THREADS, unless already set)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, parallel))))
    return env


def open_log(path: Path, command: list[str]):
    """``path`` opened for appending, after a header line with the time and the command."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a", encoding="utf-8")
    handle.write(f"=== {datetime.now():%Y-%m-%d %H:%M:%S} {shlex.join(map(str, command))}\n")
    handle.flush()
    return handle


def log_tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def last_error(path: Path) -> str:
    """The last ``Error: ...`` line of a log (the CLI's one-line message), else its last line."""
    lines = log_tail(path, 200).splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or ["(empty log)"])[-1].strip()


def run_echoed(command: list[str], log_path: Path, indent: str = "  ") -> int:
    """Run ``command`` in the repository root, its output both to ``log_path`` and stdout."""
    with open_log(log_path, command) as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=child_env(1), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            log.write(line)
            print(f"{indent}{line}", end="", flush=True)
        return proc.wait()


class Status:
    """``<artifacts>/matrix-status.json``: ``runs`` (slug -> how its last launch ended),
    ``prepare`` (step -> exit status) and ``commands`` (each call's command line). Written
    atomically after every change; only the one process holding the lock writes it."""

    def __init__(self, artifacts: Path):
        self.path = Path(artifacts) / "matrix-status.json"
        self.data = (json.loads(self.path.read_text()) if self.path.is_file()
                     else {"runs": {}, "prepare": {}, "commands": []})

    def record(self, section: str, key: str, value) -> None:
        self.data[section][key] = value
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


@contextlib.contextmanager
def matrix_lock(artifacts: Path):
    """One results_matrix.py at a time per artifacts folder (the OS drops the lock if we die)."""
    import fcntl

    artifacts.mkdir(parents=True, exist_ok=True)
    with open(artifacts / ".matrix.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MnerError(f"{artifacts}: another results_matrix.py is using this artifacts "
                            "folder; wait for it to end") from None
        yield


@dataclass
class Running:
    """A launched process: ``job`` is the caller's, ``log`` the open log file."""

    job: object
    device: str
    proc: subprocess.Popen
    log: object
    started: float

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def run_queue(jobs: list, slots: dict[str, int], command_for, log_for, on_exit,
              deadline: float | None = None, poll: float = 1.0) -> list:
    """Launch ``jobs`` in order, each on the least busy device with a free slot, until all have
    ended or ``deadline`` seconds have passed (then nothing new starts; the running ones
    finish). ``command_for(job, device)`` gives the command, ``log_for(job)`` its log path;
    ``on_exit(running)`` is called as each ends. Returns the jobs not launched. Interrupted
    (Ctrl-C, SIGTERM raised as KeyboardInterrupt), it stops its own children and re-raises."""
    queue, running, start = list(jobs), [], time.monotonic()
    env = child_env(sum(slots.values()))
    try:
        while queue or running:
            late = deadline is not None and time.monotonic() - start > deadline
            device = pick_device({n: sum(r.device == n for r in running) for n in slots}, slots)
            if queue and device and not late:
                job = queue.pop(0)
                command = command_for(job, device)
                log = open_log(log_for(job), command)
                proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
                running.append(Running(job, device, proc, log, time.monotonic()))
                continue
            if late and not running:
                break
            time.sleep(poll)
            for run in [r for r in running if r.proc.poll() is not None]:
                running.remove(run)
                run.log.close()
                on_exit(run)
    finally:
        for run in running:
            run.proc.terminate()
        for run in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(timeout=20)
            run.proc.kill()
            run.log.close()
    return queue
