"""Graph convolution on batches of small star graphs, written dense: one ``bmm`` per layer.

A batch holds B examples, each with the same node slots: one star per relation in use (InterRG:
the tweet's text centre and its K neighbour images; IntraRG: the tweet's own image and its K
neighbours), so an example's graph is a block-diagonal (N, N) matrix with N = (1 + K) per
relation. Each relation keeps its own weights; a layer multiplies every node by all of them at
once (one matmul) and keeps the block of its relation.

Edges are undirected and weighted by the neighbour scores; ``star_adjacency`` adds self-loops and
normalises as Kipf & Welling (2017): Â = D^{-1/2} (A + I) D^{-1/2}, D the row sums of A + I.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def star_adjacency(center_valid: np.ndarray, leaf_rows: np.ndarray, leaf_score: np.ndarray):
    """The normalised adjacency of B star graphs with ``1 + K`` node slots each (slot 0 the centre).

    The centre and each valid leaf (``leaf_rows >= 0``) are joined both ways with weight
    ``max(score, 0)``; a missing leaf, or every leaf of an invalid centre, gets no edge and keeps
    only its self-loop (it sees itself alone and nobody sees it). Returns ``adjacency``
    (B, 1 + K, 1 + K) float32 and the slot mask (B, 1 + K) bool (valid centre, valid leaves).
    """
    batch, k = leaf_rows.shape
    leaf_valid = leaf_rows >= 0
    live = leaf_valid & center_valid[:, None]
    weight = np.where(live, np.clip(np.nan_to_num(leaf_score.astype(np.float32)), 0.0, None), 0.0)
    a = np.zeros((batch, k + 1, k + 1), dtype=np.float32)
    a[:, 0, 1:] = weight
    a[:, 1:, 0] = weight
    a += np.eye(k + 1, dtype=np.float32)
    inv_sqrt = 1.0 / np.sqrt(a.sum(axis=2))
    mask = np.concatenate([center_valid[:, None], leaf_valid], axis=1)
    return a * inv_sqrt[:, :, None] * inv_sqrt[:, None, :], mask


def block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
    """(B, n_i, n_i) matrices -> (B, sum n_i, sum n_i), one block per relation."""
    if len(blocks) == 1:
        return blocks[0]
    size = sum(b.shape[1] for b in blocks)
    out = np.zeros((blocks[0].shape[0], size, size), dtype=blocks[0].dtype)
    start = 0
    for block in blocks:
        n = block.shape[1]
        out[:, start:start + n, start:start + n] = block
        start += n
    return out


class RelationLinear(nn.Module):
    """A linear map per relation over the node slots of a batch: slots ``[start_r, end_r)`` go
    through relation r's weights. ``x`` (B, N, in) -> (B, N, out), N = sum of ``slots``."""

    def __init__(self, in_dim: int, out_dim: int, slots: tuple[int, ...], bias: bool = True):
        super().__init__()
        self.slots, self.out_dim = tuple(slots), out_dim
        self.lin = nn.Linear(in_dim, out_dim * len(slots), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if len(self.slots) == 1:
            return y
        parts, start = [], 0
        for r, n in enumerate(self.slots):
            parts.append(y[:, start:start + n, r * self.out_dim:(r + 1) * self.out_dim])
            start += n
        return torch.cat(parts, dim=1)


class GCNLayer(nn.Module):
    r"""One graph convolution over normalised adjacencies (``star_adjacency``), one weight matrix
    and bias per relation:

    .. math::
        X' = \hat A \, X \Theta_r + b_r \quad \text{on the slots of relation } r

    Shapes: ``x`` (B, N, in_dim), ``adjacency`` (B, N, N) -> (B, N, out_dim). No activation: the
    caller applies one.
    """

    def __init__(self, in_dim: int, out_dim: int, slots: tuple[int, ...] = (1,), bias: bool = True):
        super().__init__()
        self.lin = RelationLinear(in_dim, out_dim, slots, bias=False)
        self.bias = nn.Parameter(torch.zeros(len(slots), out_dim)) if bias else None
        self.register_buffer("relation", torch.repeat_interleave(
            torch.arange(len(slots)), torch.tensor(slots)), persistent=False)

    def slot_bias(self) -> torch.Tensor:
        """(N, out_dim): each slot's relation bias."""
        return self.bias[0].expand(len(self.relation), -1) if len(self.bias) == 1 \
            else self.bias.index_select(0, self.relation)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        if self.bias is None:
            return torch.bmm(adjacency.to(h.dtype), h)
        return torch.baddbmm(self.slot_bias().to(h.dtype), adjacency.to(h.dtype), h)
