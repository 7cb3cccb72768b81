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

A node table larger than ``TrainConfig.pool_copy_gb`` (as stored in its feature file: a pool of
1M 49x1280 float16 region grids is ~125 GB) is not copied: ``image`` then has no ``table`` but
the attribute ``table_ref`` (JSON: the feature file's absolute ``path``, its path ``relative`` to
the run folder, ``fingerprint``, ``shape``, ``dtype``), and the root ``format`` is 2 (format 1,
a copied table, is what older code reads too). ``read_pool`` never reads the node table whole:
``ImageInputs.table`` is a ``FeatureRows`` over ``image/table``, or over the referenced feature
file once its fingerprint is checked (``referenced_table``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_path
from pipeline.errors import CorruptInput, InvalidConfig, MissingInput, StaleArtifact
from pipeline.features import FeatureRows, read_feature_rows
from pipeline.graph_store import read_graph
from pipeline.graphs import graph_views
from pipeline.row_views import has_direction, normalised as unit_rows
from pipeline.store import decode_attrs, write_attrs

from .batches import ImageInputs
from .context import tweet_words
from .inputs import TrainInputs, inputs_from_record, recorded_dataset

POOL_FILE = "pool.h5"
FORMAT = 1              # the node table copied into pool.h5
REF_FORMAT = 2          # the node table a reference to its feature file (``table_ref``)
IMAGE_ARRAYS = ("own", "inter", "inter_score", "intra", "intra_score")
TABLE_BLOCK = 4096      # node-table rows per write


@dataclass
class SearchPool:
    """One relation's search side: ``xb`` (m, D) float16 unit rows of the pool items
    ``pool_ids`` that have a vector (half the memory of float32; ``pipeline.search.search``
    widens them for the search), and ``query`` (the query view's feature-file attributes, with
    ``shape``)."""

    relation: str
    pool_ids: list[str]
    xb: np.ndarray
    query: dict
    graph_fingerprint: str | None = None


@dataclass
class RunPool:
    """Everything predict reads besides the tagger: see the module docstring. ``table_file``
    (``path``, ``fingerprint``) is the feature file the node table is, row for row, when known:
    ``write_pool`` refers to it instead of copying a large table."""

    image: ImageInputs | None = None
    table_file: dict | None = None
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
    pool_file = read_feature_rows(files[pool_view])
    rows = pool_file.row_numbers(graph.pool_ids)
    xb, ok = unit_rows_f16(pool_file.features, rows, pool_file.valid[rows])
    return SearchPool(relation, [p for p, good in zip(graph.pool_ids, ok) if good], xb,
                      feature_attrs(files[query_view]), attrs.get("fingerprint"))


def unit_rows_f16(table, rows: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` of ``table`` (read ``TABLE_BLOCK`` at a time) scaled to unit length as
    float16, only those ``normalised`` keeps, and the mask of which they are."""
    ok, parts = np.asarray(valid, bool).copy(), []
    for first in range(0, len(rows), TABLE_BLOCK):
        part = slice(first, first + TABLE_BLOCK)
        X, ok[part] = normalised(table[rows[part]], ok[part])
        parts.append(X[ok[part]].astype(np.float16))
    width = int(np.prod(table.shape[1:]))
    return (np.concatenate(parts) if parts else np.empty((0, width), np.float16)), ok


def pool_from_inputs(inputs: TrainInputs, config) -> RunPool:
    """The ``RunPool`` of a run from the files its inputs were read from (``inputs.files``)."""
    model, files = config.model, inputs.files or {}
    pool = RunPool(image=inputs.image if model.uses_image else None, context=inputs.context)
    if model.uses_image:
        pool.table_file = files["features"]
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


def write_pool(path, pool: RunPool, copy_gb: float | None = None) -> Path:
    """Write ``pool`` to ``path`` (atomically). A node table larger than ``copy_gb`` (GB as
    stored in its feature file; None: always copy) is stored as a reference to that file
    (``table_reference``)."""
    import h5py

    strings = h5py.string_dtype("utf-8")
    reference = table_reference(pool, Path(path).parent, copy_gb)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        write_attrs(h5, {"format": REF_FORMAT if reference else FORMAT,
                         "node_attrs": pool.node_attrs or {}})
        if pool.image is not None:
            image = pool.image
            group = h5.create_group("image")
            group.attrs["view"] = image.view
            group.create_dataset("item_id", data=_strings(image.item_ids), dtype=strings)
            group.create_dataset("table_id", data=_strings(image.table_ids or []), dtype=strings)
            if reference:
                write_attrs(group, {"table_ref": reference})
            else:
                _write_table(group, image.table)
            for name in IMAGE_ARRAYS:
                group.create_dataset(name, data=getattr(image, name))
        for name, side in pool.search.items():
            group = h5.create_group(f"search/{name}")
            group.create_dataset("pool_id", data=_strings(side.pool_ids), dtype=strings)
            group.create_dataset("xb", data=side.xb.astype(np.float16, copy=False),
                                 chunks=True if len(side.xb) else None)
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


def _table_file(path: Path) -> dict:
    """The ``fingerprint``, ``shape`` and ``dtype`` of a feature file's table (arrays unread)."""
    import h5py

    with h5py.File(path, "r") as h5:
        features = h5["features"]
        return {"fingerprint": str(decode_attrs(h5.attrs).get("fingerprint")),
                "shape": list(features.shape), "dtype": np.dtype(features.dtype).name}


def table_reference(pool: RunPool, run_dir: Path, copy_gb: float | None) -> dict | None:
    """What ``pool.h5`` stores instead of the node table: its feature file's absolute path, its
    path relative to ``run_dir``, fingerprint, shape and dtype; None (copy the table) when there
    is no limit or no known feature file, or the table is at most ``copy_gb`` GB as stored."""
    image, source = pool.image, pool.table_file
    if copy_gb is None or image is None or not source:
        return None
    path = Path(source["path"]).resolve()
    if not path.is_file():
        raise MissingInput("the node table's feature file went away while the run trained",
                           path=path, rerun="train")
    found = _table_file(path)
    if np.prod(found["shape"]) * np.dtype(found["dtype"]).itemsize <= copy_gb * 1e9:
        return None
    if (found["fingerprint"] != source.get("fingerprint")
            or tuple(found["shape"]) != tuple(image.table.shape)):
        raise StaleArtifact("the node table's feature file changed while the run trained",
                            input="features", path=path, rerun="train")
    return {**found, "path": str(path),
            "relative": os.path.relpath(path, Path(run_dir).resolve())}


def referenced_table(ref: dict, run_dir: Path) -> FeatureRows:
    """The node table a ``pool.h5`` refers to, read by rows: the feature file at its recorded
    absolute path, at its path relative to the run folder, or in the run folder itself, the
    first whose fingerprint, shape and dtype are the recorded ones. Else a ``StaleArtifact``
    (a file there with other content) or a ``MissingInput``."""
    run_dir = Path(run_dir)
    relative = Path(os.path.normpath(run_dir / ref["relative"]))
    places = dict.fromkeys([Path(ref["path"]), relative, run_dir / Path(ref["path"]).name])
    wanted = {key: ref[key] for key in ("fingerprint", "shape", "dtype")}
    changed = None
    for place in places:
        if not place.is_file():
            continue
        try:
            found = _table_file(place)
        except (OSError, KeyError):
            found = {"fingerprint": "unreadable"}
        if found == wanted:
            return FeatureRows(place, ref["shape"], ref["dtype"])
        changed = changed or (place, found)
    hint = "copy the feature file into the run folder"
    if changed:
        place, found = changed
        raise StaleArtifact(f"is not the node table this run refers to (fingerprint "
                            f"{found['fingerprint'][:12]}, the run's {ref['fingerprint'][:12]})",
                            input="features", path=place, rerun="train", hint=hint)
    raise MissingInput(f"feature file not found: this run's node table is read from it (too "
                       f"large to copy into {POOL_FILE}; fingerprint {ref['fingerprint'][:12]})",
                       path=ref["path"], rerun="train", hint=hint)


def _node_table(group, path: Path) -> FeatureRows:
    """``image``'s node table read by rows: its ``table`` or the file ``table_ref`` names."""
    if "table" in group:
        table = group["table"]
        return FeatureRows(path, table.shape, table.dtype, name=table.name)
    return referenced_table(decode_attrs(group.attrs)["table_ref"], path.parent)


def read_pool(path) -> RunPool:
    """The ``RunPool`` stored in ``path`` (``write_pool``); the node table is read by rows,
    never whole (``_node_table``), the search vectors stay float16."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as h5:
            attrs = decode_attrs(h5.attrs)
            if attrs.get("format") not in (FORMAT, REF_FORMAT):
                raise CorruptInput(f"pool format {attrs.get('format')} is not {FORMAT} or "
                                   f"{REF_FORMAT} (written by another version)", path=path,
                                   rerun="train")
            pool = RunPool(node_attrs=attrs.get("node_attrs") or None)
            if "image" in h5:
                group = h5["image"]
                table_ids = list(group["table_id"].asstr()[()])
                pool.image = ImageInputs(list(group["item_id"].asstr()[()]),
                                         _node_table(group, path),
                                         *(group[name][()] for name in IMAGE_ARRAYS),
                                         view=str(group.attrs["view"]),
                                         table_ids=table_ids or None)
            for name, group in (h5["search"].items() if "search" in h5 else ()):
                side = decode_attrs(group.attrs)
                pool.search[name] = SearchPool(
                    side["relation"], list(group["pool_id"].asstr()[()]), group["xb"][()],
                    side["query"], side.get("graph_fingerprint") or None)
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
