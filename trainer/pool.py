"""What a run needs to tag tweets, frozen into the run folder: ``pool.h5``.

A run folder copied to another folder or machine must tag new tweets without the data and
artifacts folders it was trained from. ``write_pool`` (at train time) stores, for an image model,
the node table and every dataset item's own image row and neighbours (``ImageInputs``); for each
relation predict searches (``inter``, ``intra``, the ``context`` graph) the pool's item ids and
their L2-normalised vectors of the graph's pool view, with the attributes of the query view's
feature file (which encoder, which source: ``predict.view_vectors`` recomputes the query side of a
new tweet from them); and for a context model the words of the pool's tweets with the dataset
items' neighbour tweets. ``read_pool`` gives them back as a ``RunPool``; ``pool_from_inputs``
builds the same object from the recorded files (runs written before ``pool.h5`` existed).

Layout: root attributes ``format``, ``node_attrs`` (JSON); group ``image`` (``item_id``,
``table``, ``own``, ``inter``, ``inter_score``, ``intra``, ``intra_score``, ``table_id``, attribute
``view``); groups ``search/<name>`` (``pool_id``, ``xb`` float16, attributes ``relation``,
``query``, ``graph_fingerprint``); ``context`` and ``words`` as JSON strings. The node table keeps
the feature file's dtype (the model sees the values it was trained on); the search vectors are
float16: unit vectors lose at most ~5e-4 per component, far below the gaps between neighbours
that matter.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_path
from pipeline.errors import CorruptInput, InvalidConfig, MissingInput
from pipeline.features import read_features
from pipeline.graph_store import read_graph
from pipeline.graphs import graph_views
from pipeline.row_views import has_direction, normalised as unit_rows
from pipeline.store import decode_attrs, write_attrs

from .batches import ImageInputs
from .context import tweet_words
from .inputs import TrainInputs, inputs_from_record, recorded_dataset

POOL_FILE = "pool.h5"
FORMAT = 1
IMAGE_ARRAYS = ("own", "inter", "inter_score", "intra", "intra_score")
TABLE_BLOCK = 4096      # node-table rows per write


@dataclass
class SearchPool:
    """One relation's search side: ``xb`` (m, D) unit rows of the pool items ``pool_ids`` that
    have a vector, and ``query`` (the query view's feature-file attributes, with ``shape``)."""

    relation: str
    pool_ids: list[str]
    xb: np.ndarray
    query: dict
    graph_fingerprint: str | None = None


@dataclass
class RunPool:
    """Everything predict reads besides the tagger: see the module docstring."""

    image: ImageInputs | None = None
    node_attrs: dict | None = None
    search: dict[str, SearchPool] = field(default_factory=dict)
    context: dict[str, list[str]] | None = None
    words: dict[str, list[str]] = field(default_factory=dict)


def feature_attrs(path: Path) -> dict:
    """A feature file's attributes (JSON ones decoded) and ``shape`` (a row's shape), without
    reading its arrays."""
    import h5py

    with h5py.File(path, "r") as h5:
        return {**decode_attrs(h5.attrs), "shape": list(h5["features"].shape[1:])}


def normalised(X: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``X`` scaled to unit length, and ``ok`` without the zero or non-finite rows (as
    build-graphs scales them: ``pipeline.row_views``)."""
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    ok = ok & has_direction(X)
    return unit_rows(X, ok), ok


def search_pool(name: str, relation: str, graph_path) -> SearchPool:
    """The search side of the graph file ``graph_path`` from the feature files it was built from
    (next to it under the same artifacts folder)."""
    graph = read_graph(graph_path)
    attrs = graph.attrs
    if attrs.get("source", "ours") != "ours" or attrs.get("ranking", "cosine") != "cosine":
        raise InvalidConfig(f"{graph_path}: neighbours of new tweets can be computed only for "
                            "cosine-ranked graphs built by build-graphs; tag dataset items instead")
    folder = Path(graph_path).parents[2] / "features" / Path(graph_path).parent.name
    query_view, pool_view = graph_views(attrs)
    files = {v: folder / attrs["inputs"][f"features:{v}"]["file"] for v in (query_view, pool_view)}
    for view, path in files.items():
        if not path.is_file():
            raise MissingInput(f"{path}: the {view} features the {relation} graph was built from "
                               "are gone; restore them to tag new tweets")
    xb, ok = normalised(*read_features(files[pool_view]).rows(graph.pool_ids))
    return SearchPool(relation, [p for p, good in zip(graph.pool_ids, ok) if good], xb[ok],
                      feature_attrs(files[query_view]), attrs.get("fingerprint"))


def pool_from_inputs(inputs: TrainInputs, config) -> RunPool:
    """The ``RunPool`` of a run from the files its inputs were read from (``inputs.files``)."""
    model, files = config.model, inputs.files or {}
    pool = RunPool(image=inputs.image if model.uses_image else None, context=inputs.context)
    if model.uses_image:
        pool.node_attrs = feature_attrs(Path(files["features"]["path"]))
        for relation in ("inter", "intra"):
            if getattr(model, relation):
                pool.search[relation] = search_pool(relation, relation, files[relation]["path"])
    if model.context != "none":
        pool.search["context"] = search_pool("context", model.context, files["context"]["path"])
        pool.words = tweet_words(inputs.dataset, model.context_labels)
    return pool


def _strings(values) -> np.ndarray:
    return np.array([str(v).encode("utf-8") for v in values], dtype=object)


def write_pool(path, pool: RunPool) -> Path:
    """Write ``pool`` to ``path`` (atomically)."""
    import h5py

    strings = h5py.string_dtype("utf-8")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        write_attrs(h5, {"format": FORMAT, "node_attrs": pool.node_attrs or {}})
        if pool.image is not None:
            image = pool.image
            group = h5.create_group("image")
            group.attrs["view"] = image.view
            group.create_dataset("item_id", data=_strings(image.item_ids), dtype=strings)
            group.create_dataset("table_id", data=_strings(image.table_ids or []), dtype=strings)
            _write_table(group, image.table)
            for name in IMAGE_ARRAYS:
                group.create_dataset(name, data=getattr(image, name))
        for name, side in pool.search.items():
            group = h5.create_group(f"search/{name}")
            group.create_dataset("pool_id", data=_strings(side.pool_ids), dtype=strings)
            group.create_dataset("xb", data=side.xb.astype(np.float16), chunks=True)
            write_attrs(group, {"relation": side.relation, "query": side.query,
                                "graph_fingerprint": side.graph_fingerprint or ""})
        if pool.context is not None:
            h5.create_dataset("context", data=json.dumps(pool.context), dtype=strings)
            h5.create_dataset("words", data=json.dumps(pool.words), dtype=strings)
    return Path(path)


def _write_table(group, table) -> None:
    """The node table, a block of rows at a time in its stored dtype: a table read by rows from
    its feature file (``FeatureRows``, the host-table case) is never read whole."""
    shape = tuple(table.shape)
    dataset = group.create_dataset("table", shape=shape, dtype=np.dtype(table.dtype),
                                   chunks=True if shape[0] else None)
    for first in range(0, shape[0], TABLE_BLOCK):
        dataset[first:first + TABLE_BLOCK] = table[first:first + TABLE_BLOCK]


def read_pool(path) -> RunPool:
    """The ``RunPool`` stored in ``path`` (``write_pool``)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            attrs = decode_attrs(h5.attrs)
            if attrs.get("format") != FORMAT:
                raise CorruptInput(f"pool format {attrs.get('format')} is not {FORMAT} (written "
                                   "by another version)", path=path, rerun="train")
            pool = RunPool(node_attrs=attrs.get("node_attrs") or None)
            if "image" in h5:
                group = h5["image"]
                table_ids = list(group["table_id"].asstr()[()])
                pool.image = ImageInputs(list(group["item_id"].asstr()[()]), group["table"][()],
                                         *(group[name][()] for name in IMAGE_ARRAYS),
                                         view=str(group.attrs["view"]),
                                         table_ids=table_ids or None)
            for name, group in (h5["search"].items() if "search" in h5 else ()):
                side = decode_attrs(group.attrs)
                pool.search[name] = SearchPool(
                    side["relation"], list(group["pool_id"].asstr()[()]),
                    group["xb"][()].astype(np.float32), side["query"],
                    side.get("graph_fingerprint") or None)
            if "context" in h5:
                pool.context = json.loads(h5["context"].asstr()[()])
                pool.words = json.loads(h5["words"].asstr()[()])
    except OSError as err:
        raise CorruptInput(f"unreadable pool file ({str(err).splitlines()[0]})", path=path,
                           rerun="train") from None
    return pool


def run_pool(run_dir, config) -> RunPool:
    """The run's ``pool.h5``, or for a run written before it existed, the same from its recorded
    data, feature and graph files."""
    path = Path(run_dir) / POOL_FILE
    if path.is_file():
        return read_pool(path)
    return pool_from_inputs(inputs_from_record(run_dir, config), config)


def run_inputs(run_dir, config, data_dir=None) -> TrainInputs:
    """A saved run's inputs for scoring a split: the dataset (``recorded_dataset``: from
    ``data_dir`` when it moved, content checked) with the node table, neighbours and context of
    its ``pool.h5`` (no feature or graph file needed), or of the recorded files (older runs)."""
    path = Path(run_dir) / POOL_FILE
    if not path.is_file():
        return inputs_from_record(run_dir, config, data_dir)
    dataset, record = recorded_dataset(run_dir, data_dir)
    pool = read_pool(path)
    return TrainInputs(dataset, pool.image, record.get("image") or {}, pool.context)
