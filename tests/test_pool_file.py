"""pool.h5 (trainer/pool.py): a node table read by rows from its feature file is written a block
at a time, in its stored dtype, and reads back equal."""
from __future__ import annotations

import numpy as np
import pytest

import trainer.pool as pool_module
from trainer.batches import ImageInputs
from trainer.pool import RunPool, read_pool, write_pool


class RowsOnly:
    """A table read by rows (as ``FeatureRows``): slices only; asking for it whole fails."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.largest_read = 0

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):
        assert isinstance(index, slice)
        block = self.array[index]
        self.largest_read = max(self.largest_read, len(block))
        return block

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole node table was read")


@pytest.mark.parametrize("rows", [0, 10])
def test_a_table_read_by_rows_is_written_by_blocks(tmp_path, monkeypatch, rows):
    monkeypatch.setattr(pool_module, "TABLE_BLOCK", 4)
    table = np.random.default_rng(0).standard_normal((rows, 3, 2)).astype(np.float16)
    n = 5
    image = ImageInputs([f"i{j}" for j in range(n)], RowsOnly(table),
                        np.arange(n) % max(rows, 1) - (rows == 0),
                        np.full((n, 2), -1), np.zeros((n, 2), np.float32),
                        np.full((n, 2), -1), np.zeros((n, 2), np.float32),
                        table_ids=[f"t{j}" for j in range(rows)])
    write_pool(tmp_path / "pool.h5", RunPool(image=image, node_attrs={"view": "region_grid"}))
    assert image.table.largest_read <= 4
    back = read_pool(tmp_path / "pool.h5").image
    assert back.table.dtype == np.float16
    np.testing.assert_array_equal(back.table, table)
    np.testing.assert_array_equal(back.own, image.own)
