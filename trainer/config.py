"""The one place where the tagger's defaults live: ``TrainConfig`` with nested ``ModelConfig`` and
``OptimConfig``. Frozen, validated in ``__post_init__``, and written to / read from JSON so a run's
``config.json`` loads straight back (``TrainConfig.from_json(path)``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.artifacts import atomic_path
from pipeline.errors import InvalidConfig
from pipeline.graphs import INTRA_VIEWS

NODE_VIEWS = ("auto", "region_grid", "image_global")
REGION_POOLS = ("attention", "mean")
GRAPH_SOURCES = ("ours", "rgcn")
CONTEXTS = ("none", "inter", "intra", "text")
POOLS = ("all", "train")
PRECISIONS = ("auto", "bf16", "fp32")
NODE_TABLES = ("auto", "device", "host")


def _check(condition: bool, message: str, setting: str | None = None) -> None:
    """Refuse a value: ``setting`` names the field whose value is at fault (the CLI words how to
    change it)."""
    if not condition:
        raise InvalidConfig(message, setting=setting)


@dataclass(frozen=True)
class ModelConfig:
    """What the tagger is. ``text_only`` switches every image input off (and with it the graphs and
    the gate); ``inter``/``intra`` switch one relation graph off (the tweet's own image stays);
    ``gate=False`` fuses by plain addition; ``shape=False`` drops the word-shape features.
    ``context`` appends the tweets paired with the first ``context_k`` neighbours of one graph
    (``inter``: the images the tweet's text points to; ``intra``: the images like the tweet's own;
    ``text``: the most similar tweets, no image involved) to the encoder input, after the tweet,
    within ``context_subwords`` extra subwords; independent of ``text_only``. ``context_labels``
    marks the entity spans of the neighbours that are train tweets (train labels only; valid and
    test neighbours give words only; see ``trainer.context``).
    ``encoder="auto"`` picks the best offline encoder for the device
    (``pipeline.packaged.best_available_text_encoder``); the run records the name it chose."""

    encoder: str = "minilm-l6"
    text_only: bool = False
    inter: bool = True
    intra: bool = True
    gate: bool = True
    shape: bool = True
    k: int = 5                        # neighbours per relation used from the graph files
    node_view: str = "auto"           # auto: region grids if extracted, else image_global vectors
    region_pool: str = "attention"    # how a region grid (R x D) becomes one node vector
    graph_dim: int = 256
    gcn_layers: int = 1
    heads: int = 4
    dropout: float = 0.1
    max_subwords: int = 128
    bio_constraints: bool = True      # Viterbi decoding never outputs an I-X that continues nothing
    context: str = "none"             # none, inter, intra or text: the graph giving the tweets
    context_k: int = 3                # neighbour tweets appended
    context_subwords: int = 96        # subword budget of the appended tweets (with separators)
    context_labels: bool = False      # train neighbours' tweets with their entity spans marked

    def __post_init__(self):
        if self.text_only:  # one switch: no image information at all, so nothing image-side is on
            for name in ("inter", "intra", "gate"):
                object.__setattr__(self, name, False)
        _check(bool(self.encoder), "model.encoder must name an encoder, e.g. minilm-l6")
        _check(1 <= self.k <= 100, f"model.k must be in 1..100, got {self.k}", "k")
        _check(self.node_view in NODE_VIEWS,
               f"model.node_view must be one of {', '.join(NODE_VIEWS)}, got {self.node_view!r}")
        _check(self.region_pool in REGION_POOLS, "model.region_pool must be one of "
               f"{', '.join(REGION_POOLS)}, got {self.region_pool!r}")
        _check(self.graph_dim > 0 and self.heads > 0 and self.graph_dim % self.heads == 0,
               f"model.graph_dim ({self.graph_dim}) must be a positive multiple of model.heads "
               f"({self.heads})")
        _check(1 <= self.gcn_layers <= 8,
               f"model.gcn_layers must be in 1..8, got {self.gcn_layers}")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(self.max_subwords >= 8, f"model.max_subwords must be >= 8, got {self.max_subwords}",
               "max_subwords")
        _check(self.context in CONTEXTS, f"model.context must be one of {', '.join(CONTEXTS)}, "
               f"got {self.context!r}")
        _check(1 <= self.context_k <= 100, f"model.context_k must be in 1..100, got "
               f"{self.context_k}", "context_k")
        _check(self.context_subwords >= 8,
               f"model.context_subwords must be >= 8, got {self.context_subwords}",
               "context_subwords")
        _check(not self.context_labels or self.context != "none",
               "model.context_labels marks the neighbour tweets of a context; choose a context "
               "graph", "context")

    @property
    def uses_image(self) -> bool:
        return not self.text_only

    def variant(self) -> str:
        """A short name for the ablation: full, text-only, no-inter, no-intra, no-graphs, ..."""
        if self.text_only:
            parts = ["text-only"]
        elif not self.inter and not self.intra:
            parts = ["no-graphs"]
        else:
            parts = [] + (["no-inter"] if not self.inter else []) + (
                ["no-intra"] if not self.intra else [])
        parts += (["no-gate"] if self.uses_image and not self.gate else []) + (
            ["no-shape"] if not self.shape else [])
        name = "-".join(parts) or "full"
        if self.context == "none":
            return name
        return f"{name}-ctx-{self.context}" + ("-labels" if self.context_labels else "")


@dataclass(frozen=True)
class OptimConfig:
    """How it is trained: AdamW with two learning rates, linear warm-up then linear decay to zero,
    gradient clipping, early stopping on the validation F1 (conlleval mode)."""

    epochs: int = 15
    batch_size: int = 16
    eval_batch_size: int = 64
    lr_encoder: float = 1e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1               # fraction of all steps
    clip: float = 1.0
    patience: int = 4                 # epochs without a better valid F1 before stopping
    cuda_graphs: bool = True          # on CUDA, replay each step as a CUDA graph (trainer.steps)
    length_buckets: int = 0           # >0: batches of similar length, sorted in chunks of this
                                      # many batches (trainer.loop.LengthBuckets); 0: random batches

    def __post_init__(self):
        _check(self.epochs >= 1, f"optim.epochs must be >= 1, got {self.epochs}", "epochs")
        _check(self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1")
        _check(self.lr_encoder >= 0 and self.lr_head > 0,
               "optim.lr_encoder must be >= 0 (0 freezes the encoder) and optim.lr_head > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        _check(0.0 <= self.warmup < 1.0, f"optim.warmup must be in [0, 1), got {self.warmup}")
        _check(self.clip > 0, f"optim.clip must be > 0, got {self.clip}")
        _check(self.patience >= 1, f"optim.patience must be >= 1, got {self.patience}",
               "patience")
        _check(self.length_buckets >= 0,
               f"optim.length_buckets must be >= 0, got {self.length_buckets}", "length_buckets")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, the cached inputs to use, model, optimiser, seed and device.

    ``features``/``inter_graph``/``intra_graph``/``context_graph`` name files explicitly; left as
    None they come from the manifests that ``extract`` and ``build-graphs`` wrote for the dataset
    (``graph_source`` picks ours or the authors' imported lists). ``pool`` is the pool the graphs
    must have been built over (``all`` = transductive, the paper's; ``train`` = inductive).
    ``intra_view`` picks which of our intra graphs the run reads from the manifest, for the
    relation and for ``context="intra"``: the one built from object-type vectors, or the one
    built from ``image_global`` vectors (with captions: image text -> other images' text).
    """

    data_dir: str
    artifacts: str = "artifacts"
    seed: int = 1
    device: str = "auto"
    precision: str = "auto"           # auto: bf16 autocast on CUDA, fp32 on CPU
    deterministic: bool = False
    graph_source: str = "ours"
    pool: str = "all"
    intra_view: str = "object_types"
    features: str | None = None
    inter_graph: str | None = None
    intra_graph: str | None = None
    context_graph: str | None = None
    slug: str | None = None
    checkpoint: bool = True           # False: no weights saved (about 90 MB a MiniLM run)
    node_table: str = "auto"          # device, host or auto (by node_table_budget_gb)
    node_table_budget_gb: float = 8.0
    pool_copy_gb: float = 4.0         # pool.h5 copies a node table up to this size, else refers
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        for name in ("data_dir", "artifacts", "features", "inter_graph", "intra_graph",
                     "context_graph"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
        _check(self.graph_source in GRAPH_SOURCES, "graph_source must be one of "
               f"{', '.join(GRAPH_SOURCES)}, got {self.graph_source!r}")
        _check(self.pool in POOLS, f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        _check(self.intra_view in INTRA_VIEWS, f"intra_view must be one of "
               f"{', '.join(INTRA_VIEWS)}, got {self.intra_view!r}", "intra_view")
        _check(self.intra_view == INTRA_VIEWS[0] or self.graph_source == "ours",
               f"the authors' graphs have no intra graph from {self.intra_view}; use our graphs "
               "for it", "graph_source")
        _check(self.precision in PRECISIONS,
               f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(self.node_table in NODE_TABLES, f"node_table must be one of "
               f"{', '.join(NODE_TABLES)}, got {self.node_table!r}", "node_table")
        _check(self.node_table_budget_gb >= 0, "node_table_budget_gb must be >= 0, got "
               f"{self.node_table_budget_gb}", "node_table_budget_gb")
        _check(self.pool_copy_gb >= 0, f"pool_copy_gb must be >= 0, got {self.pool_copy_gb}",
               "pool_copy_gb")
        _check(self.slug is None or (
            self.slug and all(c.isalnum() or c in "-_." for c in self.slug)),
            f"slug {self.slug!r} may hold only letters, digits, '-', '_' and '.'", "slug")

    def variant(self) -> str:
        """``model.variant()``, plus ``-intra-text`` when the run reads the intra graph built from
        the image_global vectors (for the relation or the context)."""
        name = self.model.variant()
        reads_intra = (self.model.intra and self.model.uses_image) or self.model.context == "intra"
        return name + ("-intra-text" if reads_intra and self.intra_view == "image_global" else "")

    def table_on_host(self, rows: int, node_shape: tuple[int, ...]) -> bool:
        """Whether ``node_table`` puts a table of ``rows`` x ``node_shape`` on the host."""
        if self.node_table != "auto":
            return self.node_table == "host"
        cells = rows
        for size in node_shape:
            cells *= size
        return 4 * cells > self.node_table_budget_gb * 1e9

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            with atomic_path(path) as tmp:
                Path(tmp).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "TrainConfig":
        data = dict(data)
        for key, kind in NESTED.items():
            if key in data:
                data[key] = _build(kind, data[key], f"{where}: {key}")
        return _build(cls, data, where)

    def with_overrides(self, **values) -> "TrainConfig":
        """A copy with fields set by their names, whichever dataclass holds them: ``k``,
        ``epochs``, ``inter``, ``pool``... (``field_groups`` says where each name lives)."""
        groups = field_groups()
        nested: dict[str, dict] = {"": {}, "model": {}, "optim": {}}
        for name, value in values.items():
            if name not in groups:
                raise InvalidConfig(f"unknown setting {name!r}", value=name,
                                    hint=f"valid settings: {', '.join(sorted(groups))}")
            nested[groups[name]][name] = value
        return dataclasses.replace(
            self, **nested[""], model=dataclasses.replace(self.model, **nested["model"]),
            optim=dataclasses.replace(self.optim, **nested["optim"]))

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidConfig("config file not found", path=path) from None
        except (OSError, UnicodeDecodeError) as err:   # a folder, no permission, not text
            why = getattr(err, "strerror", None) or type(err).__name__
            raise InvalidConfig(f"cannot read the config file ({why})", path=path) from None
        except json.JSONDecodeError as err:
            raise InvalidConfig(f"not valid JSON ({err.msg})", path=path,
                                line=err.lineno) from None
        return cls.from_dict(data, str(path))


def field_groups() -> dict[str, str]:
    """Each setting's name -> the part of ``TrainConfig`` that holds it: ``""`` (the run itself),
    ``"model"`` or ``"optim"``. Read from the dataclasses; no name is in two of them."""
    groups = {f.name: "" for f in dataclasses.fields(TrainConfig) if f.name not in NESTED}
    for part, kind in NESTED.items():
        groups.update({f.name: part for f in dataclasses.fields(kind)})
    return groups


NESTED = {"model": ModelConfig, "optim": OptimConfig}


def _build(kind, data, where: str):
    if not isinstance(data, dict):
        raise InvalidConfig(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidConfig(f"{where}: unknown key {unknown[0]!r}; valid keys: "
                            f"{', '.join(sorted(names))}")
    try:
        return kind(**data)
    except TypeError as err:
        raise InvalidConfig(f"{where}: {err}") from None
