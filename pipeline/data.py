"""Reading TWITTER-2015/2017 in the UMT CoNLL format, captions, and locating images.

One dataset is one table keyed by ``item_id`` (the tweet's IMGID, unique across splits). Every
reader either returns all the data of a file or raises ``DataFormatError`` naming the file, the line
and the fix: no tweet is ever dropped silently.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataFormatError, MissingInput, UnsafeItemId
from .labels import ALIASES, TypeNames, parse_tag

SPLITS = ("train", "valid", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".JPG", ".JPEG", ".PNG")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Tweet:
    """One example: tokens, internal BIO tags (MISC for OTHER), and where it came from."""

    item_id: str
    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    split: str = ""
    line: int = 0


@dataclass
class Dataset:
    """All splits of one dataset, plus the optional image views (captions, image files)."""

    name: str
    root: Path
    splits: dict[str, list[Tweet]]
    type_names: TypeNames = field(default_factory=TypeNames)
    captions: dict[str, str] | None = None
    images: dict[str, Path] | None = None

    def tweets(self, split: str | None = None) -> list[Tweet]:
        if split is not None:
            return self.splits[split]
        return [t for name in SPLITS if name in self.splits for t in self.splits[name]]

    def item_ids(self, split: str | None = None) -> list[str]:
        return [t.item_id for t in self.tweets(split)]


def check_item_id(item_id: str, where: str = "") -> str:
    """Refuse ids that are paths (``../x``, ``/etc/passwd``, ``a/b``): an IMGID is a file name."""
    if not _SAFE_ID.match(item_id) or item_id in (".", ".."):
        prefix = f"{where}: " if where else ""
        raise UnsafeItemId(
            f"{prefix}IMGID {item_id!r} is not a plain name (letters, digits, '_', '-', '.'; "
            "no '/' or leading '.'); fix the IMGID line")
    return item_id


def read_lines(path: Path) -> list[str]:
    """The file's lines without line endings; a clear error for a missing, empty or non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: file not found; check --data-dir")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataFormatError(path, line, f"byte 0x{raw[err.start]:02x} is not valid UTF-8; "
                              "re-encode the file as UTF-8") from None
    if not text.strip():
        raise DataFormatError(path, None, "file is empty; expected IMGID:<id> lines followed by "
                              "token<TAB>tag lines")
    return text.lstrip("\ufeff").split("\n")


def read_umt(path, split: str = "") -> list[Tweet]:
    """Read one UMT CoNLL file: ``IMGID:<id>``, then ``token<TAB>tag`` lines, blank between tweets.

    Handles a missing final blank line, tokens that are whitespace (U+00A0: only the tab
    separates), CRLF endings, and keeps orphan ``I-`` tags as they are. Tags are returned with the
    internal type names (OTHER -> MISC).
    """
    path = Path(path)
    tweets: list[Tweet] = []
    seen: dict[str, int] = {}
    current: tuple[str, int] | None = None
    tokens: list[str] = []
    tags: list[str] = []

    def close(lineno: int) -> None:
        if current is None:
            return
        if not tokens:
            raise DataFormatError(path, current[1], f"IMGID {current[0]} has no token lines; "
                                  "remove the IMGID line or add its tokens")
        tweets.append(Tweet(current[0], tuple(tokens), tuple(tags), split, current[1]))

    for lineno, line in enumerate(read_lines(path), start=1):
        line = line.rstrip("\r")
        if line.startswith("IMGID:"):
            close(lineno)
            item_id = check_item_id(line[6:].strip(), f"{path}:{lineno}")
            if item_id in seen:
                raise DataFormatError(path, lineno, f"duplicate IMGID {item_id} (first at line "
                                      f"{seen[item_id]}); each tweet of a split needs its own IMGID")
            seen[item_id] = lineno
            current, tokens, tags = (item_id, lineno), [], []
        elif line.strip(" ") == "":  # only ASCII blanks: a U+00A0 token line is data
            close(lineno)
            current = None
        else:
            if current is None:
                raise DataFormatError(path, lineno, f"token line {line[:40]!r} before any IMGID "
                                      "line; every tweet starts with IMGID:<id>")
            token, sep, tag = line.rpartition("\t")
            if not sep:
                raise DataFormatError(path, lineno, f"no tab in {line[:40]!r}; expected "
                                      "token<TAB>tag")
            if token == "":
                raise DataFormatError(path, lineno, f"empty token before tag {tag!r}; expected "
                                      "token<TAB>tag")
            parsed = parse_tag(tag.strip())
            if isinstance(parsed, str):
                raise DataFormatError(path, lineno, parsed)
            prefix, etype = parsed
            tokens.append(token)
            tags.append("O" if prefix == "O" else f"{prefix}-{etype}")
    close(0)
    if not tweets:
        raise DataFormatError(path, None, "no IMGID:<id> line found; is this a UMT CoNLL file?")
    return tweets


def dataset_type_names(paths) -> TypeNames:
    """``OTHER`` if the files spell the fourth type that way, else ``MISC``; both at once is an error."""
    first: tuple[str, Path, int] | None = None
    for path in paths:
        for lineno, line in enumerate(read_lines(path), start=1):
            if "\t" not in line:
                continue
            for name in ("MISC", *ALIASES):
                if not line.rstrip("\r ").endswith(f"-{name}"):
                    continue
                if first is None:
                    first = (name, path, lineno)
                elif first[0] != name:
                    raise DataFormatError(path, lineno, f"the fourth entity type is spelled {name} "
                                          f"here but {first[0]} at {first[1]}:{first[2]}; use one name")
    return TypeNames(misc=first[0] if first else "MISC")


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


def load_dataset(data_dir, captions=None, image_dir=None, splits=SPLITS) -> Dataset:
    """Read ``train.txt``/``valid.txt``/``test.txt`` of ``data_dir`` and the optional image views."""
    root = Path(data_dir)
    if not root.is_dir():
        raise MissingInput(f"{root}: data directory not found; pass --data-dir with a folder "
                           "holding train.txt, valid.txt and test.txt")
    paths = [root / f"{name}.txt" for name in splits]
    for path in paths:
        if not path.is_file():
            raise MissingInput(f"{path}: file not found; --data-dir must hold "
                               + ", ".join(f"{s}.txt" for s in splits))
    tables = {name: read_umt(path, name) for name, path in zip(splits, paths)}
    owner: dict[str, str] = {}
    for name, tweets in tables.items():
        for tweet in tweets:
            if tweet.item_id in owner:
                raise DataFormatError(root / f"{name}.txt", tweet.line,
                                      f"IMGID {tweet.item_id} is also in {owner[tweet.item_id]}.txt; "
                                      "an item must belong to one split")
            owner[tweet.item_id] = name
    dataset = Dataset(root.resolve().name, root, tables, dataset_type_names(paths))
    if captions is not None:
        dataset.captions = read_captions(captions)
    if image_dir is not None:
        dataset.images, _ = locate_images(image_dir, dataset.item_ids())
    return dataset
