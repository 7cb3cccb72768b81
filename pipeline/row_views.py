"""Row views of feature files: build-graphs' exact search reads its vectors through these, a
slice of rows at a time, and never holds a whole feature table.

    ok = usable_rows(h5["features"], valid)              # one pass: valid, finite, non-zero
    xq = FileRows(h5["features"], file_rows, ok)         # xq[a:b]: (b - a, d) float32, unit rows
    aq = Columns(xq, extra=t, scale=2)                   # aq[a:b] = [2 xq[a:b], t[a:b]]

Both have ``.shape`` and take ``[a:b]``, so ``sharded_search.row_blocks`` / ``sharded_search``
stream from them. ``file_rows`` are the file rows of the graph's queries or pool candidates in the
graph's order (which may differ from the file's): each slice is read in increasing file order and
put back. Validity masks stay in memory (one bool per row); vectors are read per slice.
"""
from __future__ import annotations

import numpy as np

from .errors import MnerError

QUERY_ROWS = 1024       # rows per query block of the streaming search (sharded_search)
POOL_ROWS = 65536       # rows per pool block, and per read of the validity pass
SPAN = 8                # read a slice's file span in pieces when it is at most SPAN x its rows


def check_table(dataset, path, view: str) -> None:
    """Graphs need one vector per item: a (n, d) table, not (n, R, d) region grids."""
    if len(dataset.shape) != 2:
        raise MnerError(f"'{view}' features have shape {tuple(dataset.shape)}; graphs need one "
                        "vector per item", path=path, value=tuple(dataset.shape))


def usable_rows(dataset, valid, rows: int | None = None) -> np.ndarray:
    """Per file row: ``valid`` and a finite, non-zero float32 norm (one pass, ``rows`` at a
    time, default ``POOL_ROWS``): the rows ``FileRows`` returns as unit vectors."""
    ok, rows = np.asarray(valid, bool).copy(), rows or POOL_ROWS
    for first in range(0, len(ok), rows):
        ok[first:first + rows] &= has_direction(dataset[first:first + rows])
    return ok


def has_direction(X) -> np.ndarray:
    """Per row of ``X``: a finite, non-zero float32 norm (a vector ``normalised`` can scale)."""
    norms = np.linalg.norm(np.asarray(X, np.float32), axis=1)
    return (norms > 0) & np.isfinite(norms)


def read_rows(dataset, rows: np.ndarray) -> np.ndarray:
    """``dataset[rows]`` for any row numbers (repeats, any order), read in increasing order:
    the span between the first and last row in pieces of at most ``len(rows)`` rows when it is
    dense enough, else by h5py's fancy indexing (which needs increasing, distinct rows)."""
    wanted, back = np.unique(np.asarray(rows, np.int64), return_inverse=True)
    if len(wanted) == 0:
        return np.empty((0,) + tuple(dataset.shape[1:]), dataset.dtype)
    first, stop = int(wanted[0]), int(wanted[-1]) + 1
    if stop - first > SPAN * len(wanted):
        return dataset[wanted][back]
    pieces = []
    for start in range(first, stop, len(wanted)):
        piece = dataset[start:min(stop, start + len(wanted))]
        take = wanted[(wanted >= start) & (wanted < start + len(piece))]
        pieces.append(piece[take - start])
    return np.concatenate(pieces)[back]


def _rows_of(index, n: int) -> slice:
    if not isinstance(index, slice) or index.indices(n)[2] != 1:
        raise TypeError(f"row views take [a:b] slices, not {index!r}")
    first, stop, _ = index.indices(n)
    return slice(first, max(first, stop))


class FileRows:
    """Rows ``file_rows`` of a feature table (an h5py Dataset or anything sliced by rows),
    L2-normalised float32 as build-graphs uses them: ``X / |X|`` where ``ok[file row]``, zero
    elsewhere. ``view[a:b]`` reads rows ``file_rows[a:b]`` only; ``view.shape`` is
    ``(len(file_rows), d)``."""

    def __init__(self, dataset, file_rows, ok: np.ndarray):
        self.dataset, self.file_rows, self.ok = dataset, np.asarray(file_rows, np.int64), ok
        self.shape = (len(self.file_rows), int(dataset.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows = self.file_rows[_rows_of(index, len(self))]
        return normalised(read_rows(self.dataset, rows), self.ok[rows])


def normalised(X, ok: np.ndarray) -> np.ndarray:
    """``X / |X|`` (float32) on the ``ok`` rows, zero on the others."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1)
    return np.where(ok[:, None], X / np.where(ok, norms, 1)[:, None], 0).astype(np.float32)


class Columns:
    """``[scale * base[a:b], extra[a:b]]`` per slice: a row view with columns appended (CSLS's
    ``-1`` / ``r_b`` column, the tie-break columns) without building the widened table.
    ``extra`` (n, e) is small and held in memory; ``base`` is any row view or array."""

    def __init__(self, base, extra: np.ndarray, scale: float = 1.0):
        extra = np.asarray(extra, np.float32).reshape(base.shape[0], -1)
        self.base, self.extra, self.scale = base, extra, np.float32(scale)
        self.shape = (base.shape[0], base.shape[1] + extra.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows = _rows_of(index, len(self))
        block = np.asarray(self.base[rows], np.float32)
        if self.scale != 1:
            block = self.scale * block
        return np.hstack([block, self.extra[rows]])
