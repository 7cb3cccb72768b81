"""The BIO tag scheme: type names, validation, entity spans and first-subword alignment.

Internally every dataset uses the same four types ``PER LOC ORG MISC``; TWITTER-2015 calls the
fourth one ``OTHER``. ``TypeNames`` maps between the internal and the dataset's names so that
reports and written predictions keep the dataset's own spelling.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

INTERNAL_TYPES = ("PER", "LOC", "ORG", "MISC")
ALIASES = {"OTHER": "MISC"}  # dataset spelling -> internal name
MODES = ("conlleval", "strict")


@dataclass(frozen=True)
class TypeNames:
    """Internal type name <-> the dataset's name (only ``MISC`` ever differs)."""

    misc: str = "MISC"

    def to_dataset(self, tag: str) -> str:
        if tag.endswith("-MISC"):
            return tag[:-4] + self.misc
        return tag

    def type_to_dataset(self, entity_type: str) -> str:
        return self.misc if entity_type == "MISC" else entity_type


def label_list() -> list[str]:
    """The sorted BIO label list the tagger predicts (``O`` included)."""
    return sorted(["O"] + [f"{p}-{t}" for t in INTERNAL_TYPES for p in ("B", "I")])


def parse_tag(tag: str) -> tuple[str, str | None] | str:
    """Split ``B-PER`` into ``("B", "PER")``; ``O`` gives ``("O", None)``.

    Returns an error string (not a tuple) when the tag is not in the BIO scheme or its type is not
    one of PER, LOC, ORG, MISC/OTHER, so the reader can add file and line.
    """
    if tag == "O":
        return ("O", None)
    prefix, sep, etype = tag.partition("-")
    if not sep or prefix not in ("B", "I") or not etype:
        return f"tag {tag!r} is not in the BIO scheme (expected O, B-TYPE or I-TYPE)"
    etype = ALIASES.get(etype, etype)
    if etype not in INTERNAL_TYPES:
        names = ", ".join(INTERNAL_TYPES[:3]) + ", MISC or OTHER"
        return f"tag {tag!r} has type {tag.partition('-')[2]!r}, which is not in the label set ({names})"
    return (prefix, etype)


def entities(tags, mode: str = "conlleval") -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end_exclusive)`` of one tag sequence.

    ``conlleval``: an ``I-X`` that does not continue an entity of type X starts a new one (what
    conlleval and seqeval's default mode do). ``strict``: only ``B-X`` starts an entity; an orphan
    ``I-X`` belongs to no entity (seqeval's strict IOB2 mode).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    spans, start, current = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, etype = ("O", None) if tag == "O" else (tag[0], tag[2:])
        continues = prefix == "I" and current == etype and start is not None
        if not continues and start is not None:
            spans.append((current, start, i))
            start, current = None, None
        if prefix == "B" or (prefix == "I" and not continues and mode == "conlleval"):
            start, current = i, etype
    return spans


def count_entities(tag_sequences, mode: str = "conlleval") -> Counter:
    """Entities per type over many sequences."""
    counts: Counter = Counter()
    for tags in tag_sequences:
        counts.update(etype for etype, _, _ in entities(tags, mode))
    return counts


def first_subword_mask(word_ids) -> list[bool]:
    """True at the first subword of each word, given a tokenizer's ``word_ids()`` list."""
    mask, previous = [], None
    for word in word_ids:
        mask.append(word is not None and word != previous)
        previous = word
    return mask
