"""What a training run reads: the dataset, the node features and the two relation graphs.

``load_inputs(config)`` finds the files (the manifests written by ``extract`` and ``build-graphs``
for the dataset, unless the config names files) and checks that they belong together: features and
graphs built for another dataset, graphs over another pool than the run asks for, or graphs whose
pool holds images the feature file does not know are refused with one line saying what to run.
``recorded_dataset(run_dir, data_dir)`` reads a saved run's dataset (from another folder when it
moved) and refuses data whose content is not the recorded one; ``inputs_from_record(run_dir)``
rebuilds the rest from the recorded files (runs without a ``pool.h5``, see ``trainer.pool``).

Node features: the run's ``node_view``, or with ``auto`` the region grids when they were extracted
and the ``image_global`` vectors otherwise. Neighbours and own images without a valid vector are
masked (-1), and counted in the record. The per-item arrays (own image, neighbours) have a row per
labelled item (``Dataset.query_ids``); the items of a ``pool`` split take no row there, while the
node table (the feature file's rows) holds their images: they are neighbours.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.artifacts import fingerprint
from pipeline.data import FORMATS, Dataset, load_dataset
from pipeline.errors import CacheMismatch, InvalidConfig, MissingInput
from pipeline.features import load_manifest, read_feature_rows
from pipeline.graph_store import load_graph_manifest, read_graph
from pipeline.graphs import graph_views, manifest_key

from .batches import ImageInputs
from .context import check_graph, load_context
from .config import TrainConfig

NODE_VIEWS = ("region_grid", "image_global")


@dataclass
class TrainInputs:
    """The dataset plus (for image models) the node table and neighbours; ``files`` says where
    they came from (paths, fingerprints, counts) and goes into ``inputs.json``."""

    dataset: Dataset
    image: ImageInputs | None = None
    files: dict = field(default_factory=dict)
    context: dict[str, list[str]] | None = None   # item -> neighbour tweet ids (model.context)

    def record(self, **extra) -> dict:
        return {"dataset": self.dataset.name, "data_dir": str(Path(self.dataset.root).resolve()),
                "splits": split_fingerprints(self.dataset), "image": self.files or None, **extra}


def split_fingerprints(dataset: Dataset) -> dict:
    return {name: {"tweets": len(tweets),
                   "sha256": fingerprint([[t.item_id, t.tokens, t.tags] for t in tweets])}
            for name, tweets in dataset.splits.items()}


def graph_key(relation: str, source: str, pool: str = "all",
              intra_view: str = "object_types") -> str:
    """The build-graphs manifest key of a relation's graph (the text graph is only ours)."""
    return manifest_key(relation, "ours" if relation == "text" else source, pool, intra_view)


def resolve_files(config: TrainConfig, dataset: Dataset) -> dict[str, Path]:
    """``{"features": path, "inter": path, "intra": path, "context": path}`` (features only for an
    image model, graphs only for the relations and the context in use)."""
    model, files, key = config.model, {}, store.dataset_key(dataset)
    if model.uses_image and config.features:
        files["features"] = Path(config.features)
    elif model.uses_image:
        views = load_manifest(config.artifacts, key)
        view = model.node_view if model.node_view != "auto" else next(
            (v for v in NODE_VIEWS if v in views), NODE_VIEWS[-1])
        if view not in views:
            raise MissingInput(f"no {view} features for {dataset.name} in {config.artifacts}",
                               value=view, stage="train", rerun="extract")
        files["features"] = Path(views[view])
    wanted = {r: graph_key(r, config.graph_source, config.pool, config.intra_view)
              for r, on in (("inter", model.inter), ("intra", model.intra)) if on}
    if model.context != "none":
        wanted["context"] = graph_key(model.context, config.graph_source, config.pool,
                                      config.intra_view)
    given = {"inter": config.inter_graph, "intra": config.intra_graph,
             "context": config.context_graph}
    if any(not given[r] for r in wanted):
        manifest = load_graph_manifest(config.artifacts, key)
    for name, graph in wanted.items():
        if given[name]:
            files[name] = Path(given[name])
        elif graph in manifest:
            files[name] = Path(manifest[graph])
        else:
            raise MissingInput(f"no {graph} graph for {dataset.name} in {config.artifacts}",
                               value=graph, stage="train", rerun="build-graphs")
    return files


def load_inputs(config: TrainConfig, log=None) -> TrainInputs:
    """The dataset of ``config.data_dir`` and, unless text-only, its node features and graphs."""
    dataset = load_dataset(config.data_dir)
    files = resolve_files(config, dataset)
    check_files(files, dataset, config.artifacts, "train")
    return _assemble(dataset, files, config, log)


def check_files(files: dict[str, Path], dataset: Dataset, artifacts, stage: str) -> None:
    """Refuse feature and graph files made from other data than ``dataset``'s current content,
    or graphs made from other feature files than the dataset's current ones (``StaleArtifact``
    naming the input and the stage to run again)."""
    current = store.CurrentInputs(dataset, artifacts)
    upstream = _current_features(artifacts, dataset)
    for name, path in files.items():
        attrs = store.read_attrs(path) if Path(path).is_file() else None
        if attrs is None:
            raise MissingInput(f"the {name} file is not there", path=path, stage=stage)
        if "inputs" not in attrs:
            raise store.StaleArtifact("records no inputs (made by an older version)",
                                      input="format", path=path, stage=stage,
                                      rerun="extract" if name == "features" else "build-graphs")
        store.check_inputs(attrs["inputs"], current, path=path, stage=stage, rerun="extract",
                           upstream=upstream)


def _current_features(artifacts, dataset: Dataset) -> dict[str, str]:
    """``features:<view> -> fingerprint`` of the dataset's feature manifest ({} without one)."""
    path = Path(artifacts, "features", store.dataset_key(dataset), "manifest.json")
    if not path.is_file():
        return {}
    entries = store.manifest_entries(path, "views", "extract")
    return {f"features:{view}": entry.get("fingerprint") for view, entry in entries.items()
            if entry.get("fingerprint")}


def _assemble(dataset: Dataset, files: dict[str, Path], config: TrainConfig,
              log=None) -> TrainInputs:
    """Image inputs (an image model) and neighbour context (``model.context``) from ``files``."""
    model = config.model
    inputs = TrainInputs(dataset)
    if model.uses_image:
        inputs = build_inputs(dataset, files, model.k, config.pool, model.node_view,
                              config.table_on_host)
        if log is not None:
            log(f"node features: {inputs.image.view} {list(inputs.image.node_shape)} from "
                f"{files['features']}; masked: {inputs.files['masked']}")
    if model.context != "none":
        inputs.context, inputs.files["context"] = load_context(
            files["context"], dataset, model.context_k, config.pool)
        if log is not None:
            log(f"context: {model.context_k} neighbour tweets by the {model.context} graph "
                f"{files['context']}; {inputs.files['context']['items_with_fewer']} items have "
                "fewer")
    return inputs


def build_inputs(dataset: Dataset, files: dict[str, Path], k: int, pool: str,
                 node_view: str = "auto", table_on_host=None) -> TrainInputs:
    """Join features and graphs to the dataset's items (by id) into ``ImageInputs``. The node
    table is read whole (float32) unless ``table_on_host(rows, node_shape)`` says it stays on the
    host: then ``ImageInputs.table`` is the file read by rows (``FeatureRows``)."""
    features = read_feature_rows(files["features"])
    on_host = table_on_host is not None and table_on_host(*_table_size(features.features))
    if not on_host:
        features.features = np.asarray(features.features)
    view = features.attrs.get("view")
    where = files["features"]
    if view not in NODE_VIEWS or node_view not in ("auto", view):
        raise InvalidConfig(f"{where}: holds {view} features; node features must be "
                            f"{node_view if node_view != 'auto' else ' or '.join(NODE_VIEWS)}")
    row_of = {item: row for row, item in enumerate(features.item_ids)}
    items = dataset.query_ids()     # the pool split's items are table rows (neighbours), not items
    missing = [i for i in items if i not in row_of]
    if missing:
        raise CacheMismatch(f"has no row for {len(missing)} item(s) of {dataset.name} "
                            f"(e.g. {missing[0]})", path=where, value=missing[0],
                            rerun="extract")
    rows = np.array([row_of[i] for i in items], dtype=np.int64)
    own = np.where(features.valid[rows], rows, -1)
    record = {"features": {"path": str(Path(where).resolve()),
                           "fingerprint": features.attrs.get("fingerprint"),
                           "view": view, "space": features.attrs.get("space"),
                           "shape": list(features.features.shape[1:])},
              "masked": {"own_image": int((own < 0).sum())}}
    neighbours = {}
    for relation in ("inter", "intra"):
        if relation not in files:
            neighbours[relation] = (np.full((len(items), k), -1, np.int64),
                                    np.zeros((len(items), k), np.float32))
            continue
        graph = read_graph(files[relation])
        check_graph(graph, files[relation], dataset, pool)
        I, D, flagged = graph.lookup(items, k)
        pool_rows = np.array([row_of.get(p, -1) for p in graph.pool_ids], dtype=np.int64)
        declared = set(graph.attrs.get("pool_unknown") or ())   # imported ids with no image
        unknown = sorted({graph.pool_ids[j] for j in I[I >= 0] if pool_rows[j] < 0} - declared)
        if unknown:
            raise CacheMismatch(f"its pool holds {len(unknown)} image(s) that {where.name} has no "
                                f"row for (e.g. {unknown[0]})", path=files[relation],
                                value=unknown[0], rerun="build-graphs")
        mapped = np.where(I >= 0, pool_rows[np.maximum(I, 0)], -1)
        mapped = np.where((mapped >= 0) & features.valid[np.maximum(mapped, 0)], mapped, -1)
        neighbours[relation] = (mapped, np.nan_to_num(D.astype(np.float32)))
        record[relation] = {"path": str(Path(files[relation]).resolve()),
                            "fingerprint": graph.attrs.get("fingerprint"),
                            "source": graph.attrs.get("source"), "pool": graph.attrs.get("pool"),
                            "k": k, "space": graph.attrs.get("space"),
                            "views": list(graph_views(graph.attrs))}
        record["masked"][relation] = {
            "flagged_queries": int(flagged.sum()),
            "missing_neighbours": int((mapped < 0).sum()),
            "not_in_dataset": int(sum(graph.pool_ids[j] in declared for j in I[I >= 0]))}
    image = ImageInputs(items, features.features, own, *neighbours["inter"], *neighbours["intra"],
                        view=view, table_ids=list(features.item_ids))
    return TrainInputs(dataset, image, record)


def _table_size(rows) -> tuple[int, tuple[int, ...]]:
    return rows.shape[0], tuple(rows.shape[1:])


def recorded_dataset(run_dir, data_dir=None) -> tuple[Dataset, dict]:
    """A saved run's dataset and its ``inputs.json``: from ``data_dir`` when given (a copy of the
    data in another place), else from the recorded folder; refused unless every split has the
    content the run was trained on (the recorded fingerprints)."""
    run_dir = Path(run_dir)
    path = run_dir / "inputs.json"
    if not path.is_file():
        raise MissingInput(f"{path}: not found; is {run_dir} a finished run folder?")
    record = json.loads(path.read_text())
    root = Path(data_dir if data_dir is not None else record["data_dir"])
    if not root.is_dir():
        raise MissingInput(f"the data folder of run {run_dir.name} is not there (moved or on "
                           "another machine)", path=root, setting="data_dir",
                           hint="give the folder that now holds the run's train, valid and test "
                                "files")
    dataset = load_dataset(root)
    now = split_fingerprints(dataset)
    for split, expected in record["splits"].items():
        if now.get(split, {}).get("sha256") != expected["sha256"]:
            name = f"{split}{FORMATS[dataset.format]}"
            raise store.StaleArtifact(f"{name} is not the data run {run_dir.name} was trained on "
                                      "(its content differs from the recorded fingerprint)",
                                      input=name, path=Path(dataset.root, name),
                                      stage="evaluate", rerun="train")
    return dataset, record


def inputs_from_record(run_dir, config: TrainConfig, data_dir=None) -> TrainInputs:
    """A saved run's inputs, rebuilt from its ``inputs.json`` and the recorded feature and graph
    files (runs without a ``pool.h5``); refuses changed data or files."""
    dataset, record = recorded_dataset(run_dir, data_dir)
    files = {}
    for name in ("features", "inter", "intra", "context"):
        entry = (record.get("image") or {}).get(name)
        if entry is None:
            continue
        files[name] = Path(entry["path"])
        _check_fingerprint(files[name], entry["fingerprint"], Path(run_dir), name)
    if files:
        check_files(files, dataset, Path(next(iter(files.values()))).parents[2], "evaluate")
    return _assemble(dataset, files, config)


def _check_fingerprint(path: Path, expected: str, run_dir: Path, name: str) -> None:
    if not path.is_file():
        raise MissingInput(f"the {name} file of run {run_dir.name} is gone", path=path,
                           hint="restore it or train again")
    found = store.read_attrs(path).get("fingerprint")
    if found != expected:
        raise store.StaleArtifact(f"changed since run {run_dir.name} was trained (fingerprint "
                                  f"{str(found)[:12]}, recorded {str(expected)[:12]})",
                                  input=name, path=path, hint="restore it or train again")
