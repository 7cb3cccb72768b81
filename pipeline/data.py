"""One dataset: its splits (UMT CoNLL or JSON lines), its label set, captions and images.

One dataset is one table keyed by ``item_id`` (the tweet's IMGID, unique across splits). The split
files are ``train``/``valid``/``test`` with ``.txt`` (UMT CoNLL) or ``.jsonl`` (JSON lines; both
formats are described in ``formats``); a folder holding both is refused. The entity types are read
from the training split (``labels.LabelSet``).

An optional fourth file, ``pool`` (same format), holds unlabelled text-image pairs that are
neighbour candidates only: extracted like every item and searched by build-graphs, but never
queries, never trained on, scored or tagged. Its tags are optional and never read: a JSON lines
pool may leave out ``tags`` (in every example or none), a UMT pool may give the token alone on a
line (no tab; every line or none) or ``token<TAB>anything``. Its types never enter the label set.

Every reader either returns all the data of a file or raises ``DataFormatError`` naming the file,
the line and the fix: no tweet is ever dropped silently.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataFormatError, MissingInput, UnsafeItemId
from .formats import (IgnoredTags, Tweet, check_item_id, check_types, read_jsonl, read_lines,
                      read_umt)
from .labels import LabelSet, TagReader

SPLITS = ("train", "valid", "test")     # the labelled splits: queries, trained on, scored
POOL = "pool"                           # the optional unlabelled split: neighbour candidates only
ALL_SPLITS = (*SPLITS, POOL)
FORMATS = {"umt": ".txt", "jsonl": ".jsonl"}  # split file extension of each format
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".JPG", ".JPEG", ".PNG")


@dataclass
class Dataset:
    """All splits of one dataset (``pool`` among them when it has one: ``labelled_splits`` leaves
    it out), its label set, plus the optional image views (captions, image files)."""

    name: str
    root: Path
    splits: dict[str, list[Tweet]]
    labels: LabelSet = field(default_factory=LabelSet)
    captions: dict[str, str] | None = None
    images: dict[str, Path] | None = None
    format: str = "umt"

    @property
    def type_names(self) -> LabelSet:
        """The label set under its old name (callers that only map type names)."""
        return self.labels

    def tweets(self, split: str | None = None) -> list[Tweet]:
        """The tweets of ``split``, or of every split (the pool last): every item extract sees."""
        if split is not None:
            return self.splits[split]
        return [t for name in ALL_SPLITS if name in self.splits for t in self.splits[name]]

    def item_ids(self, split: str | None = None) -> list[str]:
        return [t.item_id for t in self.tweets(split)]

    def labelled_splits(self) -> dict[str, list[Tweet]]:
        """The labelled splits (all but the pool): the items that are tagged, trained on or
        scored, and the queries of the neighbour graphs."""
        return {name: tweets for name, tweets in self.splits.items() if name != POOL}

    def query_ids(self) -> list[str]:
        """The ids of the labelled splits' items (``item_ids()`` without the pool's): the
        queries of the neighbour graphs and the rows of the trainer's per-item arrays."""
        return [t.item_id for name in SPLITS if name in self.splits for t in self.splits[name]]


def caption_item_id(name: str, path, lineno: int | None) -> str:
    """The item id of an image file name in a captions file (``123.jpg`` -> ``123``); a name with
    a folder part (``../x/123.jpg``) is refused, never cut to its stem."""
    name = name.strip()
    if "/" in name or "\\" in name:
        raise DataFormatError(path, lineno, f"image name {name[:60]!r} has a folder part; "
                              "captions name image files (<id>.jpg)", value=name)
    stem, dot, ext = name.rpartition(".")
    item_id = stem if dot and f".{ext}" in IMAGE_EXTENSIONS else name
    return check_item_id(item_id, f"{path}:{lineno}" if lineno else str(path))


JSON_TEXT_KEYS = ("description", "caption", "text")     # JSON lines: the image text's key


def image_text_source(path) -> str:
    """The name of an image-text source: its file name without ``.gz`` and the format suffix
    (``BLIP2_17``, ``catr-captions``, ``deqa-gpt4-descriptions``)."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".txt"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def _json_text(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataFormatError(path, None, "not valid UTF-8; re-encode the file as UTF-8") from None


def _read_json_captions(path: Path) -> dict[str, str]:
    """``{"<id>.jpg": "text", ...}`` (CATR) or JSON lines ``{"image_name": "<id>.jpg",
    "description": "..."}`` (DEQA / GPT-4; ``caption`` or ``text`` also name the text)."""
    text, captions = _json_text(path), {}
    if ".jsonl" not in path.name:
        try:
            table = json.loads(text)
        except ValueError as err:
            raise DataFormatError(path, getattr(err, "lineno", None), f"not JSON ({err})") from None
        if not isinstance(table, dict):
            raise DataFormatError(path, None, 'expected one object {"<id>.jpg": "text", ...}')
        rows = [(None, name, value) for name, value in table.items()]
    else:
        rows = []
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = next(k for k in JSON_TEXT_KEYS if k in record)
                rows.append((lineno, record["image_name"], record[key]))
            except (ValueError, KeyError, StopIteration, TypeError):
                raise DataFormatError(path, lineno, 'expected {"image_name": "<id>.jpg", '
                                      '"description": "..."}') from None
    for lineno, name, value in rows:
        if not isinstance(name, str) or not isinstance(value, str):
            raise DataFormatError(path, lineno, f"image name and text must be strings: {name!r}")
        item_id = caption_item_id(name, path, lineno)
        if item_id in captions:
            raise DataFormatError(path, lineno, f"second text for {name}; keep one per image")
        captions[item_id] = value.strip()
    return captions


def read_captions(path) -> dict[str, str]:
    """Image text by item id: ``<id>.jpg :<caption>`` lines (``.txt``), or JSON (``.json`` /
    ``.json.gz``, CATR) or JSON lines (``.jsonl`` / ``.jsonl.gz``, DEQA). Empty texts are kept as
    ``""`` (reported, not lost)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput("captions file not found", path=path, setting="captions")
    if ".json" in path.name:
        return _read_json_captions(path)
    captions: dict[str, str] = {}
    for lineno, line in enumerate(read_lines(path), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        name, sep, caption = line.partition(" :")
        if not sep:
            raise DataFormatError(path, lineno, f"no ' :' in {line[:40]!r}; expected "
                                  "'<id>.jpg :<caption>'")
        item_id = caption_item_id(name, path, lineno)
        if item_id in captions:
            raise DataFormatError(path, lineno, f"second caption for {name.strip()}; keep one line "
                                  "per image")
        captions[item_id] = caption.strip()
    return captions


def image_path(image_dir, item_id: str) -> Path | None:
    """The image file of ``item_id`` in ``image_dir`` (``.jpg`` first, other extensions too)."""
    check_item_id(item_id)
    root = os.path.normpath(os.path.abspath(image_dir))
    real_root = os.path.realpath(root)
    for ext in IMAGE_EXTENSIONS:
        candidate = os.path.normpath(os.path.join(root, item_id + ext))
        if os.path.dirname(candidate) != root:
            raise UnsafeItemId(f"IMGID {item_id!r} resolves outside {image_dir}", value=item_id)
        real = os.path.realpath(candidate)       # a symbolic link is judged by where it points
        if os.path.commonpath([real, real_root]) != real_root:
            raise UnsafeItemId(f"the image of {item_id} is a link to {real}, outside the image "
                               "folder", path=candidate, value=item_id,
                               hint="copy the image into the folder or remove the link")
        if os.path.isfile(real):
            return Path(candidate)
    return None


def locate_images(image_dir, item_ids) -> tuple[dict[str, Path], list[str]]:
    """Map ids to image files; also return the ids whose image is missing (in input order)."""
    if not Path(image_dir).is_dir():
        raise MissingInput("image directory not found", path=image_dir, setting="image_dir")
    found, missing = {}, []
    for item_id in item_ids:
        path = image_path(image_dir, item_id)
        if path is None:
            missing.append(item_id)
        else:
            found[item_id] = path
    return found, missing


def default_captions(data_dir) -> Path | None:
    """The single image-text file under ``<data_dir>/image_captions/`` (``.txt``, ``.json``,
    ``.jsonl``, optionally gzipped), if there is exactly one."""
    folder = Path(data_dir, "image_captions")
    files = sorted(p for pattern in ("*.txt", "*.json", "*.json.gz", "*.jsonl", "*.jsonl.gz")
                   for p in folder.glob(pattern))
    return files[0] if len(files) == 1 else None


def default_image_dir(data_dir) -> Path | None:
    """``<data_dir>/images`` when it exists."""
    path = Path(data_dir, "images")
    return path if path.is_dir() else None


def split_files(root: Path, splits=SPLITS) -> tuple[str, list[Path]]:
    """The format (``umt`` or ``jsonl``) of the dataset in ``root`` and its split files (the
    optional pool file is ``pool_file``'s)."""
    found = {fmt: [root / f"{s}{ext}" for s in (*splits, POOL) if (root / f"{s}{ext}").is_file()]
             for fmt, ext in FORMATS.items()}
    if found["umt"] and found["jsonl"]:
        names = ", ".join(p.name for p in found["umt"] + found["jsonl"])
        raise DataFormatError(root, None, f"the folder holds split files in two formats ({names})",
                              hint="keep either the .txt (UMT) or the .jsonl files")
    fmt = "jsonl" if found["jsonl"] else "umt"
    for name in splits:
        path = root / f"{name}{FORMATS[fmt]}"
        if not path.is_file():
            expected = ", ".join(f"{s}{FORMATS[fmt]}" for s in splits)
            raise MissingInput(f"file not found; the data folder must hold {expected}",
                               path=path, setting="data_dir")
    return fmt, [root / f"{name}{FORMATS[fmt]}" for name in splits]


def pool_file(root: Path, fmt: str) -> Path | None:
    """The optional pool split file of the folder (in the folder's format), if there is one."""
    path = Path(root, f"{POOL}{FORMATS[fmt]}")
    return path if path.is_file() else None


def read_pool_split(path: Path, fmt: str) -> list[Tweet]:
    """The pool's tweets, tags left out: a JSON lines pool may omit ``tags``, a UMT pool may give
    tokens alone (every line or none); tags that are given are not read (``IgnoredTags``)."""
    if fmt == "jsonl":
        tweets = read_jsonl(path, POOL, IgnoredTags(), require_tags=False, require_ids=True)
    else:
        tweets = read_umt(path, POOL, IgnoredTags(), require_tags=False)
    return [dataclasses.replace(t, tags=()) for t in tweets]


def image_refs(tweets) -> dict[str, str]:
    """Item id -> the id its image and caption are filed under (the JSON lines ``image`` field
    without its extension, else the item id)."""
    refs = {}
    for tweet in tweets:
        ref = tweet.image or tweet.item_id
        stem, ext = os.path.splitext(ref)
        refs[tweet.item_id] = stem if ext in IMAGE_EXTENSIONS else ref
    return refs


def load_dataset(data_dir, captions=None, image_dir=None, splits=SPLITS) -> Dataset:
    """Read the splits of ``data_dir`` (``.txt`` UMT or ``.jsonl``) and its pool split when there
    is one, the label set (the types of the training split) and the optional image views."""
    root = Path(data_dir)
    if not root.is_dir():
        raise MissingInput("data directory not found", path=root, setting="data_dir",
                           hint="give a folder holding train, valid and test split files")
    fmt, files = split_files(root, splits)
    paths = dict(zip(splits, files))
    read, reader = (read_jsonl if fmt == "jsonl" else read_umt), TagReader()
    tables = {name: read(path, name, reader) for name, path in paths.items()}
    pool = pool_file(root, fmt)
    if pool is not None:                # unlabelled: its own reader, nothing enters ``reader``
        paths[POOL], tables[POOL] = pool, read_pool_split(pool, fmt)
    owner: dict[str, str] = {}
    for name, tweets in tables.items():
        for tweet in tweets:
            if tweet.item_id in owner:
                raise DataFormatError(paths[name], tweet.line,
                                      f"{'IMGID' if fmt == 'umt' else 'id'} {tweet.item_id} is "
                                      f"also in "
                                      f"{paths[owner[tweet.item_id]].name}; an item must belong "
                                      "to one split", value=tweet.item_id)
            owner[tweet.item_id] = name
    source = tables["train"] if "train" in tables else [t for ts in tables.values() for t in ts]
    labels = reader.label_set(t.tags for t in source)
    for name in [n for n in tables if n not in ("train", POOL)]:  # no type it cannot predict
        check_types(tables[name], paths[name], labels)
    dataset = Dataset(root.resolve().name, root, tables, labels, format=fmt)
    refs = image_refs(dataset.tweets())
    renamed = any(ref != item_id for item_id, ref in refs.items())
    if captions is not None:
        found = read_captions(captions)
        dataset.captions = ({i: found[r] for i, r in refs.items() if r in found} if renamed
                            else found)
    if image_dir is not None:
        found, _ = locate_images(image_dir, dict.fromkeys(refs.values()))
        dataset.images = {i: found[r] for i, r in refs.items() if r in found}
    return dataset
