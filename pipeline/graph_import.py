"""The R-GCN authors' neighbour lists (``<data-dir>/rgcn/{train,valid,test}_2.txt``) as graphs.

Each record holds the top-10 images for the tweet text ("img2text", our ``inter``) and for the
tweet's image ("img2img", our ``intra``), pool = all splits. They become ``inter-rgcn`` and
``intra-rgcn`` graph files in the same format as ours (``graph_store.py``), so the trainer can run
on the paper's exact graphs. Tweets with no record (the authors lost the last tweet of each 2015
split) are flagged; neighbour ids that are not tweets of the dataset are kept, appended to
``pool_id`` and listed in the ``pool_unknown`` attribute (no features exist for them). The queries
are the labelled splits' tweets; a dataset's ``pool`` split has no lists of its own (its items
are only neighbour candidates) but its ids are known pool items.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from . import store
from .artifacts import file_sha256, fingerprint, ids_fingerprint
from .data import Dataset
from .errors import MissingInput
from .graph_store import BuildResult, Graph, graph_path, reusable, write_graph
from .rgcn import check_against_umt, read_rgcn

FORMAT_VERSION = 1
NEIGHBOURS = 10
FIELDS = {"inter": ("text_scores", "text_ids", "img2text"),
          "intra": ("image_scores", "image_ids", "img2img")}


def rgcn_files(dataset: Dataset, rgcn_dir) -> dict[str, Path]:
    paths = {split: Path(rgcn_dir) / f"{split}_2.txt" for split in dataset.labelled_splits()}
    for path in paths.values():
        if not path.is_file():
            raise MissingInput("file not found; the R-GCN lists are rgcn/{train,valid,test}_2.txt "
                               "in the data folder", path=path, setting="rgcn_dir")
    return paths


def _read_checked(dataset: Dataset, paths: dict[str, Path]):
    """Records by id (checked against UMT: same tokens and tags), plus what did not match."""
    records, notes, flag = {}, [], {}
    for split, path in paths.items():
        rows = read_rgcn(path, NEIGHBOURS)
        check = check_against_umt(path, rows, dataset.splits[split])
        records.update((r.item_id, r) for r in rows if r.item_id not in check.extra)
        flag.update((item, f"no record in {path.name}") for item in check.missing)
        if check.missing:
            notes.append(f"{path.name}: no record for {len(check.missing)} tweet(s) "
                         f"({', '.join(check.missing[:5])}): flagged")
        if check.extra:
            notes.append(f"{path.name}: {len(check.extra)} record(s) for ids not in "
                         f"{split}.txt ({', '.join(check.extra[:5])}): ignored")
        if check.token_diffs:
            notes.append(f"{path.name}: {len(check.token_diffs)} token(s) spelled differently "
                         "from UMT (same tags): kept")
    return records, flag, notes


def _relation_graph(relation, dataset: Dataset, records, flag, inputs, fp) -> Graph:
    score_field, id_field, name = FIELDS[relation]
    queries, items = dataset.query_ids(), dataset.item_ids()     # items: the pool split's too
    known = set(items)
    unknown = Counter(j for r in records.values() for j in getattr(r, id_field) if j not in known)
    pool_ids = items + sorted(unknown)
    row = {item: r for r, item in enumerate(pool_ids)}
    I = np.full((len(queries), NEIGHBOURS), -1, np.int64)
    D = np.full((len(queries), NEIGHBOURS), np.nan, np.float32)
    for q, item in enumerate(queries):
        if item in records:
            I[q] = [row[j] for j in getattr(records[item], id_field)]
            D[q] = getattr(records[item], score_field)
    flagged = np.array([item not in records for item in queries])
    self_hits = int(sum(item in getattr(r, id_field) for item, r in records.items()))
    notes = [f"{name}: {int((~flagged).sum())}/{len(queries)} tweets with lists, "
             f"{int(flagged.sum())} flagged; {self_hits} list(s) contain the tweet's own image"]
    if unknown:
        top = ", ".join(f"{j} ({c}x)" for j, c in unknown.most_common(3))
        notes.append(f"{name}: {len(unknown)} neighbour id(s) are not tweets of {dataset.name}, "
                     f"{sum(unknown.values())} occurrences (most: {top}); kept in pool_id "
                     "without features")
    attrs = {"relation": relation, "source": "rgcn", "k": NEIGHBOURS, "pool": "all",
             "metric": "published", "ranking": "published", "space": f"rgcn:{name}",
             "dataset": dataset.name, "inputs": inputs, "config": {"import": "rgcn"},
             "fingerprint": fp, "pool_unknown": sorted(unknown), "notes": notes}
    return Graph(queries, pool_ids, I, D, flagged, attrs,
                 flag_reason=[flag.get(item, "") for item in queries])


def import_rgcn(dataset: Dataset, rgcn_dir, artifacts, *, overwrite=False) -> list:
    """Write (or reuse) ``inter-rgcn`` and ``intra-rgcn``; a malformed file raises with its line."""
    paths = rgcn_files(dataset, rgcn_dir)
    inputs = {**store.text_inputs(dataset),
              **{f"rgcn/{path.name}": {"sha256": file_sha256(path)} for path in paths.values()}}
    results, todo = [], {}
    for relation in FIELDS:
        fp = fingerprint({"format": FORMAT_VERSION, "relation": relation, "source": "rgcn",
                          "queries": ids_fingerprint(dataset.query_ids()),
                          "inputs": store.inputs_digest(inputs)})
        path = graph_path(artifacts, store.dataset_key(dataset), relation, "rgcn", fp)
        if reusable(path, fp, overwrite):
            results.append(BuildResult(f"{relation}-rgcn", path, reused=True))
        else:
            todo[relation] = (path, fp)
    if todo:
        records, flag, notes = _read_checked(dataset, paths)
        for relation, (path, fp) in todo.items():
            graph = _relation_graph(relation, dataset, records, flag, inputs, fp)
            graph.attrs["notes"] = notes + graph.attrs["notes"]
            write_graph(graph, path)
            results.append(BuildResult(f"{relation}-rgcn", path, reused=False,
                                       notes=graph.attrs["notes"]))
    return sorted(results, key=lambda r: r.name)
