"""Predictions written for other tools: CoNLL that conlleval-format readers take, and JSON lines.

**CoNLL** (``.conll``, ``.txt``): one line per token, a blank line after each tweet, no comment or
``IMGID:`` lines (a conlleval reader takes every non-blank line as a token)::

    Messi 301 B-PER B-PER
    scores 301 O O

The columns, separated by one space (conlleval's default delimiter), are the token, the item id,
then the gold tag and the predicted tag; without gold tags only the prediction follows the id
(``Messi 301 B-PER``). The id is a column of its own (conlleval keeps the first and the last two
columns and ignores those between) so that a reader needs no comment syntax; ``conlleval.pl`` and
its ports score the file as it is, and ``cut -d' ' -f1,3-`` gives the plain ``token gold pred``
form. Tags use the dataset's own type names (``OTHER`` for TWITTER-2015) and the BIO scheme (IOBES
or BILOU input was converted on reading). A token holding whitespace (the benchmarks have a few
U+00A0 tokens) is written with each whitespace character replaced by ``_`` so every line splits
into the same columns; the JSON lines output keeps tokens exactly.

**JSON lines** (``.jsonl``): one object per tweet::

    {"id": "301", "tokens": [...], "tags": [...predicted...], "gold": [...] (when given),
     "entities": [{"type": "PER", "start": 0, "end": 1, "text": "Messi"}, ...]}

``entities`` are the predicted spans (conlleval mode: an orphan ``I-X`` starts an entity), the
token range ``[start, end)`` and the tokens joined by spaces. Scores are never written here: the
caller scores only when every example has gold tags (``gold_tags``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import DataFormatError, OutputError
from .labels import LabelSet, entities

FORMATS = {".conll": "conll", ".txt": "conll", ".jsonl": "jsonl"}


def gold_tags(examples) -> list[list[str]] | None:
    """The gold tags of every example, or None when none has any; a mix of both is an error."""
    tagged = [bool(e.tags) for e in examples]
    if all(tagged):
        return [list(e.tags) for e in examples]
    if any(tagged):
        first = examples[tagged.index(False)]
        raise DataFormatError(None, None, f"example {first.item_id} has no gold tags but others "
                              "have; give gold tags for every example or none",
                              value=first.item_id)
    return None


def _cell(token: str) -> str:
    return "".join("_" if c.isspace() else c for c in token)


def conll_lines(examples, predicted, labels: LabelSet = LabelSet()):
    """The CoNLL lines (without newlines) of ``examples`` tagged ``predicted`` (internal tags)."""
    gold = gold_tags(examples)
    for i, (example, tags) in enumerate(zip(examples, predicted)):
        golds = gold[i] if gold is not None else [None] * len(tags)
        for token, g, p in zip(example.tokens, golds, tags):
            middle = f" {labels.to_dataset(g)}" if g is not None else ""
            yield f"{_cell(token)} {example.item_id}{middle} {labels.to_dataset(p)}"
        yield ""


def jsonl_records(examples, predicted, labels: LabelSet = LabelSet()):
    """One dict per example: id, tokens, predicted tags, gold tags (when given), entity spans."""
    gold = gold_tags(examples)
    for i, (example, tags) in enumerate(zip(examples, predicted)):
        record = {"id": example.item_id, "tokens": list(example.tokens),
                  "tags": [labels.to_dataset(t) for t in tags]}
        if gold is not None:
            record["gold"] = [labels.to_dataset(t) for t in gold[i]]
        record["entities"] = [
            {"type": labels.type_to_dataset(etype), "start": start, "end": end,
             "text": " ".join(example.tokens[start:end])}
            for etype, start, end in entities(tags)]
        yield record


def write_predictions(handle, examples, predicted, labels: LabelSet = LabelSet(),
                      fmt: str = "conll") -> None:
    """Write to an open text handle in ``fmt`` (``conll`` or ``jsonl``)."""
    if len(examples) != len(predicted) or any(
            len(e.tokens) != len(p) for e, p in zip(examples, predicted)):
        raise ValueError("examples and predicted tag sequences differ in number or length")
    if fmt == "conll":
        for line in conll_lines(examples, predicted, labels):
            handle.write(line + "\n")
    elif fmt == "jsonl":
        for record in jsonl_records(examples, predicted, labels):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        raise OutputError(f"unknown prediction format {fmt!r}; use conll or jsonl", value=fmt)


def format_of(path) -> str:
    """``conll`` or ``jsonl``, from the file name's extension."""
    fmt = FORMATS.get(Path(path).suffix)
    if fmt is None:
        raise OutputError("unknown prediction file extension; use .conll, .txt or .jsonl",
                          path=path, value=Path(path).suffix)
    return fmt


def write_predictions_file(path, examples, predicted, labels: LabelSet = LabelSet(),
                           fmt: str | None = None) -> Path:
    """Write to ``path`` (format from its extension unless ``fmt``) through a temporary file
    renamed at the end, so a crash never leaves a file that looks finished."""
    path = Path(path)
    fmt = fmt or format_of(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        write_predictions(handle, examples, predicted, labels, fmt)
    os.replace(tmp, path)
    return path
