"""Decoding images for the encoders: robust on CPU (PIL), fast on the GPU (batched nvJPEG).

Every image becomes a uint8 (3, S, S) tensor resized as its encoder's ``preprocess`` says, or a
failure with a reason; nothing is ever replaced by a blank image. Handled: grayscale, CMYK, 16-bit,
palette/alpha (composited on white), animated GIF/PNG (first frame), EXIF orientation (applied).
Missing, empty, corrupt and truncated files are failures ("missing image", "corrupt: ...",
"truncated: ...").

Two routes, chosen per run:

- ``pil``: DataLoader workers read, decode and resize with PIL (JPEG draft mode: the DCT scales down
  while decoding); the main process gets a pinned (k, 3, S, S) batch.
- ``gpu``: workers only read the bytes and check the header; plain baseline/progressive RGB or gray
  JPEGs with no EXIF rotation go to ``torchvision.io.decode_jpeg(list, device=...)`` in one batched
  call and are resized on the device; everything else (PNG, GIF, CMYK, EXIF-rotated, a JPEG without
  its end marker, a file nvJPEG refuses) is decoded by PIL in the worker as in the ``pil`` route.
"""
from __future__ import annotations

import hashlib
import io
import math
import queue
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ROUTES = ("pil", "gpu")
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodeSpec:
    """The pixels an encoder wants: ``size`` x ``size``, ``squash``-ed or shortest side + crop."""

    size: int = 224
    resize: str = "squash"
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.resize not in ("squash", "shortest+center_crop"):
            raise ValueError(f"resize must be squash or shortest+center_crop, not {self.resize!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError("interpolation must be bilinear or bicubic, not "
                             f"{self.interpolation!r}")

    @classmethod
    def from_preprocess(cls, preprocess: dict) -> "DecodeSpec":
        return cls(int(preprocess["size"]), preprocess["resize"], preprocess["interpolation"])

    def target(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) to resize to before any crop."""
        if self.resize == "squash":
            return self.size, self.size
        scale = self.size / min(width, height)
        return max(self.size, round(width * scale)), max(self.size, round(height * scale))


# ---- PIL ----------------------------------------------------------------------------------------

def to_rgb(img: Image.Image) -> Image.Image:
    """First frame, EXIF orientation applied, alpha composited on white, any mode to RGB."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float32)
        top = 65535.0 if array.max() > 255 else 255.0
        img = Image.fromarray((array * (255.0 / top)).clip(0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _resize_pil(img: Image.Image, spec: DecodeSpec) -> np.ndarray:
    method = Image.BICUBIC if spec.interpolation == "bicubic" else Image.BILINEAR
    width, height = spec.target(*img.size)
    img = img.resize((width, height), method)
    if (width, height) != (spec.size, spec.size):
        left, top = (width - spec.size) // 2, (height - spec.size) // 2
        img = img.crop((left, top, left + spec.size, top + spec.size))
    return np.array(img, dtype=np.uint8)   # a writable copy for torch.from_numpy


def failure_reason(err: Exception) -> str:
    """One short line: ``truncated: ...`` or ``corrupt: ...``."""
    text = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
    if "truncated" in text.lower() or isinstance(err, EOFError):
        return f"truncated: {text}"
    if isinstance(err, Image.UnidentifiedImageError):
        return "corrupt: not an image file PIL can identify"
    return f"corrupt: {text}"


def decode_bytes(data: bytes, spec: DecodeSpec) -> tuple[torch.Tensor | None, str]:
    """(uint8 (3, S, S) tensor, "") or (None, reason)."""
    if not data:
        return None, "corrupt: empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG" and getattr(img, "n_frames", 1) == 1:
                img.draft(None, (spec.size, spec.size))
            img.load()
            if img.format == "JPEG" and _grey_filled(img):
                return None, "truncated: the lower rows are the decoder's grey fill"
            array = _resize_pil(to_rgb(img), spec)
    except Exception as err:  # noqa: BLE001 - PIL raises many types; each is recorded, not hidden
        return None, failure_reason(err)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), ""


def _grey_filled(img: Image.Image) -> bool:
    """The last row is exactly mid-grey: libjpeg's fill for the rows of a file cut short (which
    PIL loads without an error when the cut data ends in an end-of-image marker)."""
    if img.mode not in ("RGB", "L", "YCbCr") or img.height < 2:
        return False
    extrema = img.crop((0, img.height - 1, img.width, img.height)).getextrema()
    extrema = [extrema] if img.mode == "L" else extrema
    return all(tuple(band) == (128, 128) for band in extrema)


def read_file(path: Path | None) -> tuple[bytes | None, str]:
    """File bytes and their sha256 ("" and None when the file is missing)."""
    if path is None:
        return None, ""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None, ""
    return data, hashlib.sha256(data).hexdigest()


def decode_file(path: Path | None, spec: DecodeSpec) -> tuple[torch.Tensor | None, str, str]:
    """(pixels or None, reason, sha256 of the bytes) for one image file."""
    data, sha = read_file(path)
    if data is None:
        return None, "missing image", ""
    pixels, reason = decode_bytes(data, spec)
    return pixels, reason, sha


# ---- GPU route ----------------------------------------------------------------------------------

def gpu_decodable(data: bytes) -> bool:
    """A complete RGB/gray JPEG with no EXIF rotation: nvJPEG decodes it exactly as PIL would."""
    if data[:3] != b"\xff\xd8\xff" or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:     # reads the header only
            return img.mode in ("RGB", "L") and img.getexif().get(_ORIENTATION, 1) == 1
    except Exception:  # noqa: BLE001 - not decodable on the GPU: PIL decides (and names the fault)
        return False


def _interpolate(x: torch.Tensor, spec: DecodeSpec) -> torch.Tensor:
    """float (m, 3, H, W), all one size -> float (m, 3, S, S), antialiased like PIL, unrounded."""
    width, height = spec.target(x.shape[3], x.shape[2])
    x = torch.nn.functional.interpolate(x, size=(height, width), antialias=True,
                                        mode=spec.interpolation, align_corners=False)
    if (width, height) != (spec.size, spec.size):
        left, top = (width - spec.size) // 2, (height - spec.size) // 2
        x = x[..., top:top + spec.size, left:left + spec.size]
    return x


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def resize_tensor(img: torch.Tensor, spec: DecodeSpec) -> torch.Tensor:
    """uint8 (3, H, W) on any device -> uint8 (3, S, S), antialiased like PIL."""
    return _to_uint8(_interpolate(img[None].float(), spec))[0]


GROUP_ELEMENTS = 1 << 26     # at most 256 MB of float pixels in one interpolate call


def resize_batch(images: list[torch.Tensor], spec: DecodeSpec) -> torch.Tensor:
    """uint8 (3, H_i, W_i) images on one device -> uint8 (n, 3, S, S) in the same order, each
    exactly ``resize_tensor(image)``: the images of one size go through one interpolate call
    (the same kernel on each of them), so a batch costs a few kernels per size, not per image."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(k)
    parts, order = [], []
    for shape, members in groups.items():
        step = max(1, GROUP_ELEMENTS // math.prod(shape))
        for a in range(0, len(members), step):
            chunk = members[a:a + step]
            x = images[chunk[0]][None] if len(chunk) == 1 else torch.stack(
                [images[k] for k in chunk])
            parts.append(_interpolate(x.float(), spec))
            order.extend(chunk)
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    if order != sorted(order):
        out = out[_index(torch.tensor(order).argsort(), out.device)]
    return _to_uint8(out)


def _index(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``index`` on ``device``; to CUDA from pinned memory, so the caller does not wait."""
    if device.type != "cuda":
        return index
    return index.pin_memory().to(device, non_blocking=True)


def decode_jpegs(blobs: list[torch.Tensor], device: str) -> list[torch.Tensor | None]:
    """Batched ``torchvision.io.decode_jpeg`` on ``device``; None for any file it refuses."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not blobs:
        return []
    try:
        return list(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        out = []
        for blob in blobs:
            try:
                out.append(decode_jpeg(blob, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


# ---- DataLoader ---------------------------------------------------------------------------------

class ImageFiles(torch.utils.data.Dataset):
    """Rows of a feature file and their image paths (None = missing), read in worker processes."""

    def __init__(self, rows: list[int], paths: list[Path | None], spec: DecodeSpec, route: str):
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, not {route!r}")
        self.rows, self.paths, self.spec, self.route = list(rows), list(paths), spec, route

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        data, sha = read_file(self.paths[index])
        if data is None:
            return {"row": row, "kind": "failed", "reason": "missing image", "sha": ""}
        if self.route == "gpu" and gpu_decodable(data):
            blob = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return {"row": row, "kind": "jpeg", "data": blob, "sha": sha}
        pixels, reason = decode_bytes(data, self.spec)
        if pixels is None:
            return {"row": row, "kind": "failed", "reason": reason, "sha": sha}
        return {"row": row, "kind": "pixels", "data": pixels, "sha": sha}


def collate(records: list[dict]) -> dict:
    """A batch that carries its failures: pixels stacked, JPEG files concatenated (one tensor to
    pin and move, ``jpeg_sizes`` to split it), failures by row."""
    pixels = [r for r in records if r["kind"] == "pixels"]
    jpegs = [r for r in records if r["kind"] == "jpeg"]
    return {
        "rows": [r["row"] for r in records],
        "sha": [r["sha"] for r in records],
        "pixel_rows": [r["row"] for r in pixels],
        "pixels": torch.stack([r["data"] for r in pixels]) if pixels else None,
        "jpeg_rows": [r["row"] for r in jpegs],
        "jpeg": torch.cat([r["data"] for r in jpegs]) if jpegs else None,
        "jpeg_sizes": [len(r["data"]) for r in jpegs],
        "failed": [(r["row"], r["reason"]) for r in records if r["kind"] == "failed"],
    }


def image_batches(rows, paths, spec: DecodeSpec, route: str, batch_size: int, workers: int,
                  pin_memory: bool = False):
    """Batches (see ``collate``) of the given rows, in order, decoded by ``workers`` processes."""
    return torch.utils.data.DataLoader(
        ImageFiles(rows, paths, spec, route), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
        prefetch_factor=4 if workers else None)


def materialize(batch: dict, spec: DecodeSpec, device: str):
    """(uint8 (m, 3, S, S) on ``device`` or None, the m rows it holds, {row: reason} failures).

    The JPEG files of the batch are decoded in one call and resized with ``resize_batch``; files
    decoded by the workers (``pixels``) and those nvJPEG refuses (decoded here by PIL) join them,
    and the result is put back in the batch's row order."""
    failed = dict(batch["failed"])
    parts, part_rows = [], []
    if batch["pixel_rows"]:
        parts.append(batch["pixels"].to(device, non_blocking=True))
        part_rows.extend(batch["pixel_rows"])
    blobs = list(torch.split(batch["jpeg"], batch["jpeg_sizes"])) if batch["jpeg_rows"] else []
    decoded, decoded_rows = [], []
    for row, blob, img in zip(batch["jpeg_rows"], blobs, decode_jpegs(blobs, device)):
        if img is not None:
            decoded.append(img)
            decoded_rows.append(row)
            continue
        pixels, reason = decode_bytes(blob.numpy().tobytes(), spec)
        if pixels is None:
            failed[row] = reason
        else:
            parts.append(pixels[None].to(device))
            part_rows.append(row)
    if decoded:
        parts.append(resize_batch(decoded, spec))
        part_rows.extend(decoded_rows)
    if not parts:
        return None, [], failed
    stacked = torch.cat(parts) if len(parts) > 1 else parts[0]
    rows = [row for row in batch["rows"] if row not in failed]
    if part_rows != rows:
        where = {row: k for k, row in enumerate(part_rows)}
        stacked = stacked[_index(torch.tensor([where[row] for row in rows]), stacked.device)]
    return stacked, rows, failed


class DecodeAhead:
    """``(batch, images, rows, failed)`` of a loader (see ``materialize``), decoded on a
    background thread up to ``depth`` batches ahead of the caller.

    nvJPEG holds its caller until a batch is decoded (~20 ms for 256 tweet-sized JPEGs on an H100)
    and the GPU can run the model meanwhile, so the thread decodes and resizes batch i + 1 on its
    own CUDA stream while the caller's stream runs batch i; each batch comes with an event that
    the caller's stream waits on. The thread waits for its stream before each decode, so nvJPEG
    (which writes on a stream of its own) never reuses memory that a resize has yet to read.
    Use it as a context manager; leaving it stops the thread. Errors re-raise in the caller."""

    _END = object()

    def __init__(self, loader, spec: DecodeSpec, device: str, depth: int = 2):
        self.iterator = iter(loader)     # started here: the DataLoader's workers and pin thread
        self.spec, self.device = spec, device
        self.queue: queue.Queue = queue.Queue(depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name="decode-ahead", daemon=True)

    def _work(self) -> None:
        device = torch.device(self.device)
        cuda = device.type == "cuda"
        stream = torch.cuda.Stream(device) if cuda else None
        try:
            with torch.cuda.device(device) if cuda else nullcontext(), \
                    torch.cuda.stream(stream) if cuda else nullcontext():
                for batch in self.iterator:
                    if self.stop.is_set():
                        return
                    if cuda:
                        stream.synchronize()
                    images, rows, failed = materialize(batch, self.spec, self.device)
                    event = stream.record_event() if cuda and images is not None else None
                    self._put((batch, images, rows, failed, event))
            self._put(self._END)
        except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
            self._put(err)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            try:
                item = self.queue.get(timeout=1.0)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the decode thread stopped without a word") from None
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            batch, images, rows, failed, event = item
            if event is not None:
                current = torch.cuda.current_stream(images.device)
                current.wait_event(event)
                images.record_stream(current)    # its memory is not reused before we are done
            yield batch, images, rows, failed

    def __enter__(self) -> "DecodeAhead":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop.set()
        self.thread.join(timeout=60)
        return False
