"""Synthetic feature files for the benchmarks, in the feature cache's format."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.features import FeatureWriter


def random_feature_file(path: Path, ids: list[str], attrs: dict, shape: tuple[int, ...],
                        seed: tuple[int, ...], block: int, unit: bool = False) -> Path:
    """A complete float16 feature file of standard-normal rows of ``shape``, one per id (scaled
    to unit length with ``unit``), written ``block`` rows at a time through ``FeatureWriter``;
    each block drawn from the generator seeded ``[*seed, first row]``."""
    writer = FeatureWriter(path, ids, attrs, dtype=np.float16)
    for first in range(0, len(ids), block):
        rows = np.arange(first, min(len(ids), first + block))
        x = np.random.default_rng([*seed, first]).standard_normal((len(rows), *shape),
                                                                  dtype=np.float32)
        if unit:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        writer.write(rows, x, np.ones(len(rows), bool), [""] * len(rows))
    return writer.finish()
