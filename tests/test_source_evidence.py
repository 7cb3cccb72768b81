"""experiments/source_evidence.py: inter and intra neighbour evidence of an image-text source."""
from __future__ import annotations

import numpy as np

from experiments.source_evidence import evaluate, markdown, top_k
from tests.tiny_models import tiny_bert


def test_top_k_leaves_the_own_row_out_and_breaks_ties_to_the_lower_row():
    xb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    xq = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = top_k(xq, xb, 2, own=np.array([0, -1]))
    assert got.tolist() == [[1, 3], [2, 3]]


def test_each_source_gives_an_inter_and_an_intra_row_and_random_ends(tiny_dir, tmp_path):
    encoder = str(tiny_bert(tmp_path / "bert"))
    captions = next((tiny_dir / "image_captions").glob("*.txt"))
    rows = evaluate(tiny_dir, {"caps": captions}, encoder, k=2)
    assert [(r["source"], r["relation"]) for r in rows] == [
        ("caps", "inter"), ("caps", "intra"), ("random", "-")]
    assert all(0.0 <= r["mention_recall"] <= 1.0 and r["dataset"] == "tiny" for r in rows)
    assert "| tiny | caps | intra |" in markdown(rows, encoder)
