"""The tagger: text encoder -> word states (+ word shape) -> relation graphs over neighbour
images -> attention + gate fusion -> emissions -> CRF.

- Words: the encoder's state at each word's first subword (gathered before the CRF, so the CRF
  sees one position per word and its mask starts on).
- InterRG: a star over the tweet's text node (a projection of the mean word state) and its K
  inter-modal neighbour images. IntraRG: a star over the tweet's own image node and its K
  intra-modal neighbours. Edge weights are the graph scores; ``gcn.star_adjacency`` adds
  self-loops and normalises (in the collator, on the CPU) into one dense block-diagonal matrix per
  example, so ``gcn_layers`` GCN layers with ReLU cost one ``baddbmm`` each for both relations.
  Without IntraRG the own image node is only projected (no graph); text-only has no image branch.
- CRF: pytorch-crf's parameters; likelihood and decoding batched on the device (``crf.py``).
- Fusion: tokens query the graph nodes (multi-head attention with a learned "nothing" slot whose
  value is zero, so a tweet without usable images gets no image vector), then
  ``h + g * v`` with ``g = sigmoid(W [h; v])`` (or ``h + v`` without the gate).

Saved as ``encoder/`` (the fine-tuned encoder: a folder ``AutoModel.from_pretrained`` loads) +
``model.safetensors`` (the other parameters) + ``model.json``: no pickles, loadable without flags
(``load_tagger``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CorruptInput, MissingInput

from .batches import SHAPE_FEATURES, Batch, NodeLayout
from .config import ModelConfig
from .crf import allowed_transitions, log_likelihood, viterbi
from .gcn import GCNLayer, RelationLinear

FORMAT_VERSION = 2   # 2: the relation graphs are one module (RelationGraphs)


class RegionPool(nn.Module):
    """(..., R, D) region grid -> (..., D): a learned attention query over regions, or the mean."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim)) if mode == "attention" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.query is None:
            return x.mean(dim=-2)
        weights = torch.softmax((x * self.query.to(x.dtype)).sum(-1), dim=-1)
        return (weights.unsqueeze(-1) * x).sum(dim=-2)


class RelationGraphs(nn.Module):
    """InterRG and/or IntraRG, one star graph per relation and example, through GCN layers.

    ``images`` (B, M, D): the image nodes of the graphs in ``NodeLayout.graph_images`` order
    (InterRG's K neighbours, then IntraRG's own image and K neighbours); ``center`` (B, 1, C):
    InterRG's text centre, which lives in another space and has its own projection;
    ``adjacency`` (B, G, G) block-diagonal (``Batch.adjacency``) -> node states (B, G, dim),
    G = (1 + K) per relation. Each relation has its own weights; one matmul serves both
    (``gcn.RelationLinear``). ReLU after each layer, dropout between layers.
    """

    def __init__(self, inter: bool, intra: bool, k: int, center_dim: int, node_dim: int,
                 dim: int, layers: int, dropout: float):
        super().__init__()
        slots = (1 + k,) * (int(inter) + int(intra))           # graph slots, per relation
        images = (k,) * int(inter) + (1 + k,) * int(intra)     # their image slots (no text)
        self.node_proj = RelationLinear(node_dim, dim, images)
        self.center_proj = nn.Linear(center_dim, dim) if inter else None
        self.layers = nn.ModuleList(GCNLayer(dim, dim, slots) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, images, adjacency, center=None) -> torch.Tensor:
        x = self.node_proj(images)
        if self.center_proj is not None:   # the text centre first, in its own projection
            x = torch.cat([self.center_proj(center), x], dim=1)
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(self.dropout(x) if i else x, adjacency))
        return x


class NodeAttention(nn.Module):
    """Tokens (B, W, H) attend over nodes (B, N, G) plus an always-present first slot with a
    learned key and a zero value ("no image information"); ``node_mask`` (B, 1 + N) -> (B, W, H)."""

    def __init__(self, hidden: int, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.kv = nn.Linear(hidden, dim), nn.Linear(dim, 2 * dim)
        self.null_key = nn.Parameter(torch.zeros(dim))
        self.out = nn.Linear(dim, hidden)

    def forward(self, h, nodes, node_mask) -> torch.Tensor:
        batch, words, _ = h.shape
        keys, values = self.kv(nodes).chunk(2, dim=-1)
        keys = torch.cat([self.null_key.to(keys.dtype).expand(batch, 1, -1), keys], dim=1)
        values = torch.cat([values.new_zeros(batch, 1, values.shape[-1]), values], dim=1)
        mask = node_mask          # its first column is the "nothing" slot, always on

        def split(x):  # (B, N, G) -> (B, heads, N, G / heads)
            return x.view(batch, x.shape[1], self.heads, -1).transpose(1, 2)
        attended = F.scaled_dot_product_attention(
            split(self.q(h)), split(keys), split(values), attn_mask=mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0)
        return self.out(attended.transpose(1, 2).reshape(batch, words, -1))


class ImageBranch(nn.Module):
    """Everything image-side: region pooling, InterRG, IntraRG (or the own image alone), fusion."""

    def __init__(self, config: ModelConfig, hidden: int, node_shape: tuple[int, ...]):
        super().__init__()
        dim, node_dim = config.graph_dim, node_shape[-1]
        self.pool = RegionPool(node_dim, config.region_pool) if len(node_shape) == 2 else None
        self.graphs = (RelationGraphs(config.inter, config.intra, config.k, hidden, node_dim, dim,
                                      config.gcn_layers, config.dropout)
                       if config.inter or config.intra else None)
        self.own = None if config.intra else nn.Sequential(nn.Linear(node_dim, dim), nn.ReLU())
        self.attend = NodeAttention(hidden, dim, config.heads, config.dropout)
        self.gate = nn.Linear(2 * hidden, hidden) if config.gate else None
        self.layout = NodeLayout.of(config)

    def forward(self, h: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Word states ``h`` (B, W, H) -> fused states (B, W, H); see ``Batch`` for the layout."""
        x = batch.nodes_x if self.pool is None else self.pool(batch.nodes_x)   # (B, slots, D)
        layout = self.layout
        layout.check(batch)
        if self.graphs is None:
            nodes = self.own(x[:, layout.own_slot])
        else:
            text = torch.bmm(batch.text_weight.to(h.dtype), h) if layout.inter else None
            nodes = self.graphs(x[:, layout.graph_images], batch.adjacency, center=text)
            if self.own is not None:
                nodes = torch.cat([nodes, self.own(x[:, layout.own_slot])], dim=1)
        v = self.attend(h, nodes, batch.node_mask)
        if self.gate is None:
            return h + v
        return h + torch.sigmoid(self.gate(torch.cat([h, v], dim=-1))) * v


class Tagger(nn.Module):
    """Encoder + word shape + image branch + emissions + CRF. ``loss(batch)``; ``decode(batch)``."""

    def __init__(self, config: ModelConfig, backbone: nn.Module, labels: list[str],
                 node_shape: tuple[int, ...] | None = None):
        super().__init__()
        from torchcrf import CRF  # imported here: only training and inference need it

        if config.uses_image and not node_shape:
            raise ValueError("an image model needs node_shape (the node feature shape)")
        self.config, self.labels = config, list(labels)
        self.node_shape = tuple(node_shape) if config.uses_image else None
        hidden = backbone.config.hidden_size
        self.encoder = backbone
        self.shape = nn.Linear(len(SHAPE_FEATURES), hidden) if config.shape else None
        self.image = ImageBranch(config, hidden, self.node_shape) if config.uses_image else None
        self.dropout = nn.Dropout(config.dropout)
        self.emit = nn.Linear(hidden, len(labels))
        self.crf = CRF(len(labels), batch_first=True)
        start, trans = allowed_transitions(self.labels)
        self.register_buffer("allowed_start", start, persistent=False)
        self.register_buffer("allowed_trans", trans, persistent=False)

    def new_parameters(self):
        """Everything but the pretrained encoder (trained with the larger learning rate)."""
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]

    def emissions(self, batch: Batch) -> torch.Tensor:
        states = self.encoder(input_ids=batch.input_ids,
                              attention_mask=batch.attention_mask).last_hidden_state
        index = batch.word_index.unsqueeze(-1).expand(-1, -1, states.shape[-1])
        h = states.gather(1, index)
        if self.shape is not None:
            h = h + self.shape(batch.shape.to(h.dtype))
        if self.image is not None:
            h = self.image(h, batch)
        return self.emit(self.dropout(h)).float()

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean over the batch of the CRF negative log-likelihood of the gold word tags."""
        crf = self.crf
        return -log_likelihood(self.emissions(batch), batch.labels, batch.word_mask,
                               crf.start_transitions, crf.transitions, crf.end_transitions).mean()

    @torch.no_grad()
    def decode(self, batch: Batch) -> torch.Tensor:
        """(B, W) label ids by Viterbi (BIO-constrained unless ``bio_constraints`` is off)."""
        emissions = self.emissions(batch)
        start, trans = self.crf.start_transitions, self.crf.transitions
        if self.config.bio_constraints:
            start = start.masked_fill(~self.allowed_start, -1e4)
            trans = trans.masked_fill(~self.allowed_trans, -1e4)
        return viterbi(emissions, batch.word_mask, start, trans, self.crf.end_transitions)


ENCODER_PREFIX = "encoder."   # the text encoder's parameters in the tagger's state dict


def save_tagger(model: Tagger, tokenizer, folder, encoder_record: dict,
                weights: bool = True) -> None:
    """Write ``model.json`` and, with ``weights``, ``encoder/`` (the fine-tuned text encoder as a
    folder ``transformers.AutoModel.from_pretrained`` loads: config, weights, tokenizer) and
    ``model.safetensors`` (every other parameter of the tagger, so nothing is stored twice)
    into ``folder`` (without weights the run keeps its record but cannot be loaded again)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if weights:
        model.encoder.save_pretrained(folder / "encoder", safe_serialization=True)
        tokenizer.save_pretrained(folder / "encoder")
        rest = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()
                if not name.startswith(ENCODER_PREFIX)}
        save_file(rest, str(folder / "model.safetensors"))
    meta = {"format": FORMAT_VERSION, "model": dataclasses.asdict(model.config),
            "labels": model.labels, "label2id": {t: i for i, t in enumerate(model.labels)},
            "node_shape": list(model.node_shape) if model.node_shape else None,
            "shape_features": list(SHAPE_FEATURES), "encoder": encoder_record,
            "weights": weights, "encoder_weights": "encoder" if weights else None}
    text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    (folder / "model.json").write_text(text)


def _require(folder: Path, name: str) -> None:
    if not (folder / name).exists():
        raise MissingInput("not found; is this a finished run folder?", path=folder / name)


def _read_meta(folder: Path) -> dict:
    """``model.json``, checked to describe a loadable tagger of this code's format."""
    _require(folder, "model.json")
    meta = json.loads((folder / "model.json").read_text())
    if meta.get("weights") is False:
        raise MissingInput("this run was trained without saving its weights: it holds scores and "
                           "predictions but no model", path=folder, rerun="train")
    for name in ("model.safetensors", "encoder"):
        _require(folder, name)
    if meta.get("format") != FORMAT_VERSION:
        raise CorruptInput(f"format {meta.get('format')} is not {FORMAT_VERSION}; this run was "
                           "saved by another version", path=folder / "model.json", rerun="train")
    if meta["shape_features"] != list(SHAPE_FEATURES):
        raise CorruptInput("saved with other word-shape features", path=folder / "model.json",
                           rerun="train")
    return meta


def _load_weights(model: Tagger, path: Path, device) -> None:
    """Fill ``model`` from a safetensors file, refusing in one line a file that is not one (a
    pickle, random bytes) or that holds another model's weights (other shapes or names)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        load_model(model, str(path), strict=True, device=str(device))
    except SafetensorError as err:
        raise CorruptInput(f"not a safetensors file ({err})", path=path,
                           hint="restore the run's own model.safetensors") from None
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        why = lines[0] if lines else str(err).strip()
        raise CorruptInput(f"these weights are not the model that model.json describes ({why})",
                           path=path, hint="restore the run's own model.safetensors") from None


def _load_rest(model: Tagger, path: Path, device) -> None:
    """Fill every parameter of ``model`` but the encoder's from ``path`` (``save_tagger``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        rest = load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise CorruptInput(f"not a safetensors file ({err})", path=path,
                           hint="restore the run's own model.safetensors") from None
    try:
        missing, unexpected = model.load_state_dict(rest, strict=False)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        missing, unexpected = [lines[0] if lines else str(err).strip()], []
    missing = [name for name in missing if not name.startswith(ENCODER_PREFIX)]
    if missing or unexpected:
        why = (missing or unexpected)[0]
        raise CorruptInput(f"these weights are not the model that model.json describes ({why})",
                           path=path, hint="restore the run's own model.safetensors")


def _quietly(load, *args):
    """``load(*args)`` without transformers' "Loading weights" bar (a run's own files load in an
    instant; the bar would only clutter predict's output)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load(*args)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_tagger(folder, device="cpu"):
    """Rebuild a saved tagger from its folder alone: ``(model, tokenizer, meta)``. Reads JSON and
    safetensors only (no pickled code runs). The encoder comes from ``encoder/`` and the rest
    from ``model.safetensors``; runs saved before ``encoder/`` held weights keep the whole
    tagger in ``model.safetensors``."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = Path(folder)
    meta = _read_meta(folder)
    config = ModelConfig(**meta["model"])
    if meta.get("encoder_weights") == "encoder":
        backbone = _quietly(AutoModel.from_pretrained, folder / "encoder")
        model = Tagger(config, backbone, meta["labels"], meta["node_shape"])
        _load_rest(model, folder / "model.safetensors", device)
    else:
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(folder / "encoder"))
        model = Tagger(config, backbone, meta["labels"], meta["node_shape"])
        _load_weights(model, folder / "model.safetensors", device)
    tokenizer = AutoTokenizer.from_pretrained(folder / "encoder")
    return model.to(device).eval(), tokenizer, meta
