"""From tweets to tensors: tokenisation with first-subword labelling, word-shape features, and the
image-side inputs of each example (its own image node and its neighbour nodes in both relations).

Everything is prepared once per split (``encode``) and padded per batch (``Collator``). A batch
carries row indices into the node table, and ``Batch.to`` gathers the rows: from one tensor on the
device (the fast default when the table fits, ``ImageInputs.node_table``), or from a float16
``HostTable`` on the host (a feature file read by rows, or an array), which moves only the batch's
rows to the device.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

import numpy as np
import torch

from pipeline.errors import InvalidConfig
from pipeline.runtime import resolve_precision

from .gcn import block_diagonal, star_adjacency

SHAPE_FEATURES = ("init_cap", "all_caps", "inner_cap", "lower", "mention", "hashtag", "url",
                  "has_digit", "all_digit", "punct", "non_ascii", "first_word")
_URL = re.compile(r"^(https?://|www\.)|\.(com|org|net|ly|co)(/|$)", re.IGNORECASE)


def word_shape(word: str, position: int) -> list[int]:
    """Binary shape features of one (cased) word, in ``SHAPE_FEATURES`` order."""
    letters = [c for c in word if c.isalpha()]
    return [
        int(word[:1].isupper()),
        int(len(letters) > 1 and all(c.isupper() for c in letters)),
        int(any(c.isupper() for c in word[1:]) and any(c.islower() for c in word)),
        int(bool(letters) and all(c.islower() for c in letters)),
        int(word.startswith("@") and len(word) > 1),
        int(word.startswith("#") and len(word) > 1),
        int(bool(_URL.search(word))),
        int(any(c.isdigit() for c in word)),
        int(word.isdigit()),
        int(not any(c.isalnum() for c in word)),
        int(any(ord(c) > 127 for c in word)),
        int(position == 0),
    ]


@dataclass
class ImageInputs:
    """Node features and neighbours of every item of a dataset, rows aligned with ``item_ids``.

    ``table`` (m, D) or (m, R, D) holds one node per image (a global vector or a region grid);
    ``own`` (n,) is the row of each item's own image, ``inter``/``intra`` (n, K) the rows of its
    neighbours by the inter-modal (tweet text -> images) and intra-modal (its image -> images)
    relation, best first, with their scores in ``*_score``. ``-1`` means "none": an invalid image,
    a flagged query or a missing neighbour. Those are masked out, never fed as zeros.
    ``table_ids`` names the image of each table row (predict joins new neighbours by it).
    """

    item_ids: list[str]
    table: np.ndarray
    own: np.ndarray
    inter: np.ndarray
    inter_score: np.ndarray
    intra: np.ndarray
    intra_score: np.ndarray
    view: str = "image_global"
    table_ids: list[str] | None = None   # the image id of each table row, when known

    def __post_init__(self):
        n = len(self.item_ids)
        for name in ("own", "inter", "inter_score", "intra", "intra_score"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ImageInputs.{name} has {len(getattr(self, name))} rows, "
                                 f"expected {n} (one per item)")
        self.row_of = {item: i for i, item in enumerate(self.item_ids)}

    @property
    def node_shape(self) -> tuple[int, ...]:
        return tuple(self.table.shape[1:])

    def node_table(self, device: torch.device, precision: str = "auto", host: bool = False):
        """``table`` as one tensor on ``device`` (bf16 when the model runs in bf16 on CUDA,
        float32 otherwise; the rows are gathered there per batch, ``Batch.to``), or with ``host``
        a ``HostTable`` that stays on the host in float16 and sends each batch's rows."""
        bf16 = device.type == "cuda" and resolve_precision(precision, device) == "bf16"
        dtype = torch.bfloat16 if bf16 else torch.float32
        if host:
            return HostTable(self.table, dtype, pin=device.type == "cuda")
        return torch.from_numpy(np.ascontiguousarray(self.table)).to(device, dtype)


class HostTable:
    """Node features that stay on the host in float16; ``gather(nodes, device)`` reads the rows a
    batch points at (each distinct row once), sends them and casts them to ``dtype`` there.

    ``rows`` is anything with ``shape`` and ``rows(sorted_unique_indices) -> array``: a feature
    file read by rows (``pipeline.features.FeatureRows``: nothing is read whole, the file is
    chunked by rows) or an in-memory array, kept as float16 (each batch's block is pinned on
    CUDA before it is sent). Float16 values
    reach the model exactly as a float32 table of the same values would, so the two paths give
    the same losses on float16 features (``tests/test_ddp.py``).
    """

    def __init__(self, rows, dtype: torch.dtype = torch.float32, pin: bool = False):
        if isinstance(rows, np.ndarray):
            rows = _ArrayRows(rows.astype(np.float16, copy=False))
        self.source, self.dtype, self.pin = rows, dtype, pin

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape)

    def gather(self, nodes: torch.Tensor, device) -> torch.Tensor:
        """``nodes`` (B, slots) row indices on the CPU -> (B, slots, ...) features on ``device``."""
        wanted, inverse = np.unique(nodes.numpy(), return_inverse=True)
        block = torch.from_numpy(np.ascontiguousarray(self.source.rows(wanted), np.float16))
        if self.pin:
            block = block.pin_memory()
        block = block.to(device, non_blocking=True).to(self.dtype)
        index = torch.from_numpy(inverse.reshape(nodes.shape)).to(device, non_blocking=True)
        return block[index]


class _ArrayRows:
    """``HostTable``'s source over an in-memory float16 array."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape = array, array.shape

    def rows(self, wanted: np.ndarray) -> np.ndarray:
        return self.array[wanted]


@dataclass(frozen=True)
class NodeLayout:
    """Where each image node of an example sits in ``Batch.nodes`` (B, slots), one object that the
    collator (which fills the slots) and the model (which reads them) both use.

    Slots, in order: the K inter-modal neighbours (with InterRG), the own image, the K intra-modal
    neighbours (with IntraRG). The relation graphs see ``graph_images``: InterRG's neighbours, then
    IntraRG's star (own image first); without IntraRG the own image is only projected.
    ``Batch.node_mask`` (B, ``mask_slots``) follows the node states the model builds: the "nothing"
    slot, InterRG's text centre and neighbours, then IntraRG's star or the own image.
    """

    k: int
    inter: bool
    intra: bool

    @classmethod
    def of(cls, config) -> "NodeLayout":
        """The layout of a ``ModelConfig`` (its ``k``, ``inter`` and ``intra``)."""
        return cls(config.k, config.inter, config.intra)

    @property
    def inter_slots(self) -> slice:
        return slice(0, self.k if self.inter else 0)

    @property
    def own_slot(self) -> slice:
        start = self.inter_slots.stop
        return slice(start, start + 1)

    @property
    def intra_slots(self) -> slice:
        start = self.own_slot.stop
        return slice(start, start + (self.k if self.intra else 0))

    @property
    def slots(self) -> int:
        return self.intra_slots.stop

    @property
    def graph_images(self) -> slice:
        """The slots the relation graphs take (all of them with IntraRG, else the neighbours)."""
        return slice(0, self.slots if self.intra else self.inter_slots.stop)

    @property
    def mask_slots(self) -> int:
        return 1 + (1 + self.k if self.inter else 0) + (1 + self.k if self.intra else 1)

    def check(self, batch: "Batch") -> None:
        """Refuse a batch laid out for another model (its slot counts differ from this layout's)."""
        got = (batch.nodes.shape[1], batch.node_mask.shape[1])
        if got != (self.slots, self.mask_slots):
            raise ValueError(f"the batch holds {got[0]} node slots and {got[1]} mask slots; "
                             f"{self} needs {self.slots} and {self.mask_slots}")


@dataclass
class Encoded:
    """One split, tokenised once. ``first[i]`` holds the subword position of each kept word of
    example i (words cut by ``max_subwords`` are not kept: ``n_words`` counts all of them)."""

    item_ids: list[str]
    input_ids: list[np.ndarray]
    first: list[np.ndarray]
    shapes: list[np.ndarray]
    labels: list[np.ndarray]
    n_words: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def truncated_words(self) -> int:
        return int(sum(n - len(f) for n, f in zip(self.n_words, self.first)))


def encode(examples, tokenizer, label2id: dict[str, int], max_subwords: int,
           context: list[np.ndarray] | None = None) -> Encoded:
    """Tokenise ``examples`` (objects with ``item_id``, ``tokens`` and ``tags``; tags may be
    empty for unlabelled text) into subword ids with first-subword positions; ``context`` (one
    id array per example, see ``context.context_ids``) is appended after each example's ids.

    A word the tokenizer turns into nothing (a bare U+00A0, a control character) is replaced by
    the tokenizer's unknown token, so every word keeps a position and a tag.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidConfig("the tagger needs a fast (Rust) tokenizer for word alignment; "
                            f"{type(tokenizer).__name__} is not one")
    words = [list(e.tokens) for e in examples]
    full = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    for i, sentence in enumerate(words):
        present = set(w for w in full.word_ids(i) if w is not None)
        for j in range(len(sentence)):
            if j not in present:
                sentence[j] = tokenizer.unk_token
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_subwords)
    out = Encoded([e.item_id for e in examples], [], [], [], [],
                  np.array([len(w) for w in words], dtype=np.int64))
    for i, example in enumerate(examples):
        word_ids = enc.word_ids(i)
        first = [p for p, w in enumerate(word_ids)
                 if w is not None and (p == 0 or word_ids[p - 1] != w)]
        if not first:
            raise InvalidConfig(f"example {example.item_id}: no word survives max_subwords="
                                f"{max_subwords}; raise model.max_subwords")
        kept = len(first)
        tags = list(example.tags) or ["O"] * len(words[i])
        ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
        out.input_ids.append(ids if context is None else np.concatenate([ids, context[i]]))
        out.first.append(np.asarray(first, dtype=np.int64))
        shapes = [word_shape(w, j) for j, w in enumerate(example.tokens[:kept])]
        out.shapes.append(np.asarray(shapes, dtype=np.float32).reshape(kept, len(SHAPE_FEATURES)))
        out.labels.append(np.asarray([label2id[t] for t in tags[:kept]], dtype=np.int64))
    return out


@dataclass
class Batch:
    """A padded batch. Text: ``input_ids``/``attention_mask`` (B, S); ``word_index`` (B, W) the
    first-subword position of each word, ``word_mask`` (B, W); ``shape`` (B, W, F); ``labels``
    (B, W); ``positions`` (B,) the examples of the split (stays on the CPU).

    Image side (None for a text-only model), laid out by ``NodeLayout`` so that a step needs few
    device kernels: ``nodes`` (B, slots) rows of the node table (missing ones point at row 0 and
    are masked); ``node_mask`` (B, mask_slots) what the tokens may attend to. ``adjacency``
    (B, G, G): the normalised star graphs of InterRG then IntraRG, block-diagonal
    (``gcn.star_adjacency``), G = (1 + K) per relation in use.
    ``text_weight`` (B, 1, W): 1 / words on each word (InterRG's text node is the mean).
    ``weight`` (): under DDP, this rank's share of the global batch (its rows / the global
    batch's rows): the step scales the batch's mean loss by it (``steps``). None: weight 1.
    After ``to``: ``nodes_x`` (B, slots, ...) the gathered node features.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_index: torch.Tensor
    word_mask: torch.Tensor
    shape: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    nodes: torch.Tensor | None = None
    node_mask: torch.Tensor | None = None
    adjacency: torch.Tensor | None = None
    text_weight: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    nodes_x: torch.Tensor | None = None

    def _map(self, fn) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name) if not torch.is_tensor(getattr(self, f.name))
                        or f.name == "positions" else fn(getattr(self, f.name))
                        for f in fields(self)})

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())

    def shape_key(self) -> tuple:
        """The shapes of its tensors: batches with equal keys fit the same CUDA graph."""
        return tuple((f.name, tuple(getattr(self, f.name).shape)) for f in fields(self)
                     if torch.is_tensor(getattr(self, f.name)))

    def copy_(self, other: "Batch") -> None:
        """Copy ``other``'s tensors into this batch's own (same shapes; ``positions`` kept)."""
        for f in fields(self):
            mine = getattr(self, f.name)
            if torch.is_tensor(mine) and f.name != "positions":
                mine.copy_(getattr(other, f.name), non_blocking=True)

    def to(self, device, table=None) -> "Batch":
        """Move to ``device`` and gather node features from ``table``: a tensor already on
        ``device``, or a ``HostTable`` (then this batch must still be on the CPU)."""
        out = self._map(lambda t: t.to(device, non_blocking=True))
        if isinstance(table, HostTable) and out.nodes is not None:
            out.nodes_x = table.gather(self.nodes, device)
        elif table is not None and out.nodes is not None:
            out.nodes_x = table[out.nodes]
        return out


def _round_up(n: int, multiple: int, cap: int) -> int:
    return max(n, min(-(-n // multiple) * multiple, cap))


class Collator:
    """Pads a list of example positions of one ``Encoded`` split into a ``Batch``.

    ``rows`` maps each example to its row in ``image`` (the dataset's item table);
    ``inter``/``intra`` say which relation graphs the model uses and ``k`` how many neighbours.
    """

    def __init__(self, encoded: Encoded, pad_id: int, image: ImageInputs | None = None,
                 rows: np.ndarray | None = None, inter: bool = False, intra: bool = False,
                 k: int = 5):
        self.encoded, self.pad_id, self.image, self.rows = encoded, pad_id, image, rows
        self.layout = NodeLayout(k, inter, intra)
        self.longest = (max(map(len, encoded.input_ids), default=0),   # padding caps
                        max(map(len, encoded.first), default=0))
        if image is not None and (rows is None or len(rows) != len(encoded)):
            raise ValueError("Collator needs one image row per example")
        held = min(image.inter.shape[1], image.intra.shape[1]) if image is not None else k
        if (inter or intra) and held < k:
            raise InvalidConfig(f"the graphs hold {held} neighbours per item but the model takes "
                                f"k={k}", setting="k", rerun="build-graphs", value=k)

    def __call__(self, positions, pad_to: tuple[int, int] = (1, 1)) -> Batch:
        """``pad_to`` (subwords, words): pad the batch's length to a multiple of these (at most
        to the split's longest example), so that batches come in few shapes (``steps``)."""
        enc = self.encoded
        positions = np.asarray(positions, dtype=np.int64)
        seq = _round_up(max(len(enc.input_ids[p]) for p in positions), pad_to[0],
                        self.longest[0])
        words = _round_up(max(len(enc.first[p]) for p in positions), pad_to[1], self.longest[1])
        size = len(positions)
        ids = np.full((size, seq), self.pad_id, dtype=np.int64)
        attention = np.zeros((size, seq), dtype=np.int64)
        word_index = np.zeros((size, words), dtype=np.int64)
        word_mask = np.zeros((size, words), dtype=bool)
        shape = np.zeros((size, words, len(SHAPE_FEATURES)), dtype=np.float32)
        labels = np.zeros((size, words), dtype=np.int64)
        for b, p in enumerate(positions):
            n, w = len(enc.input_ids[p]), len(enc.first[p])
            ids[b, :n], attention[b, :n] = enc.input_ids[p], 1
            word_index[b, :w], word_mask[b, :w] = enc.first[p], True
            shape[b, :w], labels[b, :w] = enc.shapes[p], enc.labels[p]
        batch = Batch(*(torch.from_numpy(a) for a in (ids, attention, word_index, word_mask, shape,
                                                      labels, positions)))
        if self.image is not None:
            self._add_image(batch, self.rows[positions])
        return batch

    def _add_image(self, batch: Batch, rows: np.ndarray) -> None:
        image, layout, size = self.image, self.layout, len(rows)
        k, own = layout.k, image.own[rows]
        nodes = np.empty((size, layout.slots), dtype=np.int64)
        nodes[:, layout.own_slot] = own[:, None]
        masks, blocks = [np.ones((size, 1), bool)], []
        if layout.inter:
            inter = image.inter[rows, :k]
            block, mask = star_adjacency(np.ones(size, dtype=bool), inter,
                                         image.inter_score[rows, :k])
            nodes[:, layout.inter_slots] = inter
            masks.append(mask)
            blocks.append(block)
            words = batch.word_mask.numpy()
            batch.text_weight = torch.from_numpy(
                (words / words.sum(1, keepdims=True)).astype(np.float32)[:, None, :])
        if layout.intra:
            intra = image.intra[rows, :k]
            block, mask = star_adjacency(own >= 0, intra, image.intra_score[rows, :k])
            nodes[:, layout.intra_slots] = intra
            masks.append(mask)
            blocks.append(block)
        else:
            masks.append((own >= 0)[:, None])
        batch.nodes = torch.from_numpy(np.maximum(nodes, 0))
        batch.node_mask = torch.from_numpy(np.concatenate(masks, axis=1))
        if blocks:
            batch.adjacency = torch.from_numpy(block_diagonal(blocks))
