"""Float16 copies of text-encoder folders, for machines that take files in small transfers.

:func:`export_fp16` writes a model folder whose ``model.safetensors`` holds the source weights in
float16 (same tensor names; integer buffers unchanged), with every non-weight file (config,
tokenizer, sentence-transformers files, model card) copied. When the source ``config.json`` names
no dtype, the copy's says the source's (``float32``), so a plain ``from_pretrained`` loads float32
as it did from the original, instead of float16; ``load_text_backbone(path, dtype=torch.bfloat16)``
loads bf16. With ``chunk_mb`` the weight file is split into ``model.safetensors.000``, ``.001``, ...
of at most ``chunk_mb`` MB (10^6 bytes) each (not when it fits in one), in the folder or in
``chunks_dir``, so that each transfer is one path; :func:`join_chunks` rebuilds the weight file and
checks its sha256.

``model.safetensors.manifest`` (JSON; named so that ``weights_fingerprint`` does not hash it)
records the source, the sha256 and size of the weight file and of every chunk, and the environment.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .artifacts import environment, file_sha256
from .encoders import get_spec, model_location, weights_fingerprint
from .errors import CacheMismatch, CorruptInput, MissingInput
from .progress import no_progress

WEIGHTS = "model.safetensors"
MANIFEST = WEIGHTS + ".manifest"
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot",
                   ".gguf", ".ckpt"}


def read_weights(folder: Path) -> dict:
    """State dict of a one-file model folder (model.safetensors, else pytorch_model.bin)."""
    import torch
    from safetensors.torch import load_file

    if (folder / WEIGHTS).is_file():
        return load_file(folder / WEIGHTS)
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise MissingInput(f"{folder}: no {WEIGHTS} or pytorch_model.bin (sharded checkpoints are not "
                       "supported); give a folder holding one weight file")


def to_float16(tensors: dict) -> dict:
    """Float tensors as float16 (new storage each, as safetensors wants), others copied."""
    import torch

    half = {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            half[name] = tensor.to(torch.float16, copy=True).contiguous()
            if not torch.isfinite(half[name]).all():
                raise CorruptInput(f"{name}: values outside the float16 range; keep this encoder "
                                   "in float32")
        else:
            half[name] = tensor.clone().contiguous()
    return half


def export_fp16(encoder: str, out, chunk_mb: float | None = None, chunks_dir=None,
                progress=no_progress) -> dict:
    """Write the float16 copy of ``encoder`` (registered name or local folder) to ``out``.

    ``out`` (and ``chunks_dir``, default ``out``) must not exist or be empty; they appear only once
    complete (written to ``<name>.tmp``). The manifest, returned, records where the chunks are,
    relative to ``out``.
    """

    if chunk_mb is not None and chunk_mb <= 0:
        raise ValueError(f"chunk_mb must be positive, got {chunk_mb}")
    out = Path(out)
    for folder in (out, chunks_dir):
        if folder is not None and Path(folder).exists() and any(Path(folder).iterdir()):
            raise CacheMismatch(f"{folder} exists and is not empty; choose another or delete it")
    spec = get_spec(encoder, "text")
    source = Path(model_location(spec))
    if not source.is_dir():
        raise MissingInput(f"encoder {encoder!r} has no local folder ({source}); float16 copies "
                           "are made from local model folders")
    tensors = read_weights(source)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _write_copy(source, tmp, tensors, chunk_mb, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.update(encoder=spec.as_dict(), source=str(source),
                    source_weights_sha256=weights_fingerprint(str(source)), chunks_dir=".")
    if chunks_dir is not None and manifest["chunks"]:
        _move_chunks(tmp, Path(chunks_dir), manifest["chunks"])
        manifest["chunks_dir"] = os.path.relpath(chunks_dir, out)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return manifest


def _move_chunks(source: Path, target: Path, chunks: list[dict]) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for chunk in chunks:
        os.replace(source / chunk["file"], tmp / chunk["file"])
    if target.exists():
        target.rmdir()
    os.replace(tmp, target)


def _write_copy(source: Path, tmp: Path, tensors: dict, chunk_mb, progress) -> dict:
    from safetensors.torch import save_file

    source_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()
                            if t.is_floating_point()})
    tmp.mkdir(parents=True)
    _copy_side_files(source, tmp)
    _pin_config_dtype(tmp / "config.json", source_dtypes)
    save_file(to_float16(tensors), tmp / WEIGHTS, metadata={"format": "pt"})
    os.chmod(tmp / WEIGHTS, 0o644)      # safetensors writes 0600; the copy is meant to travel
    manifest = {"source_dtypes": source_dtypes, "dtype": "float16", "weights": WEIGHTS,
                "bytes": (tmp / WEIGHTS).stat().st_size, "sha256": file_sha256(tmp / WEIGHTS),
                "chunk_bytes": None, "chunks": [], "environment": environment()}
    if chunk_mb is not None:
        manifest["chunk_bytes"] = int(chunk_mb * 1_000_000)
        if manifest["bytes"] > manifest["chunk_bytes"]:     # one chunk: keep the loadable file
            manifest["chunks"] = split_file(tmp / WEIGHTS, manifest["chunk_bytes"], progress)
    return manifest


def _copy_side_files(source: Path, target: Path) -> None:
    """Copy every file but the weights (and git/cache clutter), keeping subfolders."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if (path.is_dir() or path.suffix in WEIGHT_SUFFIXES or relative.parts[0] in (
                ".git", ".cache", "onnx", "openvino", "__pycache__")
                or path.name.startswith(".mner-")):      # the assembly marker of packaged.py
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)


def _pin_config_dtype(config_path: Path, source_dtypes: list[str]) -> None:
    config = json.loads(config_path.read_text())
    if "dtype" not in config and "torch_dtype" not in config and len(source_dtypes) == 1:
        config["dtype"] = source_dtypes[0]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def split_file(path: Path, chunk_bytes: int, progress=no_progress) -> list[dict]:
    """Split ``path`` into ``<path>.000``, ``.001``, ... of at most ``chunk_bytes``; delete it."""
    chunks = []
    size = path.stat().st_size
    with open(path, "rb") as handle, progress(total=size, desc="splitting", unit="B",
                                              unit_scale=True) as bar:
        while True:
            block = handle.read(chunk_bytes)
            if not block and chunks:
                break
            name = f"{path.name}.{len(chunks):03d}"
            (path.parent / name).write_bytes(block)
            chunks.append({"file": name, "bytes": len(block),
                           "sha256": hashlib.sha256(block).hexdigest()})
            bar.update(len(block))
            if len(block) < chunk_bytes:
                break
    path.unlink()
    return chunks


def join_chunks(folder, remove_chunks: bool = False, chunks_dir=None,
                progress=no_progress) -> Path:
    """Rebuild the weight file of a chunked float16 folder and verify every sha256.

    The chunks are read from ``chunks_dir``, by default where the manifest says (relative to
    ``folder``).
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise MissingInput(f"{folder / MANIFEST}: cannot read the transport manifest ({err}); "
                           "give the folder of a float16 transport copy") from None
    target = folder / manifest["weights"]
    where = Path(chunks_dir) if chunks_dir is not None else folder / manifest.get("chunks_dir", ".")
    if target.is_file() and target.stat().st_size == manifest["bytes"] and \
            file_sha256(target) == manifest["sha256"]:
        return target
    missing = [c["file"] for c in manifest["chunks"] if not (where / c["file"]).is_file()]
    if missing or not manifest["chunks"]:
        raise MissingInput(f"{where}: chunk(s) missing: {', '.join(missing) or 'none listed'}; "
                           "copy every model.safetensors.NNN file into that folder")
    digest = hashlib.sha256()
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as out, progress(total=manifest["bytes"], desc="joining", unit="B",
                                          unit_scale=True) as bar:
        for chunk in manifest["chunks"]:
            block = (where / chunk["file"]).read_bytes()
            if hashlib.sha256(block).hexdigest() != chunk["sha256"]:
                tmp.unlink()
                raise CorruptInput(f"{where / chunk['file']}: sha256 differs from the manifest "
                                   "(damaged in transfer); copy that chunk again")
            out.write(block)
            digest.update(block)
            bar.update(len(block))
    if digest.hexdigest() != manifest["sha256"]:
        tmp.unlink()
        raise CorruptInput(f"{target}: joined sha256 {digest.hexdigest()[:12]}... differs from the "
                           f"manifest's {manifest['sha256'][:12]}...; export the copy again")
    os.replace(tmp, target)
    if remove_chunks:
        for chunk in manifest["chunks"]:
            (where / chunk["file"]).unlink()
    return target


def describe(out, manifest: dict) -> str:
    """One line per file written: the weights (or chunks) with sizes and sha256."""
    lines = [f"{out}: float16 copy of {manifest['encoder']['name']} "
             f"({manifest['bytes'] / 1e6:.1f} MB, sha256 {manifest['sha256']})"]
    chunks = Path(out) / manifest["chunks_dir"]
    lines += [f"  {os.path.normpath(chunks / c['file'])}  {c['bytes'] / 1e6:.1f} MB  "
              f"sha256 {c['sha256']}"
              for c in manifest["chunks"]]
    return "\n".join(lines)
