"""The R-GCN authors' ``*_2.txt`` files: 7 lines per tweet with their top-10 neighbour lists.

Lines: (1) tokens joined by spaces, (2) tags, (3) ``<id>.jpg``, (4) 10 text->image scores,
(5) the 10 image files, (6) 10 image->image scores, (7) the 10 image files. No separator line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import Tweet, check_item_id, read_lines
from .errors import DataFormatError
from .labels import parse_tag

RECORD_LINES = 7


@dataclass(frozen=True)
class RgcnRecord:
    item_id: str
    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    text_scores: tuple[float, ...]   # img2text: images retrieved for the tweet text
    text_ids: tuple[str, ...]
    image_scores: tuple[float, ...]  # img2img: images similar to the tweet's image
    image_ids: tuple[str, ...]
    line: int


def _image_id(path, lineno: int, name: str) -> str:
    stem = name[:-4] if name.lower().endswith(".jpg") else None
    if not stem:
        raise DataFormatError(path, lineno, f"{name!r} is not an image file name '<id>.jpg'")
    return check_item_id(stem, f"{path}:{lineno}")


def _scores(path, lineno: int, line: str, count: int) -> tuple[float, ...]:
    fields = line.split()
    try:
        values = tuple(float(x) for x in fields)
    except ValueError:
        raise DataFormatError(path, lineno, f"expected {count} numeric scores, got {line[:60]!r}") from None
    if len(values) != count:
        raise DataFormatError(path, lineno, f"expected {count} scores, got {len(values)}")
    return values


def read_rgcn(path, neighbours: int = 10) -> list[RgcnRecord]:
    """Read one ``*_2.txt`` file; any malformed record raises with its file and line."""
    path = Path(path)
    lines = read_lines(path)
    while lines and lines[-1].strip() == "":
        lines.pop()
    if len(lines) % RECORD_LINES:
        raise DataFormatError(path, len(lines), f"{len(lines)} lines is not a multiple of "
                              f"{RECORD_LINES}; a record is cut short or has an extra line")
    records = []
    for start in range(0, len(lines), RECORD_LINES):
        block = [line.rstrip("\r") for line in lines[start:start + RECORD_LINES]]
        first = start + 1
        tokens = tuple(block[0].split(" "))
        tags = tuple(block[1].split())
        if len(tokens) != len(tags):
            raise DataFormatError(path, first + 1, f"{len(tags)} tags for {len(tokens)} tokens")
        for tag in tags:
            parsed = parse_tag(tag)
            if isinstance(parsed, str):
                raise DataFormatError(path, first + 1, parsed)
        ids = []
        for offset in (4, 6):
            names = block[offset].split()
            if len(names) != neighbours:
                raise DataFormatError(path, first + offset, f"expected {neighbours} image files, "
                                      f"got {len(names)}")
            ids.append(tuple(_image_id(path, first + offset, n) for n in names))
        records.append(RgcnRecord(
            item_id=_image_id(path, first + 2, block[2].strip()), tokens=tokens,
            tags=tuple(_internal(t) for t in tags),
            text_scores=_scores(path, first + 3, block[3], neighbours), text_ids=ids[0],
            image_scores=_scores(path, first + 5, block[5], neighbours), image_ids=ids[1],
            line=first))
    return records


def _internal(tag: str) -> str:
    prefix, etype = parse_tag(tag)
    return "O" if prefix == "O" else f"{prefix}-{etype}"


@dataclass
class RgcnCheck:
    matched: int
    missing: list[str]      # UMT tweets with no R-GCN record (the lost last tweet of 2015)
    extra: list[str]        # R-GCN records whose id is not in the UMT split
    token_diffs: list[tuple[str, int, str, str]]  # (id, position, theirs, ours): same length and tags


def check_against_umt(path, records: list[RgcnRecord], tweets: list[Tweet]) -> RgcnCheck:
    """Compare every record with the UMT tweet of the same id.

    A different token count or different tags raise (the graph would be attached to another
    sentence). Single tokens spelled differently are returned, not raised: the authors' 2015 valid
    file turned the bare U+00A0 token of 73309 into ':\xa0'. Tweets missing from the R-GCN file
    are returned so the caller can report them.
    """
    by_id = {t.item_id: t for t in tweets}
    extra, diffs = [], []
    for record in records:
        tweet = by_id.get(record.item_id)
        if tweet is None:
            extra.append(record.item_id)
            continue
        if record.tags != tweet.tags or len(record.tokens) != len(tweet.tokens):
            raise DataFormatError(path, record.line, f"tokens or tags of {record.item_id} differ "
                                  f"from the UMT file (line {tweet.line}); the lists were made "
                                  "from another version of the data")
        diffs.extend((record.item_id, i, a, b) for i, (a, b) in
                     enumerate(zip(record.tokens, tweet.tokens)) if a != b)
    present = {r.item_id for r in records}
    missing = [t.item_id for t in tweets if t.item_id not in present]
    return RgcnCheck(len(records) - len(extra), missing, extra, diffs)
