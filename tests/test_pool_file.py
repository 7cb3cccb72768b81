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


def refuse_whole_reads(monkeypatch, name: str = "/image/table", most: int | None = None):
    """Make every h5py read of the dataset ``name`` that returns all its rows (or more than
    ``most``) fail: what a node table of millions of rows would not survive."""
    import h5py

    read = h5py.Dataset.__getitem__

    def guarded(self, args, *rest, **kw):
        got = read(self, args, *rest, **kw)
        if self.name == name and self.shape[0] > 0:
            limit = self.shape[0] - 1 if most is None else most
            assert np.ndim(got) == 0 or len(got) <= limit, f"{len(got)} rows of {name} read"
        return got

    monkeypatch.setattr(h5py.Dataset, "__getitem__", guarded)


def test_read_pool_gives_a_node_table_read_by_rows(tmp_path, monkeypatch):
    import pickle

    table = np.random.default_rng(1).standard_normal((9, 2, 3)).astype(np.float32)
    n = 4
    image = ImageInputs([f"i{j}" for j in range(n)], table, np.arange(n),
                        np.full((n, 2), -1), np.zeros((n, 2), np.float32),
                        np.full((n, 2), -1), np.zeros((n, 2), np.float32),
                        table_ids=[f"t{j}" for j in range(9)])
    write_pool(tmp_path / "pool.h5", RunPool(image=image, node_attrs={"view": "region_grid"}))
    refuse_whole_reads(monkeypatch)
    back = read_pool(tmp_path / "pool.h5").image
    assert back.table.shape == (9, 2, 3) and back.node_shape == (2, 3)
    np.testing.assert_array_equal(back.table[[7, 2, 7]], table[[7, 2, 7]])
    workers = pickle.loads(pickle.dumps(back.table))      # as DataLoader workers get it
    np.testing.assert_array_equal(workers.rows(np.array([0, 8])), table[[0, 8]])


def test_a_pool_of_an_unknown_format_is_refused_in_one_line(tmp_path):
    import h5py

    from pipeline.errors import CorruptInput

    write_pool(tmp_path / "pool.h5", RunPool())
    with h5py.File(tmp_path / "pool.h5", "r+") as h5:
        assert h5.attrs["format"] == 1            # a copied table: what older code reads too
        h5.attrs["format"] = 3
    with pytest.raises(CorruptInput, match="pool format 3 is not 1 or 2") as err:
        read_pool(tmp_path / "pool.h5")
    assert "\n" not in str(err.value) and err.value.rerun == "train"
