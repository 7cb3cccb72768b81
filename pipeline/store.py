"""The artefact store: where artefacts live, what they were made from, and when one may be reused.

Layout (``<artifacts>`` is the store's root)::

    features/<dataset key>/<view>-<fp12>.h5     one file per view and recipe (pipeline/features.py)
    features/<dataset key>/manifest.json        {"dataset", "key", "views": {view: entry}}
    graphs/<dataset key>/<relation>-<source>-<fp12>.h5
    graphs/<dataset key>/manifest.json          {"dataset", "key", "graphs": {name: entry}}
    cache/sha256.json                           path -> [size, mtime_ns, sha256] of image files

The dataset key is ``<folder name>-<sha256 of the ordered item ids, 12 hex>``: two datasets with
the same folder name but other items never share a folder, and the name only helps a reader.
An artefact's fingerprint is made from the content of what it was made from, never from a name.

Every artefact records its inputs in the ``inputs`` attribute, ``{name: {"sha256": ..., ...}}``:

- data inputs: ``train.txt`` / ``valid.txt`` / ``test.txt`` / ``pool.txt`` (the split's item ids
  and tokens; ``pool.txt`` only for a dataset with a pool split),
  ``captions`` (each item's caption; ``path`` records the file), ``images`` (each item's image
  bytes; ``path`` records the folder);
- upstream artefacts: ``features:<view>`` (the fingerprint of the feature file read).

``check_inputs`` compares them with the current content and raises ``StaleArtifact`` naming the
input that changed and the stage to run again. ``reusable`` is the one reuse rule; ``read_attrs`` /
``write_attrs`` the one HDF5 attribute codec; ``update_manifest`` the one manifest writer (it merges).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from .artifacts import file_sha256, fingerprint, ids_fingerprint, write_json
from .data import image_text_source, locate_images, read_captions
from .errors import CacheMismatch, MissingInput, StaleArtifact  # noqa: F401 (StaleArtifact: re-exported)

JSON_KEYS = "json_attrs"               # the attribute naming the attributes stored as JSON
LEGACY_JSON = ("encoder", "config", "environment", "inputs", "pool_unknown", "notes")
SPLIT_FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt",
               "pool": "pool.txt"}     # pool: recorded only for a dataset that has one
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


# ---- HDF5 attributes ---------------------------------------------------------------------------

def write_attrs(node, attrs: dict) -> None:
    """Store ``attrs`` on an h5py file or dataset; dicts and lists go in as JSON."""
    as_json = sorted(k for k, v in attrs.items() if isinstance(v, (dict, list, tuple)))
    for key, value in attrs.items():
        node.attrs[key] = json.dumps(value, sort_keys=True, default=str) if key in as_json \
            else value
    if as_json:
        node.attrs[JSON_KEYS] = json.dumps(sorted(set(as_json) | set(_json_keys(node.attrs))))


def _json_keys(attrs) -> list[str]:
    raw = attrs.get(JSON_KEYS)
    if raw is None:
        return []
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def decode_attrs(attrs) -> dict:
    """The attributes of an open h5py object as plain Python values (JSON ones decoded)."""
    keys = set(_json_keys(attrs)) | set(LEGACY_JSON)
    out = {}
    for key, value in attrs.items():
        if key == JSON_KEYS:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key in keys and isinstance(value, str):
            value = json.loads(value)
        out[key] = value
    return out


def read_attrs(path) -> dict:
    """The root attributes of an HDF5 file (``CacheMismatch`` for an unreadable file)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return decode_attrs(h5.attrs)
    except OSError as err:
        raise CacheMismatch(f"unreadable HDF5 file ({str(err).splitlines()[0]})", path=path,
                            setting="overwrite") from None


# ---- the reuse rule ----------------------------------------------------------------------------

def reusable(path, fp: str, overwrite: bool, *, stage: str, item_ids=None) -> bool:
    """True when ``path`` is a complete artefact with fingerprint ``fp`` (and, when given, these
    item ids): reuse it. False when there is nothing to reuse (``overwrite`` removes the file and
    its ``.tmp``). ``CacheMismatch`` when another artefact sits at that name."""
    import h5py

    path = Path(path)
    if overwrite:
        for old in (path, path.with_name(path.name + ".tmp")):
            old.unlink(missing_ok=True)
        return False
    if not path.exists():
        return False
    attrs = read_attrs(path)
    got = str(attrs.get("fingerprint", ""))
    if got != fp:
        raise CacheMismatch(f"made by another configuration (fingerprint {got[:12] or '-'}, "
                            f"expected {fp[:12]})", path=path, stage=stage, setting="overwrite")
    if item_ids is not None:
        with h5py.File(path, "r") as h5:
            ids = list(h5["item_id"].asstr()[()]) if "item_id" in h5 else None
        if ids != list(item_ids):
            raise CacheMismatch(f"its item ids differ from the dataset's ({len(ids or [])} vs "
                                f"{len(item_ids)} rows)", path=path, stage=stage,
                                setting="overwrite")
    if not attrs.get("complete"):
        raise CacheMismatch("not marked complete", path=path, stage=stage, setting="overwrite")
    return True


# ---- manifests ---------------------------------------------------------------------------------

def update_manifest(path, section: str, entries: dict, **meta) -> Path:
    """Merge ``entries`` into ``section`` of the manifest at ``path`` (other entries are kept)."""
    path = Path(path)
    current = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text())
        except ValueError:
            current = {}
    merged = dict(current.get(section) or {})
    merged.update(entries)
    write_json(path, {**current, **meta, section: dict(sorted(merged.items()))})
    return path


def manifest_entries(path, section: str, stage: str) -> dict:
    """``name -> entry`` of a manifest section (``MissingInput`` when there is no manifest)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"no {section} recorded for this dataset", path=path, rerun=stage)
    try:
        entries = json.loads(path.read_text())[section]
        return {name: entry if isinstance(entry, dict) else {"file": entry}
                for name, entry in entries.items()}
    except (ValueError, KeyError, TypeError) as err:
        raise CacheMismatch(f"malformed manifest ({err})", path=path, rerun=stage) from None


# ---- dataset identity and input fingerprints ---------------------------------------------------

def dataset_key(dataset) -> str:
    """The dataset's folder in the store: its name (for readers) and a hash of its item ids."""
    name = _UNSAFE.sub("_", dataset.name).strip("._") or "dataset"
    return f"{name}-{ids_fingerprint(dataset.item_ids())[:12]}"


class DigestCache:
    """sha256 of files, remembered by (resolved path, size, mtime) in ``cache/sha256.json``."""

    def __init__(self, artifacts=None):
        self.path = None if artifacts is None else Path(artifacts, "cache", "sha256.json")
        self.known: dict[str, list] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                self.known = json.loads(self.path.read_text())
            except ValueError:
                self.known = {}

    def sha256(self, path) -> str:
        real = os.path.realpath(path)
        stat = os.stat(real)
        entry = self.known.get(real)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        sha = file_sha256(real)
        self.known[real] = [stat.st_size, stat.st_mtime_ns, sha]
        self.changed = True
        return sha

    def save(self) -> None:
        if self.path is not None and self.changed:
            write_json(self.path, self.known)
            self.changed = False


def split_sha(tweets) -> str:
    """What the text of a split is: its item ids and tokens, in order (tags left out)."""
    return fingerprint([[t.item_id, list(t.tokens)] for t in tweets])


def captions_sha(captions: dict, item_ids) -> str:
    return fingerprint([[i, captions.get(i)] for i in item_ids])


def images_sha(images: dict, item_ids, digests: DigestCache) -> str:
    """Each item's image bytes (sha256), in item order; missing images count as ``None``."""
    rows = [[i, digests.sha256(images[i]) if i in images else None] for i in item_ids]
    digests.save()
    return fingerprint(rows)


def data_inputs(dataset, names, *, captions_path=None, image_dir=None, digests=None) -> dict:
    """``{name: {"sha256", "path"?}}`` of the named data inputs of ``dataset`` (see the module
    docstring); ``captions`` and ``images`` use the dataset's loaded captions and image files."""
    ids, out = dataset.item_ids(), {}
    for split, file in SPLIT_FILES.items():
        if file in names and split in dataset.splits:
            out[file] = {"sha256": split_sha(dataset.splits[split])}
    if "captions" in names and dataset.captions is not None:
        out["captions"] = {"sha256": captions_sha(dataset.captions, ids),
                           "path": _resolved(captions_path),
                           "source": image_text_source(captions_path) if captions_path else None}
    if "images" in names and dataset.images is not None:
        out["images"] = {"sha256": images_sha(dataset.images, ids, digests or DigestCache()),
                         "path": _resolved(image_dir)}
    return out


def _resolved(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


def text_inputs(dataset) -> dict:
    """The split files' entries (every view of the tweets depends on all three)."""
    return data_inputs(dataset, tuple(SPLIT_FILES.values()))


class CurrentInputs:
    """The current fingerprint of a recorded data input, computed once per name.

    ``captions`` and ``images`` are re-read from the recorded path when the dataset was loaded
    without them (build-graphs and train load the splits only)."""

    def __init__(self, dataset, artifacts=None):
        self.dataset, self.digests = dataset, DigestCache(artifacts)
        self.known: dict[str, str | None] = {}

    def sha256(self, name: str, entry: dict) -> str | None:
        key = f"{name}\0{entry.get('path')}"
        if key not in self.known:
            self.known[key] = self._compute(name, entry)
        return self.known[key]

    def _compute(self, name: str, entry: dict) -> str | None:
        ids = self.dataset.item_ids()
        split = next((s for s, f in SPLIT_FILES.items() if f == name), None)
        if split is not None:
            return split_sha(self.dataset.splits[split]) if split in self.dataset.splits else None
        path = entry.get("path")
        if name == "captions":
            captions = self.dataset.captions
            if captions is None:
                if not path or not Path(path).is_file():
                    return None
                captions = read_captions(path)
            return captions_sha(captions, ids)
        if name == "images":
            images = self.dataset.images
            if images is None:
                if not path or not Path(path).is_dir():
                    return None
                images, _ = locate_images(path, ids)
            return images_sha(images, ids, self.digests)
        return entry.get("sha256")         # an input this reader does not know: trust it


def check_inputs(recorded: dict, current: CurrentInputs, *, path, stage: str, rerun: str,
                 upstream: dict | None = None) -> None:
    """Refuse an artefact whose recorded inputs differ from the current content.

    ``upstream`` maps ``features:<view>`` to the fingerprint of the feature file in use now;
    recorded artefact inputs missing from it are not checked. ``StaleArtifact.input`` names the
    first changed input; ``rerun`` is the stage to run again (``build-graphs`` when only an
    upstream artefact changed)."""
    entries = [(name, entry) for name, entry in sorted((recorded or {}).items())
               if isinstance(entry, dict)]
    for name, entry in sorted(entries, key=lambda item: ":" in item[0]):     # data inputs first
        if ":" in name:
            now = (upstream or {}).get(name)
            if now is not None and now != entry.get("sha256", entry.get("fingerprint")):
                raise StaleArtifact(f"made from other {name.replace(':', ' ')} than the current "
                                    "ones", input=name, path=path, stage=stage,
                                    rerun=_upstream_stage(name))
            continue
        now = current.sha256(name, entry)
        if now is None:
            raise StaleArtifact(f"made from {name}{_at(entry)}, which is gone", input=name,
                                path=path, stage=stage, rerun=rerun)
        if now != entry.get("sha256"):
            raise StaleArtifact(f"{name}{_at(entry)} changed since this artefact was made",
                                input=name, path=path, stage=stage, rerun=rerun)


def _upstream_stage(name: str) -> str:
    return {"features": "build-graphs", "graph": "train"}.get(name.split(":")[0], "extract")


def _at(entry: dict) -> str:
    return f" ({entry['path']})" if entry.get("path") else ""


def inputs_digest(inputs: dict) -> str:
    """One sha256 for a set of recorded inputs (what a fingerprint includes)."""
    return hashlib.sha256(json.dumps({k: v.get("sha256") if isinstance(v, dict) else v
                                      for k, v in sorted(inputs.items())},
                                     sort_keys=True).encode()).hexdigest()
