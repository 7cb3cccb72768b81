"""Per-split statistics of a dataset: the table ``cli.py stats`` prints."""
from __future__ import annotations

import pandas as pd

from .data import Dataset
from .labels import MODES, count_entities


def split_stats(dataset: Dataset) -> pd.DataFrame:
    """One row per split: tweets, tokens, entities per type in both modes, image and caption coverage.

    One entity column per type of the dataset's label set (the types of its training split), in
    the dataset's own spelling (OTHER for TWITTER-2015). Image and caption
    columns are empty (``<NA>``) when no image directory / captions file was given.
    """
    rows = []
    for split, tweets in dataset.splits.items():
        row = {"split": split, "tweets": len(tweets), "tokens": sum(len(t.tokens) for t in tweets)}
        for mode in MODES:
            counts = count_entities((t.tags for t in tweets), mode)
            row[f"entities_{mode}"] = sum(counts.values())
            for etype in dataset.labels.types:
                row[f"{dataset.labels.type_to_dataset(etype)}_{mode}"] = counts[etype]
        ids = [t.item_id for t in tweets]
        row.update(_coverage("images", dataset.images, ids))
        row.update(_coverage("captions", dataset.captions, ids))
        if dataset.captions is not None:
            row["captions_empty"] = sum(1 for i in ids if dataset.captions.get(i) == "")
        rows.append(row)
    table = pd.DataFrame(rows).set_index("split").astype("Int64")
    table.loc["total"] = table.sum(min_count=1)
    return table


def _coverage(name: str, found, ids) -> dict:
    if found is None:
        return {f"{name}_found": pd.NA, f"{name}_missing": pd.NA}
    hits = sum(1 for i in ids if i in found)
    return {f"{name}_found": hits, f"{name}_missing": len(ids) - hits}


def write_table(table: pd.DataFrame, path) -> None:
    """Write the table as CSV or JSON, chosen by the file's extension."""
    from pathlib import Path

    from .errors import MnerError

    path = Path(path)
    if path.suffix == ".csv":
        table.to_csv(path, index_label="split")
    elif path.suffix == ".json":
        table.reset_index(names="split").to_json(path, orient="records", indent=2)
    else:
        raise MnerError(f"{path}: unknown table format; use a .csv or .json file name")
