"""A synthetic pool of text-image items through extract, build-graphs and one training epoch,
with the peak host and device memory and the wall time of each stage, against the same stages
on the dataset alone (same run, same machine: the ratio is what the pool costs).

The data folder is a copy of a labelled dataset (TWITTER-2017 by default: its train, valid and
test files and its BLIP-2 captions) plus a ``pool`` split of ``--pool`` synthetic items: tweets
of 8-24 words drawn from the train split's vocabulary, a caption of 6-12 such words each, and
with ``--images`` a JPEG each (every dataset item gets one too: the real tweet images are not
here). Pool items are neighbour candidates only (never queries, never trained on). Each stage
is the real command, ``python cli.py extract`` / ``build-graphs`` / ``train --epochs 1``, in its
own process: peak host memory is that process's peak RSS (``wait4``), device memory the largest
``used_memory`` nvidia-smi reported for it (sampled every 0.2 s; the CUDA context included).

Without ``--images`` the image side is the caption bridge (tweet and caption embedded by the
text encoder) and the nodes are caption vectors; with ``--images`` extract also writes
efficientnet-lite0 49x1280 region grids (random weights: memory and time do not depend on them)
in float16, and training gathers each batch's grids from the file on the host (the node table
is too large for the device: ``TrainConfig.node_table`` "auto"). Usage::

    python bench/bench_scale.py --pool 1000000 --encoder /path/to/minilm --device cuda \\
        --dir /root/scale --out bench/results/scale-h200-1m.json
    python bench/bench_scale.py --pool 2000 --images --encoder /path/to/minilm --device cpu \\
        --out /tmp/scale-cpu.json                                  # a smoke run on a CPU
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import machine  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "twitter2017"
SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")
JPEG_SIZES = ((480, 360), (640, 480), (400, 400))
BASES = 16           # distinct backgrounds; each JPEG stamps its own index on one


def vocabulary(train: Path) -> list[str]:
    words = [line.split("\t")[0] for line in train.read_text().splitlines()
             if line and not line.startswith("IMGID:")]
    return sorted(set(words))


def write_pool_split(folder: Path, count: int, words: list[str], seed: int) -> list[str]:
    """``pool.txt`` (UMT, a token per line, no tags) and the captions of ``count`` items."""
    rng, ids = np.random.default_rng(seed), [f"pool{i:07d}" for i in range(count)]
    vocab = np.array(words, dtype=object)
    with open(folder / "pool.txt", "w") as tweets, \
            open(folder / "image_captions" / "captions.txt", "a") as captions:
        for item in ids:
            tokens = vocab[rng.integers(0, len(vocab), rng.integers(8, 25))]
            tweets.write(f"IMGID:{item}\n" + "".join(f"{t}\n" for t in tokens) + "\n")
            caption = " ".join(vocab[rng.integers(0, len(vocab), rng.integers(6, 13))]).lower()
            captions.write(f"{item}.jpg :{caption}\n")
    return ids


def make_data(folder: Path, source: Path, pool: int, seed: int) -> tuple[Path, list[str]]:
    """The dataset's splits and captions copied into ``folder``; with ``pool`` items, also a
    pool split. Returns the folder and every item id (for the images)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "image_captions").mkdir(exist_ok=True)
    for name in SPLIT_FILES:
        shutil.copy(source / name, folder / name)
    [captions] = sorted((source / "image_captions").glob("*.txt"))
    shutil.copy(captions, folder / "image_captions" / "captions.txt")
    ids = [line[6:].strip() for name in SPLIT_FILES
           for line in (source / name).read_text().splitlines() if line.startswith("IMGID:")]
    if pool:
        ids += write_pool_split(folder, pool, vocabulary(source / "train.txt"), seed)
    return folder, ids


def _jpeg(job) -> int:
    """One JPEG: a smooth random background (one of ``BASES``) with the item's index stamped
    into a corner as bits, so that every file's bytes are its own."""
    from PIL import Image

    path, index = job
    width, height = JPEG_SIZES[index % len(JPEG_SIZES)]
    rng = np.random.default_rng(index % BASES)
    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).copy()
    bits = (index >> np.arange(24)) & 1
    pixels[:16, :24 * 8] = np.repeat(bits * 255, 8).astype(np.uint8)[None, :, None]
    Image.fromarray(pixels).save(path, "JPEG", quality=80)
    return Path(path).stat().st_size


def make_images(folder: Path, ids: list[str], workers: int) -> float:
    """A JPEG per item in ``folder``; mean size in KB."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"{item}.jpg"), n) for n, item in enumerate(ids)]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        sizes = list(pool.map(_jpeg, jobs, chunksize=256))
    return float(np.mean(sizes) / 1024)


class DevicePeak:
    """The largest ``used_memory`` (MiB) nvidia-smi reports for one process, sampled in a thread
    until ``stop()``; None where there is no nvidia-smi."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._done = pid, None, threading.Event()
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory",
                 "--format=csv,noheader,nounits"]
        while not self._done.wait(0.2):
            out = subprocess.run(query, capture_output=True, text=True).stdout
            for line in out.splitlines():
                pid, _, used = line.partition(",")
                if pid.strip() == str(self.pid) and used.strip().isdigit():
                    self.peak = max(self.peak or 0, int(used))

    def stop(self) -> int | None:
        self._done.set()
        return self.peak


def run_stage(stage: str, argv: list[str], log: Path) -> dict:
    """``python cli.py <stage> argv...``: wall seconds, peak RSS and device MB; raises with the
    log's tail when it fails."""
    command = [sys.executable, str(ROOT / "cli.py"), stage, *argv]
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        device = DevicePeak(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
    seconds, device_mb = time.perf_counter() - start, device.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{stage} failed:\n{log.read_text()[-3000:]}")
    return {"stage": stage, "seconds": round(seconds, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "device_mb": device_mb}


def disk_mb(folder: Path, pattern: str) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob(pattern)) / 2 ** 20, 1)


def bench_data(name: str, pool: int, args, root: Path) -> list[dict]:
    """The three stages on the dataset with ``pool`` synthetic pool items."""
    work = root / name
    data, ids = make_data(work / "data", args.data_dir, pool, args.seed)
    extract = ["--text-encoder", args.encoder, "--float16", "--device", args.device, "--quiet"]
    if args.images:
        start = time.perf_counter()
        kb = make_images(data / "images", ids, args.workers)
        print(f"  {name}: {len(ids)} JPEGs ({kb:.0f} KB each) in "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        extract += ["--image-encoder", "efficientnet-lite0:random", "--workers",
                    str(args.workers)]
    common = ["--data-dir", str(data), "--artifacts", str(work / "artifacts")]
    train = ["--encoder", args.encoder, "--epochs", "1", "--seeds", "1", "--device",
             args.device, "--quiet"]
    rows = []
    for stage, argv in (("extract", extract), ("build-graphs", ["--device", args.device]),
                        ("train", train)):
        row = run_stage(stage, common + argv, args.logs / f"{name}-{stage}.log")
        rows.append({"data": name, "items": len(ids), **row})
        print(f"  {name:<8} {stage:<13} {row['seconds']:7.1f} s {row['peak_rss_mb']:7} MB "
              f"device {row['device_mb']} MB", file=sys.stderr, flush=True)
    rows[-1]["artifacts_mb"] = {kind: disk_mb(work / "artifacts", kind)
                                for kind in ("*.h5", "pool.h5")}
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each pool row with its ratios to the dataset-alone row of the same stage."""
    base = {r["stage"]: r for r in rows if r["data"] == "dataset"}
    for row in rows:
        b = base[row["stage"]]
        if row is not b:
            row["ratio"] = {key: (row[key] / b[key] if row[key] and b[key] else None)
                            for key in ("seconds", "peak_rss_mb", "device_mb")}
    return rows


def table(rows: list[dict]) -> str:
    def num(value, fmt="{:,.0f}"):
        return "-" if value is None else fmt.format(value)

    lines = ["| data | items | stage | wall s | peak RSS MB | device MB | ratio to dataset "
             "alone: time, RSS, device |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("ratio")
        ratio = ", ".join(num(ratio[k], "{:.2f}") for k in ("seconds", "peak_rss_mb",
                                                             "device_mb")) if ratio else "-"
        lines.append(f"| {r['data']} | {r['items']:,} | {r['stage']} | {r['seconds']:.1f} | "
                     f"{num(r['peak_rss_mb'])} | {num(r['device_mb'])} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=1_000_000, help="synthetic pool items")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--encoder", required=True, help="text encoder (a local folder)")
    parser.add_argument("--images", action="store_true",
                        help="also JPEGs and 49x1280 float16 region grids")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here "
                        "(and each stage's output to <out stem>-logs/)")
    args = parser.parse_args(argv)
    info = machine(args.device)
    print(f"machine: {info}", file=sys.stderr)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    args.logs = args.out.with_name(args.out.stem + "-logs") if args.out else Path(
        tempfile.mkdtemp(prefix="scale-logs-"))
    args.logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = with_ratios(bench_data("dataset", 0, args, Path(tmp))
                           + bench_data("pool", args.pool, args, Path(tmp)))
        free_gb = shutil.disk_usage(tmp).free / 1e9
    print(table(rows))
    if args.out:
        command = "python bench/bench_scale.py " + " ".join(argv or sys.argv[1:])
        args.out.write_text(json.dumps({"machine": info, "command": command,
                                        "images": args.images, "pool": args.pool,
                                        "disk_free_gb_at_end": round(free_gb, 1),
                                        "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
