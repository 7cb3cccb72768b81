"""The BIO tag scheme: a dataset's label set, reading tags, entity spans, first-subword alignment.

The entity types are whatever the training split holds (``PER``, ``EVENT``, ``GAME``, ...): a
``LabelSet`` records them with the BIO labels the tagger predicts, and serialises to JSON for the
run record. Files may be written in BIO/IOB2 or in IOBES or BILOU; ``TagReader`` converts the last
two to BIO as it reads (``S``/``U`` -> ``B``, ``E``/``L`` -> ``I``) and refuses a dataset that mixes
them.

One alias remains: the two benchmarks spell their fourth type differently (TWITTER-2015 ``OTHER``,
TWITTER-2017 ``MISC``), so ``OTHER`` is read as ``MISC`` and a model trained on one tags the other.
The ``LabelSet`` remembers the dataset's own spelling, and reports and written predictions use it.
A dataset that spells it both ways is refused.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .errors import DataFormatError

ALIASES = {"OTHER": "MISC"}  # dataset spelling -> internal name
BENCHMARK_TYPES = ("PER", "LOC", "ORG", "MISC")  # the two Twitter benchmarks' types
MODES = ("conlleval", "strict")
TO_BIO = {"B": "B", "I": "I", "S": "B", "E": "I", "U": "B", "L": "I"}
SCHEME_OF = {"S": "IOBES", "E": "IOBES", "U": "BILOU", "L": "BILOU"}  # letters only they use


@dataclass(frozen=True)
class LabelSet:
    """The entity types of a dataset (internal names, sorted) and how the dataset spells them.

    ``spelling`` holds ``(internal, dataset)`` pairs where the two differ (only ``("MISC",
    "OTHER")`` today); ``scheme`` is the scheme the files were written in (tags are BIO once read).
    """

    types: tuple[str, ...] = ()
    spelling: tuple[tuple[str, str], ...] = ()
    scheme: str = "BIO"

    def __post_init__(self):
        object.__setattr__(self, "types", tuple(sorted(set(self.types))))
        object.__setattr__(self, "spelling", tuple(sorted(set(map(tuple, self.spelling)))))

    @classmethod
    def from_tags(cls, tag_sequences, spelling=(), scheme: str = "BIO") -> LabelSet:
        """The types found in BIO tag sequences (internal names)."""
        types = {tag[2:] for tags in tag_sequences for tag in tags if tag != "O"}
        return cls(tuple(types), spelling, scheme)

    @property
    def labels(self) -> list[str]:
        """The sorted BIO label list the tagger predicts (``O`` included)."""
        return label_list(self.types)

    def to_dataset(self, tag: str) -> str:
        """A BIO tag in the dataset's spelling (``B-MISC`` -> ``B-OTHER`` for TWITTER-2015)."""
        if tag == "O" or not tag:
            return tag
        return f"{tag[:2]}{self.type_to_dataset(tag[2:])}"

    def type_to_dataset(self, entity_type: str) -> str:
        return dict(self.spelling).get(entity_type, entity_type)

    def dataset_types(self) -> list[str]:
        """The types in the dataset's spelling, in the order of ``types``."""
        return [self.type_to_dataset(t) for t in self.types]

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "types": list(self.types),
                "spelling": dict(self.spelling), "labels": self.labels}

    @classmethod
    def from_json(cls, record: dict) -> LabelSet:
        return cls(tuple(record["types"]), tuple(record.get("spelling", {}).items()),
                   record.get("scheme", "BIO"))


TypeNames = LabelSet  # the old name, still imported by trainer/loop.py


def label_list(types=BENCHMARK_TYPES) -> list[str]:
    """The sorted BIO label list of ``types`` (``O`` included); the benchmarks' by default."""
    return sorted(["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")])


def split_tag(tag: str) -> tuple[str, str | None] | str:
    """``B-PER`` -> ``("B", "PER")`` as written (any prefix of BIO, IOBES, BILOU; any type name);
    ``O`` -> ``("O", None)``. An error string (not a tuple) when the tag has no such form, so the
    reader can add file and line."""
    if tag == "O":
        return ("O", None)
    prefix, sep, etype = tag.partition("-")
    if not sep or prefix not in TO_BIO or not etype or any(c.isspace() for c in etype):
        return (f"tag {tag!r} is not in the BIO scheme (expected O, B-TYPE or I-TYPE; IOBES and "
                "BILOU tags are converted)")
    return (prefix, etype)


def parse_tag(tag: str) -> tuple[str, str | None] | str:
    """``split_tag`` with the prefix converted to BIO and the type to its internal name."""
    parsed = split_tag(tag)
    if isinstance(parsed, str):
        return parsed
    prefix, etype = parsed
    return ("O", None) if prefix == "O" else (TO_BIO[prefix], ALIASES.get(etype, etype))


class TagReader:
    """Reads the tags of one dataset's files into internal BIO tags, keeping track of the scheme
    (BIO, IOBES or BILOU: one per dataset) and of how ``MISC``/``OTHER`` is spelled (one way)."""

    def __init__(self):
        self.scheme, self.scheme_at = "BIO", None
        self.misc, self.misc_at = None, None

    def read(self, tag: str, path, line: int) -> str:
        """The internal BIO tag of ``tag`` found at ``path:line``; ``DataFormatError`` if bad."""
        parsed = split_tag(tag)
        if isinstance(parsed, str):
            raise DataFormatError(path, line, parsed, value=tag)
        prefix, etype = parsed
        if prefix == "O":
            return "O"
        scheme = SCHEME_OF.get(prefix)
        if scheme is not None and scheme != self.scheme:
            if self.scheme_at is not None:
                raise DataFormatError(path, line, f"tag {tag!r} is {scheme} but the tags at "
                                      f"{self.scheme_at} are {self.scheme}; use one scheme",
                                      value=tag)
            self.scheme, self.scheme_at = scheme, f"{path}:{line}"
        if etype in ("MISC", *ALIASES):
            if self.misc is None:
                self.misc, self.misc_at = etype, f"{path}:{line}"
            elif etype != self.misc:
                raise DataFormatError(path, line, f"type {etype} here but {self.misc} at "
                                      f"{self.misc_at}; {self.misc} and {etype} are one type, "
                                      "spell it one way", value=tag)
        return f"{TO_BIO[prefix]}-{ALIASES.get(etype, etype)}"

    def label_set(self, tag_sequences) -> LabelSet:
        """The ``LabelSet`` of the (training) tag sequences read by this reader."""
        spelling = [("MISC", self.misc)] if self.misc not in (None, "MISC") else []
        return LabelSet.from_tags(tag_sequences, spelling, self.scheme)


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
