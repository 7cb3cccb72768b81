"""The text formats a split or a file to tag can come in: UMT CoNLL, JSON lines, plain text.

- **UMT CoNLL** (the benchmarks'): ``IMGID:<id>``, then one ``token<TAB>tag`` line per token, a
  blank line between tweets.
- **JSON lines**: one example per line, a JSON object with the fields

  - ``id`` (string or integer): the item id, unique in the dataset; a plain name (letters, digits,
    ``_ - .``, no ``/``);
  - ``tokens`` (list of strings, not empty);
  - ``tags`` (list of strings, one per token): BIO (or IOBES / BILOU) tags with any type names;
    required in a dataset's labelled splits, optional in its pool split and in a file to tag
    (then all examples or none);
  - ``image`` (string, optional): the image's file name (``abc.jpg``) or id (``abc``) in the image
    folder; the item id when absent (the UMT convention).

  Blank lines are skipped; any other field is an error (a misspelt ``tag`` must not pass as an
  untagged example).
  Example: ``{"id": "7", "tokens": ["Messi", "joins", "Inter"], "tags": ["B-PER", "O", "B-ORG"],
  "image": "7.jpg"}``
- **Plain text** (files to tag only): one tweet per line, tokens separated by whitespace. The text
  must already be tokenised the way the training data was (the benchmarks split punctuation,
  hashtags and mentions into tokens of their own: ``Obama , #Paris !``); the example of line ``n``
  gets the id ``line-<n>``.

Every reader returns every example of the file or raises ``DataFormatError`` naming file, line and
field: nothing is dropped silently. Tags come back as internal BIO tags (``labels.TagReader``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataFormatError, MissingInput, UnsafeItemId
from .labels import LabelSet, TagReader

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
JSONL_FIELDS = ("id", "tokens", "tags", "image")


@dataclass(frozen=True)
class Tweet:
    """One example: tokens, internal BIO tags (``()`` when untagged), and where it came from.

    ``image`` is the JSON lines ``image`` reference when given (the item id names the image
    otherwise).
    """

    item_id: str
    tokens: tuple[str, ...]
    tags: tuple[str, ...] = ()
    split: str = ""
    line: int = 0
    image: str | None = None


class IgnoredTags:
    """The tag reader of a file whose tags are never used (a dataset's pool split): every tag
    reads as ``O``, unchecked, and leaves no trace in the dataset's scheme or spelling."""

    def read(self, tag: str, path, line: int) -> str:
        return "O"


def check_item_id(item_id: str, where: str = "") -> str:
    """Refuse ids that are paths (``../x``, ``/etc/passwd``, ``a/b``): an IMGID is a file name."""
    if not _SAFE_ID.match(item_id) or item_id in (".", ".."):
        prefix = f"{where}: " if where else ""
        raise UnsafeItemId(
            f"{prefix}IMGID {item_id!r} is not a plain name (letters, digits, '_', '-', '.'; "
            "no '/' or leading '.'); fix the IMGID line", value=item_id)
    return item_id


def read_lines(path: Path) -> list[str]:
    """The file's lines without line endings; a clear error for a missing, empty, non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput("file not found", path=path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataFormatError(path, line, f"byte 0x{raw[err.start]:02x} is not valid UTF-8; "
                              "re-encode the file as UTF-8") from None
    if not text.strip():
        raise DataFormatError(path, None, "file is empty; expected IMGID:<id> lines followed by "
                              "token<TAB>tag lines" if path.suffix == ".txt" else "file is empty")
    return text.lstrip("\ufeff").split("\n")


def read_umt(path, split: str = "", reader: TagReader | None = None,
             require_tags: bool = True) -> list[Tweet]:
    """Read one UMT CoNLL file: ``IMGID:<id>``, then ``token<TAB>tag`` lines, blank between tweets.

    Handles a missing final blank line, tokens that are whitespace (U+00A0: only the tab
    separates), CRLF endings, and keeps orphan ``I-`` tags as they are. Tags are returned as
    internal BIO tags (``reader``: one ``TagReader`` shared by the files of a dataset). With
    ``require_tags=False`` token lines may hold the token alone (no tab), in every tweet or none.
    """
    path, reader = Path(path), reader or TagReader()
    tweets: list[Tweet] = []
    seen: dict[str, int] = {}
    current: tuple[str, int] | None = None
    tokens, tags = [], []
    marks = {True: 0, False: 0}  # first line with a tag, first without

    def close() -> None:
        if current is None:
            return
        if not tokens:
            raise DataFormatError(path, current[1], f"IMGID {current[0]} has no token lines; "
                                  "remove the IMGID line or add its tokens")
        tweets.append(Tweet(current[0], tuple(tokens), tuple(tags), split, current[1]))

    for lineno, line in enumerate(read_lines(path), start=1):
        line = line.rstrip("\r")
        if line.startswith("IMGID:"):
            close()
            item_id = check_item_id(line[6:].strip(), f"{path}:{lineno}")
            if item_id in seen:
                raise DataFormatError(path, lineno, f"duplicate IMGID {item_id} (first at line "
                                      f"{seen[item_id]}); each tweet of a split needs its own "
                                      "IMGID")
            seen[item_id] = lineno
            current, tokens, tags = (item_id, lineno), [], []
        elif line.strip(" ") == "":  # only ASCII blanks: a U+00A0 token line is data
            close()
            current = None
        else:
            if current is None:
                raise DataFormatError(path, lineno, f"token line {line[:40]!r} before any IMGID "
                                      "line; every tweet starts with IMGID:<id>")
            token, tag = _token_line(path, lineno, line, require_tags)
            tokens.append(token)
            if tag is not None:
                tags.append(reader.read(tag, path, lineno))
            marks[tag is not None] = marks[tag is not None] or lineno
            if all(marks.values()):
                raise DataFormatError(path, lineno, f"line {marks[True]} has a tag but line "
                                      f"{marks[False]} has none; tag every token or none")
    close()
    if not tweets:
        raise DataFormatError(path, None, "no IMGID:<id> line found; is this a UMT CoNLL file?")
    return tweets


def _token_line(path, lineno: int, line: str, require_tags: bool) -> tuple[str, str | None]:
    """``(token, tag)`` of a UMT token line; ``tag`` is None for a token alone (no tab)."""
    token, sep, tag = line.rpartition("\t")
    if not sep and require_tags:
        raise DataFormatError(path, lineno, f"no tab in {line[:40]!r}; expected token<TAB>tag")
    if sep and token == "":
        raise DataFormatError(path, lineno, f"empty token before tag {tag!r}; expected "
                              "token<TAB>tag")
    return (token, tag.strip()) if sep else (tag, None)


def read_jsonl(path, split: str = "", reader: TagReader | None = None,
               require_tags: bool = True, require_ids: bool | None = None) -> list[Tweet]:
    """Read a JSON lines file (the fields are in the module docstring).

    ``require_tags=False`` (a file to tag): ``tags`` may be left out, in every example or none,
    and so may ``id`` (``line-<n>``) unless ``require_ids`` (default: as ``require_tags``).
    """
    require_ids = require_tags if require_ids is None else require_ids
    path, reader = Path(path), reader or TagReader()
    tweets: list[Tweet] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        tweet = _jsonl_example(path, lineno, line, split, reader, require_tags, require_ids)
        if tweet.item_id in seen:
            raise DataFormatError(path, lineno, f"field 'id': duplicate id {tweet.item_id!r} "
                                  f"(first at line {seen[tweet.item_id]}); each example needs its "
                                  "own id", value=tweet.item_id)
        if tweets and bool(tweet.tags) != bool(tweets[0].tags):
            raise DataFormatError(path, lineno, "field 'tags' is "
                                  + ("given here" if tweet.tags else "missing here")
                                  + f" but not at line {tweets[0].line}; tag every example or none")
        seen[tweet.item_id] = lineno
        tweets.append(tweet)
    return tweets


def _jsonl_example(path, lineno, line, split, reader, require_tags, require_ids) -> Tweet:
    def bad(problem, value=None):
        return DataFormatError(path, lineno, problem, value=value)

    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise bad(f"not valid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(record, dict):
        raise bad(f"expected a JSON object per line, got {type(record).__name__}")
    unknown = sorted(set(record) - set(JSONL_FIELDS))
    if unknown:
        raise bad(f"unknown field {unknown[0]!r}; the fields are {', '.join(JSONL_FIELDS)}",
                  unknown[0])
    item_id = record.get("id", None if require_ids else f"line-{lineno}")
    if item_id is None:
        raise bad("field 'id' is missing; every example needs an id")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise bad(f"field 'id' must be a string, got {item_id!r}", item_id)
    item_id = str(item_id)
    if not _SAFE_ID.match(item_id):
        raise bad(f"field 'id': {item_id!r} is not a plain name (letters, digits, '_', '-', '.'; "
                  "no '/' or leading '.')", item_id)
    tokens = record.get("tokens")
    if (not isinstance(tokens, list) or not tokens
            or not all(isinstance(t, str) and t for t in tokens)):
        raise bad("field 'tokens' must be a non-empty list of non-empty strings", tokens)
    tags = record.get("tags")
    if tags is None and require_tags:
        raise bad("field 'tags' is missing; every example of a dataset split needs its gold tags")
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise bad("field 'tags' must be a list of strings", tags)
        if len(tags) != len(tokens):
            raise bad(f"field 'tags' has {len(tags)} tags for {len(tokens)} tokens")
        try:
            tags = [reader.read(tag, path, lineno) for tag in tags]
        except DataFormatError as err:
            raise bad(f"field 'tags': {err.problem}", err.value) from None
    image = record.get("image")
    if image is not None and (not isinstance(image, str) or not _SAFE_ID.match(image)):
        raise bad(f"field 'image' must be a file name or id in the image folder (no '/'), got "
                  f"{image!r}", image)
    return Tweet(item_id, tuple(tokens), tuple(tags or ()), split, lineno, image)


def check_types(tweets, path, labels: LabelSet, against: str = "the training split") -> None:
    """Refuse a gold type outside ``labels`` (valid/test, or a file a run tags): a tagger whose
    labels come from the training split could never predict it, and it has no label id."""
    for tweet in tweets:
        unknown = [i for i, t in enumerate(tweet.tags) if t != "O" and t[2:] not in labels.types]
        if unknown:
            tag = tweet.tags[unknown[0]]
            line = tweet.line + (0 if Path(path).suffix == ".jsonl" else 1 + unknown[0])
            raise DataFormatError(
                path, line, f"type {labels.type_to_dataset(tag[2:])} (tweet {tweet.item_id}) is "
                f"not in {against}, whose types are {', '.join(labels.dataset_types()) or 'none'}",
                value=labels.to_dataset(tag),
                hint="add examples of it to the training split, or tag it O")


def read_untagged(path) -> list[Tweet]:
    """Plain text: one tweet per line, whitespace-separated tokens; ids ``line-<n>``; blank lines
    skipped. The tokens must be split the way the training data was (module docstring)."""
    path = Path(path)
    tweets = [Tweet(f"line-{n}", tuple(line.split()), (), "", n)
              for n, line in enumerate(read_lines(path), start=1) if line.strip()]
    return tweets


def read_examples(path, reader: TagReader | None = None) -> list[Tweet]:
    """The examples of a file to tag, in whichever format it is: ``.jsonl`` -> JSON lines; a file
    whose first line starts with ``IMGID:`` -> UMT; anything else -> plain text. Tags are optional
    (``()`` when absent) and, when given, internal BIO tags."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path, reader=reader, require_tags=False)
    lines = read_lines(path)
    first = next(line for line in lines if line.strip())
    if first.startswith("IMGID:"):
        return read_umt(path, reader=reader, require_tags=False)
    return read_untagged(path)
