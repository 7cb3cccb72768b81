"""Images/s of the whole ``extract`` (JPEG files on disk -> HDF5) against its limits, one run.

For each CNN (random weights: the speed does not depend on them) it measures on the same images:

- decoding + resize to 224: PIL in ``--workers`` DataLoader processes (the CPU route); on CUDA
  also, from bytes already in memory, bare batched ``torchvision.io.decode_jpeg(device="cuda")``
  (no resize: nvJPEG's own ceiling), the same decode + one resize call per image (the route
  before the size-grouped resize) and ``materialize`` (the route extract uses: decode + resize
  grouped by size); and the whole input path of extract without the model (files read by the
  workers, decoded ahead on a thread of its own);
- the bare model forward pass on pre-decoded uint8 tensors already on the device (normalise,
  channels_last, bf16 autocast on CUDA; grid and ImageNet head);
- the HDF5 write alone: ``FeatureWriter.write`` of batches of (R x D) rows in the storage dtype;
- the whole ``run_extract`` of the region_grid view: files read by workers, decoded (GPU route on
  CUDA), forward, copy back, HDF5 write. "steady" counts from the first written batch to the last
  (start-up excluded); "total" is the wall time of the call (model build, worker start included).

The target (issue 3): extract steady >= 0.8 x min(forward, decode), decode being the route extract
uses (``materialize``; the PIL route on CPU).

Synthetic JPEGs of tweet-like sizes (600x400 to 1200x900, smooth content, quality 90) are made once
in ``--dir``. Needs only torch, torchvision, h5py, numpy, PIL and efficientnet_lite_pytorch.

    python bench/bench_extract.py --images 64 --batch-size 16 --out /tmp/bench-extract-cpu.json
    python bench/bench_extract.py --images 64 --ranks 2 --workers 0 --models efficientnet-lite0 \\
        --out /tmp/bench-extract-ranks.json             # + torchrun, 1 and 2 gloo ranks on CPU
    python bench/bench_extract.py --device cuda --images 8192 --batch-size 256 --workers 16 \\
        --out bench/results/extract-h100.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.launch import extract_ranks  # noqa: E402
from bench.machine import machine as base_machine  # noqa: E402

import torch  # noqa: E402

from pipeline.encoders import resolve_encoder  # noqa: E402
from pipeline.loaders import load_encoder  # noqa: E402
from pipeline.extract import ExtractConfig, run_extract  # noqa: E402
from pipeline.features import FeatureWriter  # noqa: E402
from pipeline.images import (DecodeAhead, DecodeSpec, collate, decode_jpegs,  # noqa: E402
                             image_batches, materialize, resize_tensor)

SIZES = ((600, 400), (800, 600), (1024, 768), (1200, 900), (900, 1200), (640, 640))


def machine(device: str) -> dict:
    return base_machine(device)


def _make_jpeg(args) -> int:
    from PIL import Image

    path, index = args
    rng = np.random.default_rng(index)
    width, height = SIZES[index % len(SIZES)]
    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    noise = rng.normal(0, 6, (height, width, 3))
    img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
    img.save(path, "JPEG", quality=90)
    return Path(path).stat().st_size


def make_dataset(folder: Path, count: int, workers: int) -> tuple[Path, Path, float]:
    """``count`` JPEGs in folder/images and a UMT dataset of their ids; mean file size in KB."""
    images, data = folder / "images", folder / "data"
    images.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    ids = [f"img{i:06d}" for i in range(count)]
    todo = [(str(images / f"{i}.jpg"), n) for n, i in enumerate(ids)
            if not (images / f"{i}.jpg").is_file()]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(pool.map(_make_jpeg, todo, chunksize=16))
    splits = {"train": ids[:-2], "valid": ids[-2:-1], "test": ids[-1:]}
    for split, part in splits.items():
        (data / f"{split}.txt").write_text("".join(f"IMGID:{i}\nword\tO\n\n" for i in part))
    size = np.mean([(images / f"{i}.jpg").stat().st_size for i in ids]) / 1024
    return data, images, float(size)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_cpu_decode(paths, spec, batch_size, workers) -> float:
    start = time.perf_counter()
    n = 0
    for batch in image_batches(range(len(paths)), paths, spec, "pil", batch_size, workers):
        n += len(batch["rows"])
    return n / (time.perf_counter() - start)


def jpeg_batches(paths, batch_size, device) -> list[dict]:
    """The files' bytes as the loader gives them: ``collate``d batches, pinned on CUDA."""
    records = [{"row": k, "kind": "jpeg", "sha": "",
                "data": torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8)}
               for k, p in enumerate(paths)]
    batches = [collate(records[i:i + batch_size]) for i in range(0, len(records), batch_size)]
    for batch in batches:
        if device.startswith("cuda"):
            batch["jpeg"] = batch["jpeg"].pin_memory()
    return batches


def bench_gpu_decode(batches, spec, device) -> dict[str, float]:
    """img/s of three ways to decode the same JPEG bytes (in pinned memory, as the loader gives
    them): bare nvJPEG, nvJPEG + one resize per image, and ``materialize`` (what extract runs)."""
    count = sum(len(b["rows"]) for b in batches)

    def bare(batch):
        decode_jpegs(list(torch.split(batch["jpeg"], batch["jpeg_sizes"])), device)

    def resize_each(batch):
        blobs = list(torch.split(batch["jpeg"], batch["jpeg_sizes"]))
        torch.stack([resize_tensor(img, spec) for img in decode_jpegs(blobs, device)])

    def route(batch):
        materialize(batch, spec, device)
    speeds = {}
    for name, fn in (("gpu_nvjpeg_bare", bare), ("gpu_nvjpeg_resize_each", resize_each),
                     ("gpu_route", route)):
        fn(batches[0])                                # warm-up (nvJPEG handles, kernels)
        sync(device)
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        sync(device)
        speeds[name] = count / (time.perf_counter() - start)
    return speeds


def bench_shared_gpu(encoder, batches, spec, device) -> float:
    """img/s when decoding (``materialize`` on a thread and stream of its own, as ``DecodeAhead``
    runs it) and the forward pass (on already decoded images) share the GPU: the ceiling of a
    one-GPU extract, without files, workers, copies back or HDF5. nvJPEG and the model compete
    for the same device, so it sits below the slower of the two alone."""
    import threading
    from contextlib import nullcontext

    size = encoder.spec.preprocess["size"]
    images = torch.randint(0, 256, (len(batches[0]["rows"]), 3, size, size), dtype=torch.uint8,
                           device=device)
    encoder.forward_views(images)
    sync(device)
    cuda = device.startswith("cuda")
    stream = torch.cuda.Stream(torch.device(device)) if cuda else None

    def decode():
        with torch.cuda.stream(stream) if cuda else nullcontext():
            for batch in batches:
                materialize(batch, spec, device)
            sync(device)
    thread = threading.Thread(target=decode)
    start = time.perf_counter()
    thread.start()
    for _ in batches:
        encoder.forward_views(images)
    sync(device)
    thread.join()
    return sum(len(b["rows"]) for b in batches) / (time.perf_counter() - start)


def bench_input_path(paths, spec, batch_size, workers, device) -> float:
    """img/s of extract's input path without the model (workers read, a thread decodes ahead),
    steady state: from the first batch to the last (worker start and nvJPEG set-up excluded)."""
    loader = image_batches(range(len(paths)), paths, spec, "gpu", batch_size, workers,
                           pin_memory=device.startswith("cuda"))
    stamps = []
    with DecodeAhead(loader, spec, device) as batches:
        for _, images, rows, _ in batches:
            if images is not None:
                images.sum()                    # use it on this stream, as the model would
                if images.is_cuda:
                    torch.cuda.current_stream().synchronize()
            stamps.append((time.perf_counter(), len(rows)))
    rows = sum(n for _, n in stamps[1:])
    return rows / (stamps[-1][0] - stamps[0][0]) if len(stamps) > 1 else float("nan")


def bench_write(folder: Path, shape: tuple[int, ...], count: int, batch_size: int,
                dtype) -> float:
    """rows/s of ``FeatureWriter.write`` alone: batches of random rows into a new file."""
    path = folder / "write-bench.h5"
    for stale in (path, path.with_name(path.name + ".tmp")):
        stale.unlink(missing_ok=True)
    ids = [f"r{i}" for i in range(count)]
    rows = np.random.default_rng(0).standard_normal((batch_size, *shape)).astype(dtype)
    writer = FeatureWriter(path, ids, {"fingerprint": "bench"}, dtype)
    start = time.perf_counter()
    for i in range(0, count, batch_size):
        part = np.arange(i, min(count, i + batch_size))
        writer.write(part, rows[:len(part)], [True] * len(part), [""] * len(part))
    seconds = time.perf_counter() - start
    writer.close()
    path.with_name(path.name + ".tmp").unlink()
    return count / seconds


def bench_forward(encoder, batch_size, count, device) -> float:
    size = encoder.spec.preprocess["size"]
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    for _ in range(2):
        encoder.forward_views(images)
    sync(device)
    steps = max(3, count // batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        encoder.forward_views(images)
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


class Clock:
    """A progress factory that notes when each batch was written."""

    def __init__(self):
        self.stamps: list[tuple[float, int]] = []

    def __call__(self, total=None, desc=None, **kwargs):
        return self

    def update(self, n=1):
        self.stamps.append((time.perf_counter(), n))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def steady(self) -> float | None:
        if len(self.stamps) < 2:
            return None
        rows = sum(n for _, n in self.stamps[1:])
        return rows / (self.stamps[-1][0] - self.stamps[0][0])


def bench_extract(model, data, images, args, artifacts) -> tuple[float, float | None]:
    config = ExtractConfig(data_dir=data, artifacts=artifacts, image_dir=images, captions=None,
                           views=("region_grid",), image_encoder=model, float16=args.float16,
                           device=args.device, batch_size=args.batch_size, workers=args.workers,
                           overwrite=True)
    clock = Clock()
    start = time.perf_counter()
    summary = run_extract(config, clock)
    total = time.perf_counter() - start
    assert summary["views"]["region_grid"]["valid"] == args.images
    return args.images / total, clock.steady()


def run(args) -> dict:
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench-extract-"))
    data, images, kb = make_dataset(folder, args.images, args.workers)
    paths = sorted(images.glob("*.jpg"))
    spec = DecodeSpec(224)
    cuda = args.device.startswith("cuda")
    result = {"machine": machine(args.device), "settings": {
        "device": args.device, "images": args.images, "batch_size": args.batch_size,
        "workers": args.workers, "storage": "float16" if args.float16 else "float32",
        "precision": "bf16 autocast" if cuda else "fp32",
        "mean_jpeg_kb": round(kb, 1), "sizes": [f"{w}x{h}" for w, h in SIZES]},
        "decode": {}, "models": {}}
    result["decode"]["cpu_pil"] = bench_cpu_decode(paths, spec, args.batch_size, args.workers)
    batches = jpeg_batches(paths, args.batch_size, args.device) if cuda else None
    if cuda:
        result["decode"].update(bench_gpu_decode(batches, spec, args.device))
        result["decode"]["input_path"] = bench_input_path(paths, spec, args.batch_size,
                                                          args.workers, args.device)
    decode = result["decode"].get("gpu_route", result["decode"]["cpu_pil"])
    dtype = np.float16 if args.float16 else np.float32
    for model in args.models.split(","):
        name = f"{model}:random"
        encoder = load_encoder(name, args.device, "bf16" if cuda else "fp32")
        forward = bench_forward(encoder, args.batch_size, args.images, args.device)
        shared = bench_shared_gpu(encoder, batches, spec, args.device) if cuda else None
        del encoder
        dim = resolve_encoder(name).dim
        write = bench_write(folder, (49, dim), args.images, args.batch_size, dtype)
        total, steady = bench_extract(name, data, images, args, folder / "artifacts")
        limit = min(forward, decode)
        result["models"][model] = {
            "grid": f"{dim} x 49", "forward": forward, "shared_gpu": shared, "hdf5_write": write,
            "extract_total": total, "extract_steady": steady,
            "steady_over_forward": steady / forward if steady else None,
            "steady_over_decode": steady / decode if steady else None,
            "steady_over_limit": steady / limit if steady else None,
            "steady_over_shared": steady / shared if steady and shared else None}
        if args.ranks:
            result["models"][model]["ranks"] = extract_ranks(name, data, images, args, folder)
    return result


DECODE_ROWS = (
    ("cpu_pil", "decode+resize, PIL x{workers} processes"),
    ("gpu_nvjpeg_bare", "decode only, nvJPEG batched (bare decode_jpeg)"),
    ("gpu_nvjpeg_resize_each", "decode+resize, nvJPEG + one resize per image"),
    ("gpu_route", "decode+resize, extract's route (materialize)"),
    ("input_path", "files -> workers -> decode thread, steady (no model)"))


def table(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    gpu = f"; GPU {m['gpu']}" if "gpu" in m else ""
    lines = [f"machine: CPU {m['cpu']} ({m['cores']} cores){gpu}; torch {m['torch']}",
             f"{s['images']} JPEGs ({s['mean_jpeg_kb']} KB mean, 600x400..1200x900), batch "
             f"{s['batch_size']}, {s['workers']} workers, {s['precision']}, {s['storage']} HDF5"]
    for key, label in DECODE_ROWS:
        if key in result["decode"]:
            lines.append(f"{label.format(workers=s['workers']):<54}"
                         f"{result['decode'][key]:>8,.0f} img/s")
    lines.append(f"{'model':<20}{'forward':>9}{'shared':>9}{'write':>9}{'extract':>9}"
                 f"{'(total)':>9}{'ext/fwd':>8}{'ext/dec':>8}{'ext/min':>8}{'ext/shr':>8}")

    def num(x, fmt):
        return format(x, fmt) if x is not None else "-"
    for model, r in result["models"].items():
        lines.append(f"{model:<20}{r['forward']:>9,.0f}{num(r.get('shared_gpu'), ',.0f'):>9}"
                     f"{r['hdf5_write']:>9,.0f}"
                     f"{num(r['extract_steady'], ',.0f'):>9}{r['extract_total']:>9,.0f}"
                     f"{num(r['steady_over_forward'], '.2f'):>8}"
                     f"{num(r['steady_over_decode'], '.2f'):>8}"
                     f"{num(r['steady_over_limit'], '.2f'):>8}"
                     f"{num(r.get('steady_over_shared'), '.2f'):>8}")
    decode = "extract's route" if "gpu_route" in result["decode"] else "PIL"
    lines.append("img/s; shared = decode (extract's route) on its own thread and stream while the "
                 "model runs, no files or HDF5;")
    lines.append("write = HDF5 rows/s alone; extract = steady state (first written batch "
                 "to last), (total) = whole call;")
    lines.append(f"ext/min = extract over the slower of forward and decode ({decode}); "
                 "target >= 0.8; ext/shr = extract over shared")
    for model, r in result["models"].items():
        if r.get("ranks"):
            lines.append(f"torchrun extract of {model} (whole command, cores split between "
                         "the ranks; baseline: 1 rank, same run)")
            lines.append(f"{'ranks':>6}{'seconds':>10}{'img/s':>9}{'x 1 rank':>10}  "
                         "file equal to 1 rank's")
            lines += [f"{x['ranks']:>6}{x['seconds']:>10.2f}{x['images_per_s']:>9.1f}"
                      f"{x['speedup']:>10.2f}  {'yes' if x['equal_to_1_rank'] else 'NO'}"
                      for x in r["ranks"]]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--models", default="efficientnet-lite0,resnet50")
    parser.add_argument("--float32", dest="float16", action="store_false",
                        help="store float32 (default: float16, as --float16 in extract)")
    parser.add_argument("--ranks", type=int, default=0,
                        help="also time extract under torchrun with 1 and this many ranks")
    parser.add_argument("--dir", default=None, help="where the JPEGs and HDF5 files go "
                        "[default: a new temporary folder]")
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    args = parser.parse_args(argv)
    result = run(args)
    text = table(result)
    print(text)
    result["table"] = text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
