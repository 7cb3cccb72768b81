"""The GCN layer and its normalisation against a hand computation on a 4-node star graph."""
from __future__ import annotations

import math

import numpy as np
import torch

from trainer.gcn import GCNLayer, RelationLinear, block_diagonal, star_adjacency

# centre 0, leaves 1, 2, 3; undirected edges of weights 0.5, 1.0, 2.0
SCORES = [0.5, 1.0, 2.0]


def star(scores=SCORES, leaves=(10, 11, 12), centre_valid=True):
    adjacency, mask = star_adjacency(np.array([centre_valid]), np.array([leaves]),
                                     np.array([scores], dtype=np.float32))
    return torch.from_numpy(adjacency), mask


def test_star_adjacency_matches_the_hand_computed_weights():
    adjacency, mask = star()
    a = adjacency[0]
    # degrees with self-loops: centre 1 + 0.5 + 1 + 2 = 4.5; leaves 1.5, 2, 3
    deg = [4.5, 1.5, 2.0, 3.0]
    assert math.isclose(a[0, 1], 0.5 / math.sqrt(4.5 * 1.5), rel_tol=1e-6)
    assert math.isclose(a[1, 0], 0.5 / math.sqrt(1.5 * 4.5), rel_tol=1e-6)
    assert math.isclose(a[3, 0], 2.0 / math.sqrt(3.0 * 4.5), rel_tol=1e-6)
    for node in range(4):
        assert math.isclose(a[node, node], 1.0 / deg[node], rel_tol=1e-6)
    assert a[1, 2] == 0 and a[2, 3] == 0          # leaves meet only through the centre
    assert mask.tolist() == [[True, True, True, True]]


def test_gcn_layer_equals_the_dense_formula_and_a_leaf_by_hand():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3)
    layer = GCNLayer(3, 2)
    torch.nn.init.normal_(layer.bias)
    adjacency, _ = star()
    out = layer(x, adjacency)[0]

    a = torch.eye(4)  # A + I, written out by hand
    for leaf, w in zip((1, 2, 3), SCORES):
        a[0, leaf] = a[leaf, 0] = w
    d = torch.diag(a.sum(dim=1).rsqrt())
    weight = layer.lin.lin.weight
    expected = d @ a @ d @ x[0] @ weight.T + layer.bias[0]
    torch.testing.assert_close(out, expected)
    # the centre mixes all four nodes, a leaf only itself and the centre
    manual_leaf = (1 / 3.0) * x[0, 3] + (2.0 / math.sqrt(4.5 * 3.0)) * x[0, 0]
    torch.testing.assert_close(out[3], manual_leaf @ weight.T + layer.bias[0])


def test_missing_leaves_and_an_invalid_centre_only_see_themselves():
    adjacency, mask = star(scores=[0.5, 0.9, -0.2], leaves=(7, -1, 9))
    a = adjacency[0]
    assert a[0, 2] == 0 and a[2, 0] == 0 and a[2, 2] == 1.0   # slot 2: no neighbour
    assert a[0, 3] == 0 and a[3, 3] == 1.0                     # a negative score is clipped to 0
    assert mask.tolist() == [[True, True, False, True]]
    layer = GCNLayer(3, 2, bias=False)
    x = torch.randn(1, 4, 3)
    torch.testing.assert_close(layer(x, adjacency)[0, 2], layer.lin(x)[0, 2])
    adjacency, mask = star(centre_valid=False)
    torch.testing.assert_close(adjacency[0], torch.eye(4))
    assert mask.tolist() == [[False, True, True, True]]


def test_each_relation_keeps_its_weights_and_its_block():
    torch.manual_seed(1)
    first, _ = star()
    second, _ = star(scores=[1.0, 1.0, 1.0])
    adjacency = torch.from_numpy(block_diagonal([first.numpy(), second.numpy()]))
    assert adjacency.shape == (1, 8, 8) and adjacency[0, :4, 4:].abs().sum() == 0
    layer = GCNLayer(3, 2, slots=(4, 4))
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(1, 8, 3)
    out = layer(x, adjacency)
    weights = layer.lin.lin.weight.view(2, 2, 3)     # (relation, out, in)
    for r, a in enumerate((first, second)):
        part = x[:, 4 * r:4 * r + 4]
        torch.testing.assert_close(out[:, 4 * r:4 * r + 4],
                                   a @ part @ weights[r].T + layer.bias[r])
    # RelationLinear alone: slot s of relation r through relation r's weights
    lin = RelationLinear(3, 2, (1, 2))
    y = lin(x[:, :3])
    full = lin.lin(x[:, :3])
    torch.testing.assert_close(y[:, :1], full[:, :1, :2])
    torch.testing.assert_close(y[:, 1:], full[:, 1:, 2:])
