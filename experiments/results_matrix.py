"""Run the issue-6 results matrix from scratch and write RESULTS.md, matrix.csv and matrix.json.

    python experiments/results_matrix.py [options] [prepare] [train] [report]   (default: all)

prepare  per dataset: ``cli.py extract``, ``cli.py build-graphs`` (ours + the authors' lists) and
         the tweet-text graph when a planned row needs it; the CLI reuses files that match.
train    one ``cli.py train`` per (dataset, row, seed), slug <dataset>-<row>-s<seed>, log
         <artifacts>/logs/<slug>.log. A folder <artifacts>/runs/<time>-<slug>/ with results.json
         is done (skipped); one without (killed) is moved into <artifacts>/runs-killed/ first.
         Longest first; on CUDA up to --gpus x --per-gpu at once, each on the least busy GPU;
         on CPU --jobs. --deadline S: launch nothing new after S seconds (a later call resumes).
report   RESULTS.md (per dataset: main table, gains with their spread, inputs, graph
         diagnostics) and the rows as CSV and JSON (experiments/matrix_report.py).

Exit status: 0 all planned runs done, 1 a stage or run failed (its log tail is printed), 3 the
--deadline left runs for a later call, 2 bad options.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from experiments.matrix_rows import GAINS, INTRA_TEXT, ROWS, Row  # noqa: E402,F401
from experiments.matrix_report import write_report  # noqa: E402
from experiments.matrix_runner import (Running, Status, device_slots, last_error,  # noqa: E402
                                       log_tail, matrix_lock, move_aside, run_echoed,
                                       run_queue, scan_runs)
from pipeline.encoders import resolve_device  # noqa: E402
from pipeline.errors import CacheMismatch, InvalidConfig, MissingInput, MnerError  # noqa: E402


STAGES = ("prepare", "train", "report")
EXIT_OK, EXIT_FAILED, EXIT_DEADLINE = 0, 1, 3


@dataclass(frozen=True)
class MatrixConfig:
    """What to run and where; the defaults live here only."""

    datasets: tuple[str, ...] = ("twitter2015", "twitter2017")
    data_root: Path = ROOT.parent / "shared" / "data"
    artifacts: Path = ROOT / "artifacts" / "matrix"
    encoder: str = "minilm-l6"
    rows: tuple[str, ...] = tuple(row.name for row in ROWS if row.default)
    seeds: tuple[int, ...] = (1, 2, 3)
    headline_seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    device: str = "auto"
    gpus: int | None = None           # default: torch.cuda.device_count()
    per_gpu: int = 3
    jobs: int = 1
    deadline: float | None = None
    epochs: int | None = None         # default: the trainer's
    keep_checkpoints: bool = False    # weights of every run (about 90 MB each with MiniLM)
    results: Path = ROOT / "RESULTS.md"
    csv: Path = ROOT / "experiments" / "results" / "matrix.csv"
    json: Path = ROOT / "experiments" / "results" / "matrix.json"
    reading: Path | None = ROOT / "experiments" / "results" / "reading.md"  # top of RESULTS.md

    def __post_init__(self):
        checks = ((self.datasets, "--datasets must name at least one dataset"),
                  (self.rows, "--rows must name at least one row"),
                  (self.seeds and self.headline_seeds, "--seeds and --headline-seeds need seeds"),
                  (min(self.seeds + self.headline_seeds, default=0) >= 0, "seeds must be >= 0"),
                  (len(set(self.seeds)) == len(self.seeds) and len(set(self.headline_seeds))
                   == len(self.headline_seeds), "a seed is listed twice"),
                  (min(self.per_gpu, self.jobs, 1 if self.gpus is None else self.gpus) >= 1,
                   "--per-gpu, --jobs and --gpus must be >= 1"),
                  (self.deadline is None or self.deadline >= 0, "--deadline must be >= 0"),
                  (self.epochs is None or self.epochs >= 1, "--epochs must be >= 1"),
                  (self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", self.device),
                   f"--device must be auto, cpu or cuda, got {self.device!r}"))
        for ok, message in checks:
            if not ok:
                raise InvalidConfig(message)

    def planned_seeds(self, row: Row) -> tuple[int, ...]:
        return self.headline_seeds if row.headline else self.seeds

    def data_dir(self, dataset: str) -> Path:
        return self.data_root / dataset


@dataclass(frozen=True)
class Job:
    dataset: str
    row: Row
    seed: int

    @property
    def slug(self) -> str:
        return f"{self.dataset}-{self.row.name}-s{self.seed}"


def select_rows(table, names) -> list[Row]:
    """The rows of ``table`` named in ``names``, in table order; an unknown name is refused."""
    known = {row.name: row for row in table}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidConfig(f"unknown row {unknown[0]!r}; rows: {', '.join(known)}")
    return [row for row in table if row.name in names]


def dataset_size(data_dir: Path) -> int:
    """Training tweets (``IMGID:`` lines of train.txt): the launch order's longest-first key."""
    train = Path(data_dir) / "train.txt"
    if not train.is_file():
        raise MissingInput(f"{train}: not found; --data-root must hold one folder per dataset "
                           "with train.txt, valid.txt and test.txt")
    with open(train, encoding="utf-8") as handle:
        return sum(line.startswith("IMGID:") for line in handle)


def plan(config: MatrixConfig, table=ROWS) -> list[Job]:
    """Every (dataset, row, seed), longest first: larger dataset, heavier row, table order."""
    rows = select_rows(table, config.rows)
    sizes = {ds: dataset_size(config.data_dir(ds)) for ds in config.datasets}
    jobs = [Job(ds, row, seed) for ds in config.datasets for row in rows
            for seed in config.planned_seeds(row)]
    return sorted(jobs, key=lambda j: (-sizes[j.dataset], config.datasets.index(j.dataset),
                                       -j.row.weight, rows.index(j.row), j.seed))


def check_finished(folder: Path, config: MatrixConfig) -> None:
    """Refuse to count a finished run made with another encoder or epoch budget."""
    from trainer.config import OptimConfig

    run = json.loads((folder / "config.json").read_text())
    want = {"encoder": config.encoder, "epochs": config.epochs or OptimConfig().epochs}
    have = {"encoder": run["model"]["encoder"], "epochs": run["optim"]["epochs"]}
    for key in want:
        if str(want[key]) != str(have[key]):
            raise CacheMismatch(f"{folder}: a finished run trained with {key} {have[key]}, this "
                                f"matrix asks for {want[key]}; pass another --artifacts or move "
                                "that folder away")


def triage(jobs: list[Job], config: MatrixConfig) -> tuple[list[Job], list[Job], list[Path]]:
    """``(to run, done, killed folders moved aside)``; killed folders of the runs to launch go to
    <artifacts>/runs-killed/."""
    finished, unfinished = scan_runs(config.artifacts / "runs")
    todo, done, moved = [], [], []
    for job in jobs:
        if job.slug in finished:
            check_finished(finished[job.slug][-1], config)
            done.append(job)
            continue
        todo.append(job)
        moved += [move_aside(f, config.artifacts / "runs-killed")
                  for f in unfinished.get(job.slug, [])]
    return todo, done, moved


def cli_command(*args) -> list[str]:
    return [sys.executable, "cli.py", *map(str, args)]


def prepare_commands(config: MatrixConfig, dataset: str, rows) -> list[tuple[str, list, bool]]:
    """``(name, command, required)`` of the prepare steps of one dataset."""
    data, art = config.data_dir(dataset), config.artifacts
    device = "cpu" if resolve_device(config.device) == "cpu" else "cuda"
    steps = [("extract", cli_command("extract", "--data-dir", data, "--artifacts", art,
                                     "--text-encoder", config.encoder, "--device", device,
                                     "--quiet"), True),
             ("build-graphs", cli_command("build-graphs", "--data-dir", data, "--artifacts", art,
                                          "--device", device, "--quiet"), True)]
    if any("text" in row.graphs for row in rows):
        steps.append(("text-graph", cli_command(
            "build-graphs", "--data-dir", data, "--artifacts", art, "--relation", "text",
            "--no-import-rgcn", "--device", device, "--quiet"), False))
    inductive = sorted({g.split("@")[0] for row in rows for g in row.graphs
                        if g.endswith("@train")})
    if inductive:
        relations = [arg for relation in inductive for arg in ("--relation", relation)]
        steps.append(("train-pool-graphs", cli_command(
            "build-graphs", "--data-dir", data, "--artifacts", art, "--pool", "train", *relations,
            "--no-import-rgcn", "--device", device, "--quiet"), False))
    if any(INTRA_TEXT in row.graphs for row in rows):
        steps.append(("intra-text-graph", cli_command(
            "build-graphs", "--data-dir", data, "--artifacts", art, "--relation", "intra",
            "--intra-view", "image_global", "--no-import-rgcn", "--device", device, "--quiet"),
            False))
    return steps


def train_command(job: Job, config: MatrixConfig, device: str) -> list[str]:
    epochs = ("--epochs", config.epochs) if config.epochs else ()
    weights = () if config.keep_checkpoints else ("--no-checkpoint",)
    return cli_command("train", "--data-dir", config.data_dir(job.dataset), "--artifacts",
                       config.artifacts, "--encoder", config.encoder, *job.row.flags, "--seeds",
                       job.seed, "--slug", job.slug, "--device", device, *epochs, *weights,
                       "--quiet")


def run_prepare(config: MatrixConfig, rows, status: Status) -> set[str]:
    """Run the prepare steps of every dataset, echoing their output: the datasets whose
    required steps failed (their runs are held back)."""
    failed = set()
    for dataset in config.datasets:
        log_path = config.artifacts / "logs" / f"prepare-{dataset}.log"
        for name, command, required in prepare_commands(config, dataset, rows):
            print(f"[prepare] {dataset}: {name}", flush=True)
            rc = run_echoed(command, log_path)
            status.record("prepare", f"{dataset}:{name}", {"rc": rc, "log": str(log_path)})
            if rc:
                print(f"[prepare] {dataset}: {name} FAILED (exit {rc}): {last_error(log_path)}"
                      + ("" if required else "; the rows that need it will fail"), flush=True)
                if required:
                    failed.add(dataset)
                    break
    return failed


def on_exit(run: Running, config: MatrixConfig, status: Status, tally: dict) -> None:
    """Record how a training process ended and print its line (test F1, or the log tail)."""
    job, log_path = run.job, Path(run.log.name)
    folders = scan_runs(config.artifacts / "runs")[0].get(job.slug, [])
    entry = {"dataset": job.dataset, "row": job.row.name, "seed": job.seed, "device": run.device,
             "rc": run.proc.returncode, "seconds": round(run.seconds, 1), "log": str(log_path)}
    ok = run.proc.returncode == 0 and bool(folders)
    tally["ok" if ok else "failed"] += 1
    count = f"[{tally['ok'] + tally['failed']}/{tally['jobs']}] {job.slug}"
    if ok:
        results = json.loads((folders[-1] / "results.json").read_text())
        f1 = 100 * results["test"]["conlleval"]["overall"]["f1"]
        print(f"{count}: test F1 {f1:.2f} (conlleval), {run.seconds:.0f} s on {run.device}",
              flush=True)
        status.record("runs", job.slug, {**entry, "status": "done", "folder": folders[-1].name})
        return
    error = last_error(log_path)
    print(f"{count}: FAILED (exit {run.proc.returncode}) after {run.seconds:.0f} s on "
          f"{run.device}: {error}\n--- tail of {log_path}\n{log_tail(log_path)}\n---", flush=True)
    status.record("runs", job.slug, {**entry, "status": "failed", "error": error})


def run_train(config: MatrixConfig, jobs: list[Job], skip: set[str], status: Status,
              started: float, poll: float = 1.0) -> int:
    """Triage, then launch the runs still to do until ``config.deadline`` seconds after
    ``started`` (time.monotonic()): the exit status of the train stage."""
    todo, done, moved = triage(jobs, config)
    for folder in moved:
        print(f"[train] moved the killed run {folder.name} into {folder.parent}/", flush=True)
    blocked = [job for job in todo if job.dataset in skip]
    todo = [job for job in todo if job.dataset not in skip]
    slots = device_slots(config.device, config.gpus, config.per_gpu, config.jobs)
    print(f"[train] {len(jobs)} runs planned: {len(done)} done (skipped), {len(todo)} to launch"
          + (f", {len(blocked)} held back (prepare failed)" if blocked else "")
          + f"; at once: {', '.join(f'{d} x{n}' for d, n in slots.items())}", flush=True)
    tally = {"ok": 0, "failed": 0, "jobs": len(todo)}
    left = run_queue(todo, slots, lambda job, device: train_command(job, config, device),
                     lambda job: config.artifacts / "logs" / f"{job.slug}.log",
                     lambda run: on_exit(run, config, status, tally),
                     None if config.deadline is None else
                     config.deadline - (time.monotonic() - started), poll)
    if left:
        print(f"[train] deadline ({config.deadline:.0f} s after the start) reached: {len(left)} "
              "runs not launched; call again to resume", flush=True)
    print(f"[train] {len(done) + tally['ok']}/{len(jobs)} planned runs done, {tally['failed']} "
          "failed in this call", flush=True)
    if tally["failed"] or blocked:
        return EXIT_FAILED
    return EXIT_DEADLINE if left else EXIT_OK


def reproduce_commands(config: MatrixConfig, rows) -> dict:
    """For the report: the matrix's command line (``matrix``) and, by dataset, its prepare
    commands and one training command per row (first planned seed)."""
    ints = lambda values: ",".join(map(str, values))  # noqa: E731
    python = lambda command: shlex.join(["python", *map(str, command[1:])])  # noqa: E731
    out = {"matrix": python([
        "", "experiments/results_matrix.py", "--datasets", ",".join(config.datasets), "--data-root",
        config.data_root, "--artifacts", config.artifacts, "--encoder", config.encoder, "--rows",
        ",".join(r.name for r in rows), "--seeds", ints(config.seeds), "--headline-seeds",
        ints(config.headline_seeds), *(["--epochs", config.epochs] if config.epochs else [])])}
    for ds in config.datasets:
        out[ds] = {"prepare": [python(c) for _, c, _ in prepare_commands(config, ds, rows)],
                   "train": [python(train_command(Job(ds, r, config.planned_seeds(r)[0]), config,
                                                  resolve_device(config.device))) for r in rows]}
    return out


def run(config: MatrixConfig, stages, table=ROWS, gains=GAINS, argv=()) -> int:
    """The stages in order; the worst exit status (failure over deadline over success)."""
    rows, started = select_rows(table, config.rows), time.monotonic()
    codes, skip = [EXIT_OK], set()
    with matrix_lock(config.artifacts):
        status = Status(config.artifacts)
        status.data["commands"].append({"at": datetime.now().isoformat(timespec="seconds"),
                                        "stages": list(stages), "command": shlex.join(
                                            ["python", "experiments/results_matrix.py", *argv])})
        status.save()
        if "prepare" in stages:
            skip = run_prepare(config, rows, status)
            codes.append(EXIT_FAILED if skip else EXIT_OK)
        if "train" in stages:
            codes.append(run_train(config, plan(config, table), skip, status, started))
        if "report" in stages:
            written = write_report(config, table, gains, status.data, reproduce_commands)
            print("\n".join(f"wrote {path}" for path in written), flush=True)
    return EXIT_FAILED if EXIT_FAILED in codes else max(codes)


def comma_list(kind=str):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                             f"{kind.__name__}") from None
    return parse


def parse_args(argv) -> tuple[MatrixConfig, list[str]]:
    d = MatrixConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split(
        "\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="*", help=f"{', '.join(STAGES)} [default: all, in order]")
    p.add_argument("--datasets", type=comma_list(), default=d.datasets, help="comma-separated")
    p.add_argument("--data-root", type=Path, default=d.data_root,
                   help="folder holding one folder per dataset [default: ../shared/data]")
    p.add_argument("--artifacts", type=Path, default=d.artifacts)
    p.add_argument("--encoder", default=d.encoder, help="text encoder: name or local folder")
    p.add_argument("--rows", type=comma_list(), default=d.rows,
                   help=f"subset of: {', '.join(row.name for row in ROWS)} [default: the "
                        "rows without the opt-in ones of issue 15]")
    p.add_argument("--seeds", type=comma_list(int), default=d.seeds)
    p.add_argument("--headline-seeds", type=comma_list(int), default=d.headline_seeds)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--gpus", type=int, help="[default: all visible]")
    p.add_argument("--per-gpu", type=int, default=d.per_gpu, help="trainings per GPU at once")
    p.add_argument("--jobs", type=int, default=d.jobs, help="trainings at once on CPU")
    p.add_argument("--deadline", type=float, help="seconds after which nothing new is launched")
    p.add_argument("--epochs", type=int, help="[default: the trainer's]")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="save every run's weights (train --no-checkpoint otherwise: the report "
                        "needs only the records, and a MiniLM checkpoint is about 90 MB)")
    for name in ("results", "csv", "json"):
        p.add_argument(f"--{name}", type=Path, default=getattr(d, name))
    p.add_argument("--reading", type=Path, default=d.reading,
                   help="hand-written markdown put at the top of RESULTS.md when the file exists "
                        "[default: experiments/results/reading.md]")
    args = vars(p.parse_args(argv))
    given = args.pop("stages")
    if set(given) - set(STAGES):
        p.error(f"unknown stage {sorted(set(given) - set(STAGES))[0]!r}; stages: "
                f"{', '.join(STAGES)}")
    stages = [stage for stage in STAGES if stage in given] or list(STAGES)
    for name in ("data_root", "artifacts", "results", "csv", "json"):
        args[name] = args[name].resolve()
    return MatrixConfig(**args), stages


def main(argv=None, table=ROWS, gains=GAINS) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config, stages = parse_args(argv)
        return run(config, stages, table, gains, argv)
    except MnerError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # stop our trainings, then exit
    sys.exit(main())
