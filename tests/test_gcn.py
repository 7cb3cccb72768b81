"""The GCN layer and its normalisation against a hand computation on a 4-node star graph."""
from __future__ import annotations

import math

import torch

from trainer.batches import star_edges
from trainer.gcn import GCNLayer, gcn_norm

# centre 0, leaves 1, 2, 3; undirected edges of weights 0.5, 1.0, 2.0 (both directions)
SOURCE = [1, 2, 3, 0, 0, 0]
TARGET = [0, 0, 0, 1, 2, 3]
WEIGHT = [0.5, 1.0, 2.0, 0.5, 1.0, 2.0]


def star():
    return torch.tensor([SOURCE, TARGET]), torch.tensor(WEIGHT)


def test_gcn_norm_matches_the_hand_computed_weights():
    edge_index, edge_weight = gcn_norm(*star(), num_nodes=4)
    assert edge_index.shape == (2, 10)  # 6 edges + 4 self-loops
    # degrees with self-loops: centre 1 + 0.5 + 1 + 2 = 4.5; leaves 1.5, 2, 3
    deg = {0: 4.5, 1: 1.5, 2: 2.0, 3: 3.0}
    got = {(int(s), int(t)): float(w) for s, t, w in zip(*edge_index, edge_weight)}
    assert math.isclose(got[(1, 0)], 0.5 / math.sqrt(1.5 * 4.5), rel_tol=1e-6)
    assert math.isclose(got[(0, 3)], 2.0 / math.sqrt(4.5 * 3.0), rel_tol=1e-6)
    for node in range(4):
        assert math.isclose(got[(node, node)], 1.0 / deg[node], rel_tol=1e-6)


def test_gcn_layer_equals_the_dense_formula():
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    layer = GCNLayer(3, 2)
    torch.nn.init.normal_(layer.bias)
    edge_index, edge_weight = gcn_norm(*star(), num_nodes=4)
    out = layer(x, edge_index, edge_weight)

    a = torch.eye(4)  # A + I, written out by hand
    for s, t, w in zip(SOURCE, TARGET, WEIGHT):
        a[t, s] = w
    d = torch.diag(a.sum(dim=1).rsqrt())
    expected = d @ a @ d @ x @ layer.lin.weight.T + layer.bias
    torch.testing.assert_close(out, expected)
    # the centre mixes all four nodes, a leaf only itself and the centre
    manual_leaf = (1 / 3.0) * x[3] + (2.0 / math.sqrt(4.5 * 3.0)) * x[0]
    torch.testing.assert_close(out[3], manual_leaf @ layer.lin.weight.T + layer.bias)


def test_an_isolated_node_only_sees_itself():
    layer = GCNLayer(3, 2, bias=False)
    x = torch.randn(5, 3)
    edge_index, edge_weight = gcn_norm(*star(), num_nodes=5)   # node 4 has no edge
    out = layer(x, edge_index, edge_weight)
    torch.testing.assert_close(out[4], layer.lin(x[4]))


def test_star_edges_batches_stars_and_skips_missing_nodes():
    import numpy as np
    centre_valid = np.array([True, False])
    leaves = np.array([[7, -1, 9], [4, 5, 6]])
    scores = np.array([[0.5, 0.9, -0.2], [1.0, 1.0, 1.0]], dtype=np.float32)
    edge_index, weight, mask = star_edges(centre_valid, leaves, scores)
    # example 0: slots 0..3, leaves at slots 1 and 3 (slot 2 missing); example 1: no valid centre
    assert edge_index.tolist() == [[1, 3, 0, 0], [0, 0, 1, 3]]
    assert weight.tolist() == [0.5, 0.0, 0.5, 0.0]   # a negative score is clipped to 0
    assert mask.tolist() == [[True, True, False, True], [False, True, True, True]]
