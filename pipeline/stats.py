"""Per-split statistics of a dataset: the table the stats stage prints."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .data import Dataset
from .errors import OutputError, writable_file
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


TABLE_FORMATS = (".csv", ".json")


def table_path(path) -> Path:
    """``path`` checked as a table to write (a ``.csv`` or ``.json`` file that can be written),
    so that a caller can refuse it before any work."""
    path = writable_file(path, setting="output")
    if path.suffix not in TABLE_FORMATS:
        raise OutputError("unknown table format", path=path, setting="output",
                          hint="use a .csv or .json file name")
    return path


def write_table(table: pd.DataFrame, path) -> None:
    """Write the table as CSV or JSON, chosen by the file's extension."""
    path = table_path(path)
    if path.suffix == ".csv":
        table.to_csv(path, index_label="split")
    else:
        table.reset_index(names="split").to_json(path, orient="records", indent=2)
