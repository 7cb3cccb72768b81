"""A graph-convolution layer in PyG's layout (``x``, ``edge_index``, ``edge_weight``), written out.

Graphs are given as ``edge_index`` (2, E) int64 with row 0 the source node and row 1 the target
node (PyG's ``source_to_target`` flow) and ``edge_weight`` (E,) float. Several small graphs in one
batch are one big graph with disjoint node ranges.
"""
from __future__ import annotations

import torch
from torch import nn


def gcn_norm(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int,
             add_self_loops: bool = True, fill_value: float = 1.0):
    """Symmetric degree normalisation with self-loops, as in Kipf & Welling (2017).

    Adds an edge ``i -> i`` of weight ``fill_value`` for every node, then rescales every edge
    ``j -> i`` of weight ``a_ij`` to ``a_ij / sqrt(deg(j) * deg(i))`` where ``deg(i)`` is the sum of
    the weights of the edges entering ``i`` (self-loop included). A node without any edge keeps
    degree 0 and all its (non-existent) edges stay 0.

    Args: ``edge_index`` (2, E) int64, ``edge_weight`` (E,) non-negative, ``num_nodes`` N.
    Returns: ``(edge_index, edge_weight)`` of shapes (2, E + N) and (E + N,) with self-loops.
    """
    if add_self_loops:
        loop = torch.arange(num_nodes, device=edge_index.device, dtype=edge_index.dtype)
        edge_index = torch.cat([edge_index, torch.stack([loop, loop])], dim=1)
        edge_weight = torch.cat([edge_weight, edge_weight.new_full((num_nodes,), fill_value)])
    source, target = edge_index
    degree = edge_weight.new_zeros(num_nodes).index_add_(0, target, edge_weight)
    inv_sqrt = degree.pow(-0.5).masked_fill(degree <= 0, 0.0)
    return edge_index, inv_sqrt[source] * edge_weight * inv_sqrt[target]


class GCNLayer(nn.Module):
    r"""One graph convolution on an already normalised graph (see ``gcn_norm``):

    .. math::
        x'_i = \sum_{(j \to i) \in E} \hat a_{ji} \, \Theta x_j + b,
        \qquad \text{i.e. } X' = \hat D^{-1/2} \hat A \hat D^{-1/2} X \Theta + b
        \text{ when } \hat a \text{ comes from } gcn\_norm(A + I).

    Shapes: ``x`` (N, in_dim), ``edge_index`` (2, E) int64 (row 0 source, row 1 target),
    ``edge_weight`` (E,) -> (N, out_dim). No activation: the caller applies one.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor,
                edge_weight: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        source, target = edge_index
        messages = h.index_select(0, source) * edge_weight.unsqueeze(-1)  # in the weights' dtype
        out = messages.new_zeros(h.shape).index_add_(0, target, messages)
        return out if self.bias is None else out + self.bias
