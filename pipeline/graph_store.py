"""Graph artefacts on disk: ``<artifacts>/graphs/<dataset key>/<relation>-<source>-<fp12>.h5``.

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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import atomic_path, environment
from .errors import CacheMismatch, MissingInput, MnerError
from .store import (dataset_key, manifest_entries, read_attrs, reusable as _reusable,
                    update_manifest, write_attrs)


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
            raise MnerError(f"asked for {k} neighbours but the graph has {self.k}",
                            path=self.path, value=k, rerun="build-graphs", setting="k")
        try:
            rows = np.array([self._rows[i] for i in item_ids], dtype=np.int64)
        except KeyError as err:
            raise MnerError(f"item {err.args[0]} is not a query of this graph", path=self.path,
                            value=err.args[0], rerun="build-graphs") from None
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


@dataclass
class BuildResult:
    name: str                # the manifest key: inter, intra, inter-rgcn, inter@train, ...
    path: Path
    reused: bool
    notes: list[str] = field(default_factory=list)


def graph_path(artifacts, key: str, relation: str, source: str, fp: str) -> Path:
    """``<artifacts>/graphs/<dataset key>/<relation>-<source>-<fp12>.h5``."""
    return Path(artifacts) / "graphs" / key / f"{relation}-{source}-{fp[:12]}.h5"


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
            write_attrs(h5, dict(graph.attrs, environment=environment()))
            h5.attrs["complete"] = True
    graph.path = final
    return final


def read_graph(path) -> Graph:
    """Load a graph file written by ``write_graph`` (refuses an incomplete one)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise MissingInput("graph file not found", path=path, rerun="build-graphs")
    attrs = read_attrs(path)
    if not attrs.get("complete"):
        raise CacheMismatch("incomplete graph file", path=path, rerun="build-graphs",
                            setting="overwrite")
    with h5py.File(path, "r") as h5:
        return Graph(query_ids=list(h5["query_id"].asstr()[()]),
                     pool_ids=list(h5["pool_id"].asstr()[()]),
                     I=h5["I"][()], D=h5["D"][()], flagged=h5["flagged"][()].astype(bool),
                     attrs=attrs, path=path,
                     flag_reason=(list(h5["flag_reason"].asstr()[()]) if "flag_reason" in h5
                                  else None))


def reusable(path, fp: str, overwrite: bool) -> bool:
    """The store's reuse rule for a graph file (``store.reusable``)."""
    return _reusable(path, fp, overwrite, stage="build-graphs")


def manifest_path(artifacts, key: str) -> Path:
    return Path(artifacts) / "graphs" / key / "manifest.json"


def update_graph_manifest(artifacts, dataset, built: dict[str, Path]) -> Path:
    """Record the graphs just built (``name -> file``) in the dataset's manifest, keeping others."""
    key = dataset_key(dataset)
    return update_manifest(manifest_path(artifacts, key), "graphs",
                           {name: Path(file).name for name, file in built.items()},
                           dataset=dataset.name, key=key)


def load_graph_manifest(artifacts, key: str) -> dict[str, Path]:
    """``{"inter": path, "intra": path, "inter-rgcn": path, ...}`` of the dataset's manifest."""
    path = manifest_path(artifacts, key)
    return {name: path.parent / entry["file"]
            for name, entry in manifest_entries(path, "graphs", "build-graphs").items()}
