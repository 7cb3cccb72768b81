"""Entity-level precision, recall and F1 with seqeval, overall (micro) and per type, in both modes:

- ``conlleval`` (seqeval's default): an ``I-X`` that continues nothing starts an entity;
- ``strict`` (seqeval ``mode="strict", scheme=IOB2``): only ``B-X`` starts one.

Per-type rows cover every type of the dataset's ``LabelSet`` plus any other type found in the gold
or predicted tags, whatever their names. Tags come in with the internal type names (``MISC``);
reports use the dataset's own names (``OTHER`` for TWITTER-2015) through the ``LabelSet``. Scores
are fractions in [0, 1]; tables print %.
"""
from __future__ import annotations

import math

from pipeline.labels import MODES, LabelSet

EMPTY = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}  # a type never seen


def score(gold: list[list[str]], pred: list[list[str]], labels: LabelSet = LabelSet()) -> dict:
    """``{mode: {"overall": {precision, recall, f1, support}, "types": {name: {...}}}}``."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tag sequences differ in number or length")
    found = {tag[2:] for tags in (*gold, *pred) for tag in tags if tag != "O"}
    all_types = sorted(set(labels.types) | found)
    out = {}
    for mode in MODES:
        extra = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
        report = classification_report(gold, pred, output_dict=True, zero_division=0, **extra)
        types = {}
        for etype in all_types:
            types[labels.type_to_dataset(etype)] = _row(report.get(etype, EMPTY))
        micro = report.get("micro avg", EMPTY)
        out[mode] = {"overall": _row(micro), "types": types}
    return out


def _row(row: dict) -> dict:
    return {"precision": float(row["precision"]), "recall": float(row["recall"]),
            "f1": float(row["f1-score"]), "support": int(row["support"])}


def format_table(scores: dict, title: str = "") -> str:
    """P/R/F1 (%) per type and overall, the two modes side by side."""
    names = list(scores[MODES[0]]["types"]) + ["overall"]
    width = max(8, *map(len, names))
    header = f"{'type':<{width}} {'gold':>5} | " + " | ".join(
        f"{mode + ' P':>12} {'R':>6} {'F1':>6}" for mode in MODES)
    lines = ([title] if title else []) + [header, "-" * len(header)]
    for name in names:
        rows = [scores[m]["types"][name] if name != "overall" else scores[m]["overall"]
                for m in MODES]
        cells = " | ".join(f"{100 * r['precision']:>12.2f} {100 * r['recall']:>6.2f} "
                           f"{100 * r['f1']:>6.2f}" for r in rows)
        lines.append(f"{name:<{width}} {rows[0]['support']:>5} | {cells}")
    return "\n".join(lines)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
