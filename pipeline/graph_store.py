"""Graph artefacts on disk: ``<artifacts>/graphs/<dataset>/<relation>-<source>-<fp12>.h5``.

HDF5 datasets: ``query_id`` (n,) str, every tweet of the dataset (train, valid, test); ``pool_id``
(m,) str, the candidate images; ``I`` (n, K) int64 rows into ``pool_id`` best first, -1 = none;
``D`` (n, K) float32 scores (edge weights; nan where ``I`` is -1); ``flagged`` (n,) bool, the
query had no usable vector and got no neighbours; ``flag_reason`` (n,) str; ``edge_index`` (2, E)
int64 (row 0 = neighbour's pool row, row 1 = query row: PyG source -> target) and ``edge_weight``
(E,) float32, both derived from I/D. Root attributes: relation, source, k, pool, metric, space,
dataset, inputs, config, environment, fingerprint, complete; also ranking ("cosine", "csls" or
"published"), backend, notes (what the build reported), recall_at_k (approximate builds only) and,
for imported lists, pool_unknown (neighbour ids that are not items of the dataset: no features
exist for them). Dict and list attributes are stored as JSON.

A file is written under ``.tmp`` and renamed when complete; it is reused only when its fingerprint
is the one the current inputs and configuration give.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import atomic_path, environment, read_manifest, write_json
from .errors import CacheMismatch, MissingInput, MnerError

JSON_ATTRS = ("inputs", "config", "environment", "pool_unknown", "notes")


@dataclass
class Graph:
    """Top-K neighbour lists: ``I`` indexes ``pool_ids``, rows follow ``query_ids``."""

    query_ids: list[str]
    pool_ids: list[str]
    I: np.ndarray
    D: np.ndarray
    flagged: np.ndarray
    attrs: dict = field(default_factory=dict)
    path: Path | None = None
    flag_reason: list[str] | None = None

    def __post_init__(self):
        self._rows = {item: row for row, item in enumerate(self.query_ids)}

    @property
    def k(self) -> int:
        return self.I.shape[1]

    @property
    def name(self) -> str:
        """``inter``/``intra`` for our graphs, ``inter-rgcn``/``intra-rgcn`` for imported ones."""
        source = self.attrs.get("source", "ours")
        return self.attrs["relation"] + ("" if source == "ours" else f"-{source}")

    def lookup(self, item_ids, k: int | None = None):
        """``(I, D, flagged)`` for these query ids: pool rows (-1 = none), scores, flags.

        ``k`` keeps the first k columns (the best k). An id that is not a query raises.
        """
        k = self.k if k is None else k
        if not 1 <= k <= self.k:
            raise MnerError(f"{self.path}: asked for {k} neighbours but the graph has {self.k}; "
                            f"rebuild it with --k {k}")
        try:
            rows = np.array([self._rows[i] for i in item_ids], dtype=np.int64)
        except KeyError as err:
            raise MnerError(f"{self.path}: item {err.args[0]} is not a query of this graph; "
                            "rebuild the graph for this dataset") from None
        return self.I[rows, :k], self.D[rows, :k], self.flagged[rows]

    def neighbours(self, item_ids, k: int | None = None):
        """``(ids, D)``: per query, the neighbour image ids best first (missing ones left out)."""
        I, D, _ = self.lookup(item_ids, k)
        ids = [[self.pool_ids[j] for j in row if j >= 0] for row in I]
        return ids, D

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """``edge_index`` (2, E): neighbour's pool row -> query row, and ``edge_weight`` (E,)."""
        q, j = np.nonzero(self.I >= 0)
        edge_index = np.stack([self.I[q, j], q]).astype(np.int64)
        return edge_index, self.D[q, j].astype(np.float32)


def graph_path(artifacts, dataset: str, relation: str, source: str, fp: str) -> Path:
    return Path(artifacts) / "graphs" / dataset / f"{relation}-{source}-{fp[:12]}.h5"


def _strings(values):
    import h5py
    return np.array(list(values), dtype=h5py.string_dtype())


def write_graph(graph: Graph, final) -> Path:
    """Write ``graph`` atomically; ``attrs['fingerprint']`` must be set by the caller."""
    import h5py

    final = Path(final)
    with atomic_path(final) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("query_id", data=_strings(graph.query_ids))
            h5.create_dataset("pool_id", data=_strings(graph.pool_ids))
            h5.create_dataset("I", data=graph.I.astype(np.int64))
            h5.create_dataset("D", data=graph.D.astype(np.float32))
            h5.create_dataset("flagged", data=graph.flagged.astype(bool))
            reasons = graph.flag_reason or [""] * len(graph.query_ids)
            h5.create_dataset("flag_reason", data=_strings(reasons))
            edge_index, edge_weight = graph.edges()
            h5.create_dataset("edge_index", data=edge_index)
            h5.create_dataset("edge_weight", data=edge_weight)
            attrs = dict(graph.attrs, environment=environment())
            for key, value in attrs.items():
                h5.attrs[key] = json.dumps(value, sort_keys=True) if key in JSON_ATTRS else value
            h5.attrs["complete"] = True
    graph.path = final
    return final


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def read_attrs(path) -> dict:
    import h5py

    with h5py.File(path, "r") as h5:
        attrs = {key: _decode(value) for key, value in h5.attrs.items()}
    for key in JSON_ATTRS:
        if isinstance(attrs.get(key), str):
            attrs[key] = json.loads(attrs[key])
    return attrs


def read_graph(path) -> Graph:
    """Load a graph file written by ``write_graph`` (refuses an incomplete one)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: graph file not found; run `python cli.py build-graphs` first")
    attrs = read_attrs(path)
    if not attrs.get("complete"):
        raise CacheMismatch(f"{path}: incomplete graph file; delete it or run build-graphs "
                            "with --overwrite")
    with h5py.File(path, "r") as h5:
        return Graph(query_ids=list(h5["query_id"].asstr()[()]),
                     pool_ids=list(h5["pool_id"].asstr()[()]),
                     I=h5["I"][()], D=h5["D"][()], flagged=h5["flagged"][()].astype(bool),
                     attrs=attrs, path=path,
                     flag_reason=(list(h5["flag_reason"].asstr()[()]) if "flag_reason" in h5
                                  else None))


def reusable(path, fp: str, overwrite: bool) -> bool:
    """True when ``path`` holds a complete graph with fingerprint ``fp``; False when it must be
    (re)built. A file that differs raises ``CacheMismatch`` unless ``overwrite``."""
    path = Path(path)
    if not path.exists():
        return False
    if overwrite:
        path.unlink()
        return False
    try:
        attrs = read_attrs(path)
    except OSError as err:
        raise CacheMismatch(f"{path}: unreadable graph file ({err}); rerun build-graphs with "
                            "--overwrite to replace it") from None
    if attrs.get("complete") and attrs.get("fingerprint") == fp:
        return True
    raise CacheMismatch(f"{path}: exists but was built from other inputs or settings "
                        f"(fingerprint {str(attrs.get('fingerprint'))[:12]}, expected {fp[:12]}); "
                        "rerun build-graphs with --overwrite to replace it")


def manifest_path(artifacts, dataset: str) -> Path:
    return Path(artifacts) / "graphs" / dataset / "manifest.json"


def update_graph_manifest(artifacts, dataset: str, built: dict[str, Path]) -> Path:
    """Record the graphs just built (``name -> file``) in the dataset's manifest, keeping others."""
    path = manifest_path(artifacts, dataset)
    current = json.loads(path.read_text()) if path.is_file() else {"dataset": dataset, "graphs": {}}
    current["graphs"].update({name: Path(file).name for name, file in built.items()})
    write_json(path, current)
    return path


def load_graph_manifest(artifacts, dataset: str) -> dict[str, Path]:
    """``{"inter": path, "intra": path, "inter-rgcn": path, ...}`` from the dataset's manifest."""
    return read_manifest(manifest_path(artifacts, dataset), "graphs",
                         f"no graphs for {dataset}; run `python cli.py build-graphs --data-dir "
                         f"<folder of {dataset}>` first", "build-graphs")
