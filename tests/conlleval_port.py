"""A Python port of conlleval.pl's chunk counting (CoNLL-2000 shared task script, v2004), to read
written predictions back the way conlleval-format tools do: every non-blank line is a token, split
on single spaces, the last two fields are the gold and the predicted tag, a blank line (or
``-DOCSTART-``) ends a sentence."""
from __future__ import annotations

from collections import Counter


def _split(tag: str) -> tuple[str, str]:
    prefix, sep, etype = tag.partition("-")
    return (prefix, etype) if sep else (tag, "")


def end_of_chunk(prev: str, tag: str, prev_type: str, etype: str) -> bool:
    return ((prev, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"),
                            ("E", "O"), ("E", "B"), ("S", "E"), ("S", "I"), ("S", "O"), ("S", "B")}
            or (prev not in ("O", ".") and prev_type != etype))


def start_of_chunk(prev: str, tag: str, prev_type: str, etype: str) -> bool:
    return ((prev, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"),
                            ("O", "E"), ("S", "E"), ("S", "I"), ("O", "S")}
            or (tag not in ("O", ".") and prev_type != etype))


def conlleval(lines, delimiter: str = " ") -> dict:
    """``{"overall": (precision, recall, f1), type: (p, r, f1), ...}`` as fractions."""
    correct, found_gold, found_pred = Counter(), Counter(), Counter()
    in_correct = False
    last_gold, last_pred, last_gold_type, last_pred_type = "O", "O", "", ""
    for line in [*lines, ""]:
        features = line.rstrip("\n").split(delimiter) if line.strip() else []
        if not features or features[0] == "-DOCSTART-":
            features = ["-X-", "O", "O"]
        if len(features) < 3:
            raise ValueError(f"unexpected number of features in line {line!r}")
        gold, gold_type = _split(features[-2])
        pred, pred_type = _split(features[-1])
        if in_correct:
            gold_end = end_of_chunk(last_gold, gold, last_gold_type, gold_type)
            pred_end = end_of_chunk(last_pred, pred, last_pred_type, pred_type)
            if gold_end and pred_end and last_gold_type == last_pred_type:
                in_correct = False
                correct[last_gold_type] += 1
            elif gold_end != pred_end or gold_type != pred_type:
                in_correct = False
        gold_start = start_of_chunk(last_gold, gold, last_gold_type, gold_type)
        pred_start = start_of_chunk(last_pred, pred, last_pred_type, pred_type)
        if gold_start and pred_start and gold_type == pred_type:
            in_correct = True
        if gold_start:
            found_gold[gold_type] += 1
        if pred_start:
            found_pred[pred_type] += 1
        last_gold, last_pred, last_gold_type, last_pred_type = gold, pred, gold_type, pred_type
    if in_correct:
        correct[last_gold_type] += 1
    out = {"overall": _prf(sum(correct.values()), sum(found_pred.values()),
                           sum(found_gold.values()))}
    for etype in sorted(set(found_gold) | set(found_pred)):
        out[etype] = _prf(correct[etype], found_pred[etype], found_gold[etype])
    return out


def _prf(correct: int, guessed: int, gold: int) -> tuple[float, float, float]:
    p = correct / guessed if guessed else 0.0
    r = correct / gold if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)
