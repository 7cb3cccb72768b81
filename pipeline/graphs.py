"""Neighbour graphs from cached features: for every tweet its top-K images, per relation.

- ``inter`` (inter-modal): the tweet's ``text`` vector against the ``image_global`` vectors of the
  pool; both views must live in the same space (e.g. the sentence encoder applied to the tweet and
  to a caption of the image), else ``SpaceMismatch``.
- ``intra`` (intra-modal): the ``object_types`` vector of the tweet's own image against the others'
  (``intra_view="object_types"``, the default), or with ``intra_view="image_global"`` the own
  image's ``image_global`` vector against the others' (with captions or another image-text source
  that is the embedding of the image's text: image text -> other images' text). The view is
  recorded in the graph (attrs ``views``, the fingerprint) and in its manifest key
  (``intra:image_global``), so both intra graphs live side by side.
- ``text`` (no image involved, built only on request): the tweet's ``text`` vector against the
  other tweets' ``text`` vectors; the control for retrieval through images (context ``text``).

Cosine similarity (inner product of L2-normalised vectors), exact search by default (see
``search.py``). The pool is every image of the dataset (``pool="all"``, the paper's transductive
setting: images, never labels) or the train images only (``pool="train"``, inductive); either way
it includes the dataset's unlabelled ``pool`` split when it has one (external pairs, not test
data). The queries are the labelled splits' items only (``Dataset.query_ids``): a pool split of
a million pairs costs a million pool rows, not a million searches (with CSLS, the pool side's
radius r_b is measured against those queries). A query with no usable vector (``valid=False``,
all-zero) gets no neighbours and is flagged; such pool images are left out. The tweet's own image
and exact duplicates of it (same ``content_sha256``) are never neighbours. ``hubness="csls"``
ranks by CSLS, 2cos(q,b) - r_q - r_b (r: mean cosine to one's ``csls_k`` nearest on the other
side), exactly, through an augmented inner product; ``D`` keeps the cosine of the chosen
neighbours as edge weight.

Ties: sparse object-type vectors give massive exact ties (most images share {person}); any exact
search then returns the lowest pool rows, and one image becomes a hub by row order alone (54% of
TWITTER-2017 lists with ``ties="index"``). ``ties="random"`` (default) adds two seeded random
columns whose inner product shifts each (query, pool) score by at most ``TIE_SCALE`` = 1e-5, so
ties are broken per pair; ``D`` is the unshifted cosine. ``ties="index"`` means the lower pool row
wins a tie, exactly: its exact search is ``sharded_search`` (pipeline/sharded_search.py), whose
rule that is however the pool is split.

Under ``torchrun`` (pipeline/distributed.py) the exact search is shared: each rank holds its
blocks of the pool, the ranks merge their top-k (``sharded_search``), rank 0 writes the files; the
files are the ones one process writes (same fingerprints, same neighbours).

Memory: where the search is ``sharded_search`` (under ``torchrun``, ``ties="index"``, or a
relation whose whole-table search would take more than ``memory_gb``: ``graph_rank.streams``)
build-graphs streams. The feature files are read by rows
(``read_feature_rows``): a validity pass per file, then blocks of queries and of the pool through
row views (``row_views.FileRows``, CSLS and tie columns appended per block); the cosine of the
chosen pairs comes from the search's own scores (``graph_rank.rank_streamed``). Nothing holds a
whole feature table; what stays is per-row bookkeeping (ids, masks, reasons, ``D``, ``I``, the
16 tie columns) and ``sharded_search``'s pool shard on its device (a rank's share of the
normalised pool, float32; on the CPU that is host memory). Otherwise (one process,
``ties="random"`` within ``memory_gb``, or an approximate index) the faiss / torch backends of
``search`` take whole arrays: the views are read whole (``graph_rank.rank``).

The authors' published lists are imported into the same format by ``graph_import.import_rgcn``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import store
from .artifacts import fingerprint, ids_fingerprint
from .data import POOL, Dataset
from .distributed import Distributed
from .errors import InvalidConfig, MissingInput, MnerError, SpaceMismatch
from .features import load_manifest, read_feature_rows, read_features
from .graph_import import import_rgcn
from .graph_rank import TIE_DIMS, TIE_SCALE, rank, rank_streamed, streams
from .graph_store import (BuildResult, Graph, graph_path, load_graph_manifest, read_graph,
                          reusable, update_graph_manifest, write_graph)
from .progress import no_progress
from .row_views import FileRows, check_table, usable_rows
from .search import APPROX, BACKENDS, same_item_pairs, search

__all__ = ["GraphConfig", "BuildResult", "build_graphs", "resolve_features", "read_graph",
           "load_graph_manifest", "search", "Graph", "TIE_SCALE", "TIE_DIMS"]

FORMAT_VERSION = 1
RELATIONS = ("inter", "intra", "text")
DEFAULT_RELATIONS = ("inter", "intra")
VIEWS = {"inter": ("text", "image_global"), "intra": ("object_types", "object_types"),
         "text": ("text", "text")}
INTRA_VIEWS = ("object_types", "image_global")     # what the intra graph compares (intra_view)
POOLS = {"all": ("train", "valid", "test", POOL), "train": ("train", POOL)}   # candidate splits
HUBNESS = ("none", "csls")
TIES = ("random", "index")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidConfig(message)


# Peak host memory of the whole-table search over its float32 query and pool tables (the tables
# read whole, their normalised copies, the stacked tie columns): 3.1-3.4x measured by
# bench/bench_pool.py (50k items, 384-d, 2-core CPU); 4 leaves room for the search's buffers.
IN_MEMORY_FACTOR = 4


@dataclass(frozen=True)
class GraphConfig:
    """How graphs are built. ``relations=()`` builds none of ours (import only). ``backend``,
    ``device``, ``recall_sample``, ``memory_gb`` and ``stream`` do not change exact results (the
    neighbours are exact either way, up to float32 rounding of near-ties) and are not in the
    fingerprint. A relation whose whole-table search would take more than ``memory_gb`` (host
    memory, ``IN_MEMORY_FACTOR`` times its query and pool tables as float32) is streamed from its
    feature files (as under torchrun); ``stream`` forces that."""

    k: int = 5
    pool: str = "all"
    hubness: str = "none"
    csls_k: int = 10
    approx: str | None = None
    ties: str = "random"
    seed: int = 0
    relations: tuple[str, ...] = DEFAULT_RELATIONS
    backend: str = "auto"
    device: str = "auto"
    recall_sample: int = 1000
    intra_view: str = "object_types"
    memory_gb: float = 8.0
    stream: bool = False

    def __post_init__(self):
        object.__setattr__(self, "relations", tuple(self.relations))
        _check(1 <= self.k <= 1000, f"graph k must be in 1..1000, got {self.k}")
        _check(self.pool in POOLS,
               f"graph pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        _check(self.hubness in HUBNESS,
               f"hubness must be one of {', '.join(HUBNESS)}, got {self.hubness!r}")
        _check(self.ties in TIES, f"ties must be one of {', '.join(TIES)}, got {self.ties!r}")
        _check(self.csls_k >= 1, f"csls_k must be at least 1, got {self.csls_k}")
        _check(self.approx in (None, *APPROX),
               f"approx must be one of {', '.join(APPROX)} or none, got {self.approx!r}")
        _check(self.backend in BACKENDS,
               f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        _check(set(self.relations) <= set(RELATIONS),
               f"relations must be among {', '.join(RELATIONS)}, got {', '.join(self.relations)}")
        _check(self.intra_view in INTRA_VIEWS, f"intra_view must be one of "
               f"{', '.join(INTRA_VIEWS)}, got {self.intra_view!r}")
        _check(self.memory_gb > 0, f"memory_gb must be positive, got {self.memory_gb}")

    def recipe(self) -> dict:
        """The settings that change the graph (its fingerprint)."""
        return {"k": self.k, "pool": self.pool, "metric": "cosine", "hubness": self.hubness,
                "csls_k": self.csls_k if self.hubness == "csls" else None, "approx": self.approx,
                "ties": self.ties, "seed": self.seed if self.ties == "random" else None}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def manifest_key(relation: str, source: str = "ours", pool: str = "all",
                 intra_view: str = INTRA_VIEWS[0]) -> str:
    """A graph's name in the build-graphs manifest: ``inter``, ``intra``, ``text`` (ours, pool
    all), ``inter-rgcn`` / ``intra-rgcn`` (the authors'), ``inter@train`` (ours over the train
    pool), ``intra:image_global`` (ours, intra from another view than object types), so that
    graphs of both pools and both intra views live side by side."""
    name = relation if source == "ours" else f"{relation}-{source}"
    if relation == "intra" and intra_view != INTRA_VIEWS[0]:
        name = f"{name}:{intra_view}"
    return name if pool == "all" else f"{name}@{pool}"


def relation_views(relation: str, intra_view: str = INTRA_VIEWS[0]) -> tuple[str, str]:
    """``(query view, pool view)`` a relation compares; ``intra_view`` picks the intra one."""
    return (intra_view, intra_view) if relation == "intra" else VIEWS[relation]


def graph_views(attrs: dict) -> tuple[str, str]:
    """``(query view, pool view)`` a graph file was built from (its ``views`` attribute; graphs
    written before it was recorded used the fixed ``VIEWS`` of their relation)."""
    views = attrs.get("views")
    return tuple(views) if views else VIEWS[attrs["relation"]]


def resolve_features(artifacts, key: str, given=()) -> dict[str, Path]:
    """Feature files by view: the extract manifest of the dataset ``key`` (``store.dataset_key``)
    by default, else the given manifest / files."""
    if not given:
        return {view: Path(p) for view, p in load_manifest(artifacts, key).items()}
    views: dict[str, Path] = {}
    for path in map(Path, given):
        if not path.is_file():
            raise MissingInput("feature file not found", path=path, setting="features")
        if path.suffix == ".json":
            entries = json.loads(path.read_text())["views"]
            views.update({v: path.parent / e["file"] for v, e in entries.items()})
        else:
            with h5py.File(path, "r") as h5:
                view = h5.attrs.get("view")
            if not view:
                raise MissingInput("not a feature file (no 'view' attribute)", path=path,
                                   setting="features",
                                   hint="give the files or manifest.json that extract wrote")
            views[view.decode() if isinstance(view, bytes) else str(view)] = path
    return views


@dataclass
class _View:
    name: str
    path: Path
    space: str
    fingerprint: str
    features: object            # FeatureSet
    sha: dict[str, str]
    inputs: dict                # the feature file's recorded data inputs
    ok: np.ndarray | None = None    # per file row: a usable vector (``_usable``)


def _table_bytes(views: dict[str, Path], names) -> int:
    """What the query and pool tables of a relation take as float32 (from the files' shapes;
    nothing is read). 0 when a view is missing (``_load_view`` says so)."""
    total = 0
    for name in dict.fromkeys(names):
        if name not in views:
            return 0
        with h5py.File(views[name], "r") as h5:
            total += 4 * int(np.prod(h5["features"].shape))
    return total


def _load_view(views: dict[str, Path], name: str, dataset: Dataset, artifacts,
               cache: dict, stream: bool) -> _View:
    """A view's features, refused when its recorded inputs differ from the dataset's content;
    with ``stream`` the vectors stay in the file (read by rows), else they are read whole."""
    if name not in views:
        raise MissingInput(f"no '{name}' features for {dataset.name} (have: "
                           f"{', '.join(sorted(views)) or 'none'})", value=name, rerun="extract",
                           stage="build-graphs")
    if name not in cache:
        fs = (read_feature_rows if stream else read_features)(views[name])
        recorded = fs.attrs.get("inputs") or {}
        store.check_inputs(recorded, store.CurrentInputs(dataset, artifacts), path=views[name],
                           stage="build-graphs", rerun="extract")
        cache[name] = _View(name, Path(views[name]), str(fs.attrs.get("space")),
                            str(fs.attrs.get("fingerprint")), fs, _content_hashes(fs), recorded)
    return cache[name]


def _content_hashes(fs) -> dict[str, str]:
    """``item_id -> content_sha256`` of an image view ({} when the file has none)."""
    import h5py

    values = getattr(fs, "content_sha256", None)
    if values is None:
        with h5py.File(fs.path, "r") as h5:
            if "content_sha256" not in h5:
                return {}
            values = h5["content_sha256"].asstr()[()]
    return {item: sha for item, sha in zip(fs.item_ids, values) if sha}


def _usable(view: _View, ids: list[str]):
    """File rows of ``ids``, which have a usable vector (valid, finite, non-zero; checked once
    per file, block by block) and why the others have none."""
    fs = view.features
    check_table(fs.features, view.path, view.name)
    if view.ok is None:
        view.ok = usable_rows(fs.features, fs.valid)
    rows = fs.row_numbers(ids)
    ok = view.ok[rows]
    reasons = ["" if good else f"{view.name}: " + (fs.reason[r] if not fs.valid[r]
                                                    else "all-zero vector")
               for r, good in zip(rows, ok)]
    return rows, ok, reasons


def _fingerprint(relation, dataset: Dataset, pool_ids, inputs, config: GraphConfig,
                 views: tuple[str, str]) -> str:
    payload = {"format": FORMAT_VERSION, "relation": relation, "source": "ours",
               "queries": ids_fingerprint(dataset.query_ids()),
               "pool_candidates": ids_fingerprint(pool_ids), "recipe": config.recipe(),
               "inputs": inputs}
    if views != VIEWS[relation]:      # only then: the fixed views' graphs keep their fingerprint
        payload["views"] = list(views)
    return fingerprint(payload)


def _neighbours(qv: _View, bv: _View, queries: list[str], live, pool_ids: list[str], q_rows,
                b_rows, config: GraphConfig, *, progress, info: dict, dist):
    """``(D, I)`` (len(queries), k): the usable queries ``live`` (file rows ``q_rows`` of
    ``qv``) against the usable pool (``b_rows`` of ``bv``), the own item and exact duplicates
    excluded; -1 / nan for the others. Streamed where the search is the sharded one."""
    sha = {**bv.sha, **qv.sha}
    exclude = same_item_pairs([(queries[r], sha.get(queries[r], "")) for r in live],
                              [(item, sha.get(item, "")) for item in pool_ids])
    xq, xb = FileRows(qv.features.features, q_rows, qv.ok), FileRows(bv.features.features,
                                                                     b_rows, bv.ok)
    if streams(config, dist):       # row views, read a block at a time
        D_live, I_live = rank_streamed(xq, xb, exclude, config, progress, info, dist)
    else:                           # search's backends take whole arrays
        D_live, I_live = rank(xq[:], xb[:], exclude, config, progress, info, dist)
    I = np.full((len(queries), config.k), -1, np.int64)
    D = np.full((len(queries), config.k), np.nan, np.float32)
    I[live], D[live] = I_live, D_live
    return D, I


def build_relation(relation: str, dataset: Dataset, views: dict[str, Path], artifacts,
                   config: GraphConfig, *, overwrite=False, progress=no_progress,
                   _cache: dict | None = None, dist=None) -> BuildResult:
    """Build (or reuse) one relation's graph file; see the module docstring. In a group
    (``dist``) every rank searches its share of the pool and rank 0 writes the file."""
    cache, dist = ({} if _cache is None else _cache), dist or Distributed()
    names = relation_views(relation, config.intra_view)
    if IN_MEMORY_FACTOR * _table_bytes(views, names) > config.memory_gb * 1e9:
        config = dataclasses.replace(config, stream=True)
    stream = streams(config, dist)
    qv, bv = (_load_view(views, name, dataset, artifacts, cache.setdefault(stream, {}), stream)
              for name in names)
    if qv.space != bv.space:
        raise SpaceMismatch(f"{relation} graph: {qv.name} features are in space {qv.space!r} but "
                            f"{bv.name} features in {bv.space!r}; extract both with the same "
                            "encoder/bridge")
    candidates = [i for split in POOLS[config.pool] if split in dataset.splits
                  for i in dataset.item_ids(split)]
    inputs = {**qv.inputs, **bv.inputs, **{f"features:{v.name}": {
        "file": v.path.name, "sha256": v.fingerprint} for v in (qv, bv)}}
    fp = _fingerprint(relation, dataset, candidates, inputs, config, names)
    path = graph_path(artifacts, store.dataset_key(dataset), relation, "ours", fp)
    name = manifest_key(relation, "ours", config.pool, config.intra_view)
    if reusable(path, fp, overwrite):
        return BuildResult(name, path, reused=True)
    queries = dataset.query_ids()
    q_rows, q_ok, reasons = _usable(qv, queries)
    b_rows, b_ok, _ = _usable(bv, candidates)
    pool_ids = [item for item, ok in zip(candidates, b_ok) if ok]
    if not pool_ids:
        raise MnerError(f"{bv.path}: no usable '{bv.name}' vector in the {config.pool} pool; "
                        "check the extract output")
    info: dict = {}
    live = np.nonzero(q_ok)[0]
    D, I = _neighbours(qv, bv, queries, live, pool_ids, q_rows[live], b_rows[b_ok], config,
                       progress=progress, info=info, dist=dist)
    notes = [f"{len(live)}/{len(queries)} queries searched, {len(queries) - len(live)} flagged; "
             f"pool {len(pool_ids)} images ({len(candidates) - len(pool_ids)} left out: invalid "
             f"or all-zero); backend {info.get('backend')}"]
    if "recall_at_k" in info:
        notes.append(f"approximate ({config.approx}) recall@{config.k} vs exact: "
                     f"{info['recall_at_k']:.4f} on {min(config.recall_sample, len(live))} queries")
    attrs = {"relation": relation, "source": "ours", "k": config.k, "pool": config.pool,
             "metric": "cosine", "ranking": "csls" if config.hubness == "csls" else "cosine",
             "views": list(names),
             "space": qv.space, "dataset": dataset.name, "inputs": inputs,
             "dataset_key": store.dataset_key(dataset),
             "config": config.as_dict(), "fingerprint": fp, "backend": str(info.get("backend")),
             "notes": notes}
    if "recall_at_k" in info:
        attrs["recall_at_k"] = info["recall_at_k"]
    if dist.is_main:
        write_graph(Graph(queries, pool_ids, I, D, ~q_ok, attrs, flag_reason=reasons), path)
    dist.barrier()
    return BuildResult(name, path, reused=False, notes=notes)


def build_graphs(dataset: Dataset, artifacts, config: GraphConfig, *, features=(),
                 rgcn_dir=None, overwrite=False, progress=no_progress) -> list[BuildResult]:
    """Build our relations (``config.relations``) and, with ``rgcn_dir``, import the authors' lists;
    record them in ``<artifacts>/graphs/<dataset>/manifest.json``.

    Under ``torchrun`` the ranks share the exact search (the pool split between them) and rank 0
    writes the files, the import and the manifest; every rank returns the results."""
    results = []
    with Distributed.from_env(device=config.device) as dist:
        if config.relations:
            views = resolve_features(artifacts, store.dataset_key(dataset), features)
            cache: dict = {}
            for relation in config.relations:
                results.append(build_relation(
                    relation, dataset, views, artifacts, config, overwrite=overwrite,
                    progress=progress if dist.is_main else no_progress, _cache=cache, dist=dist))
        if dist.is_main:
            if rgcn_dir is not None:
                results.extend(import_rgcn(dataset, rgcn_dir, artifacts, overwrite=overwrite))
            update_graph_manifest(artifacts, dataset, {r.name: r.path for r in results})
        dist.barrier()
        if not dist.is_main and rgcn_dir is not None:
            results.extend(import_rgcn(dataset, rgcn_dir, artifacts, overwrite=False))
    return results
