"""Sharded exact top-k: the pool split over the ranks of a process group (or over row blocks in
one process), each shard's exact top-k merged into the global top-k the way faiss's
``IndexShards`` / ``ResultHeap`` do, queries and pool streamed in row blocks (from an array or an
HDF5 dataset, never loaded whole).

    D, I = sharded_search(xq, xb, k, dist=Distributed.from_env())   # under torchrun, N ranks
    D, I = sharded_search(xq, h5["features"], k)                     # one process, pool from HDF5

Same conventions as ``pipeline.search.search``: ``D`` (n, k) float32 best first, ``I`` (n, k)
int64 pool rows, ``-1``/nan where fewer than k candidates remain, ``exclude`` pairs dropped.
Scores are float32 inner products (normalise for cosine).

Ties go to the lower pool row, at every step (each block's top-k, each merge), so any split of the
pool gives the same ``I``; every score comes from the same (query block, pool block) product
whatever the split, so ``D`` is the same to the bit for the same ``query_rows`` and ``pool_rows``.
The single-process ``search`` backends order ties as faiss or ``torch.topk`` happen to (not by
row); on data without exact ties the two give the same neighbours.
"""
from __future__ import annotations

import numpy as np
import torch

from .distributed import Distributed
from .errors import MnerError
from .progress import no_progress
from .search import _drop_excluded

_NO_ROW = np.iinfo(np.int64).max    # an empty slot: score -inf, a row after every real row


def row_blocks(x, rows: int, start: int = 0, stop: int | None = None):
    """``(first_row, float32 block)`` over rows ``[start, stop)`` of ``x``, ``rows`` at a time.

    ``x`` is anything sliced by rows: a numpy array, a memory map or an h5py Dataset, so a
    feature file is read one slice at a time and never whole (float16 storage is widened per
    block)."""
    stop = x.shape[0] if stop is None else min(stop, x.shape[0])
    for first in range(start, stop, rows):
        block = np.ascontiguousarray(x[first:min(stop, first + rows)], dtype=np.float32)
        if not np.isfinite(block).all():
            bad = first + int(np.nonzero(~np.isfinite(block).all(axis=1))[0][0])
            raise MnerError(f"row {bad} holds a value that is not finite (nan or inf); "
                            "exact search needs finite vectors", value=bad)
        yield first, block


def merge_topk(parts, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of the union of several ``(D, I)`` results for the same queries (``I`` in
    one numbering, ``-1``/nan where empty): best score first, a tie to the lower row."""
    D = torch.from_numpy(np.concatenate([np.asarray(d, np.float32) for d, _ in parts], axis=1))
    I = torch.from_numpy(np.concatenate([np.asarray(i, np.int64) for _, i in parts], axis=1))
    D, I = _merge(*_to_sentinels(D, I), k)
    return _from_sentinels(D, I, k)


def sharded_search(xq, xb, k: int, *, dist=None, exclude=None, device: str | None = None,
                   query_rows: int = 1024, pool_rows: int = 65536,
                   progress=no_progress) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 inner-product top-``k`` of ``xq`` against ``xb``: ``(D, I)`` as ``search``.

    ``xb``'s rows are cut into blocks of ``pool_rows``; rank r of ``dist`` (a
    ``pipeline.distributed.Distributed``; None: this process alone) takes the contiguous blocks
    of ``dist.share(n_blocks)``, reads them from ``xb`` (an array or an h5py Dataset: only its
    own rows, block by block) onto ``device`` (default ``dist.device``) and keeps them there.
    Queries stream from ``xq`` in blocks of ``query_rows``; for each, every rank takes the exact
    top-k of its blocks, the ranks all-gather their (n, k) results and each merges them
    (``merge_topk``), so every rank returns the whole result. ``exclude`` as in ``search``.

    Ties go to the lower pool row; 1 or N processes give the same ``I`` and ``D`` for the same
    ``query_rows`` and ``pool_rows``. (``search``'s backends order ties as faiss or
    ``torch.topk`` happen to; on tie-free data the two agree.)"""
    dist = dist or Distributed()
    device = device or dist.device
    n, m = xq.shape[0], xb.shape[0]
    if xq.shape[1] != xb.shape[1]:
        raise MnerError(f"query vectors have {xq.shape[1]} dims but pool vectors {xb.shape[1]}; "
                        "both must come from the same encoder", value=(xq.shape[1], xb.shape[1]))
    q_rows, b_rows = exclude if exclude is not None else (np.zeros(0, np.int64),) * 2
    kk = min(m, k + (int(np.bincount(q_rows, minlength=1).max()) if len(q_rows) else 0))
    if kk == 0 or n == 0:
        return np.full((n, k), np.nan, np.float32), np.full((n, k), -1, np.int64)
    first, last = dist.share(-(-m // pool_rows))
    shard = [(row, torch.from_numpy(block).to(device))
             for row, block in row_blocks(xb, pool_rows, first * pool_rows, last * pool_rows)]
    D = np.full((n, kk), np.nan, np.float32)
    I = np.full((n, kk), -1, np.int64)
    with torch.inference_mode(), progress(total=n, desc="search (sharded)") as bar:
        for row, block in row_blocks(xq, query_rows):
            mine = _shard_topk(torch.from_numpy(block).to(device), shard, kk)
            parts = zip(dist.all_gather(mine[0]), dist.all_gather(mine[1]))
            rows = slice(row, row + len(block))
            D[rows], I[rows] = merge_topk(list(parts), kk)
            bar.update(len(block))
    return _drop_excluded(D, I, k, q_rows, b_rows, m)


def _shard_topk(q, shard, k: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's top-``k`` of the query block ``q`` over its pool blocks (global rows)."""
    D = torch.full((len(q), k), float("-inf"), device=q.device)
    I = torch.full((len(q), k), _NO_ROW, dtype=torch.int64, device=q.device)
    for row, xb_block in shard:
        d, i = _block_topk(q @ xb_block.T, k)
        D, I = _merge(torch.cat([D, d], 1), torch.cat([I, i + row], 1), k)
    return _from_sentinels(D.cpu(), I.cpu(), k)


def _block_topk(S, k: int):
    """Top-``k`` of each row of the score block ``S`` (n, m), best first, a tie to the lower
    column: what a stable sort of -S gives, in O(n m) (no full sort).

    ``torch.topk`` of k + 1 gives the set wherever the (k+1)-th score is below the k-th (then
    only the k are put in order); the rows where it is not (a tie across the k-th place) take
    ``_tied_topk``."""
    k = min(k, S.shape[1])
    top = torch.topk(S, min(k + 1, S.shape[1]), dim=1)
    cols = _best_first(S, torch.sort(top.indices[:, :k], dim=1).values)
    if k < S.shape[1]:                              # else every column is taken
        rows = (top.values[:, k - 1] == top.values[:, k]).nonzero()[:, 0]
        if len(rows):
            cols[rows] = _tied_topk(S[rows], k)
    return torch.gather(S, 1, cols), cols


def _tied_topk(S, k: int):
    """``_block_topk``'s columns for rows with ties across the k-th place: the tied columns
    taken lowest first."""
    kth = torch.topk(S, k, dim=1).values[:, -1:]
    tied = S == kth
    need = k - (S > kth).sum(1, keepdim=True)
    keep = (S > kth) | (tied & (torch.cumsum(tied, 1) <= need))
    return _best_first(S, keep.nonzero()[:, 1].view(len(S), k))     # ascending in each row


def _best_first(S, cols):
    """``cols`` (ascending in each row) ordered by their score in ``S``, best first, a tie to
    the lower column (a stable sort)."""
    order = torch.sort(torch.gather(S, 1, cols), dim=1, descending=True, stable=True).indices
    return torch.gather(cols, 1, order)


def _merge(D, I, k: int):
    """Best ``k`` columns of each row by (score desc, row asc): two stable sorts."""
    by_row = torch.sort(I, dim=1, stable=True).indices
    D, I = torch.gather(D, 1, by_row), torch.gather(I, 1, by_row)
    best = torch.sort(D, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(D, 1, best), torch.gather(I, 1, best)


def _to_sentinels(D, I):
    empty = I < 0
    return D.masked_fill(empty, float("-inf")), I.masked_fill(empty, _NO_ROW)


def _from_sentinels(D, I, k: int) -> tuple[np.ndarray, np.ndarray]:
    D, I = D.numpy().astype(np.float32), I.numpy().astype(np.int64)
    empty = I == _NO_ROW
    D[empty], I[empty] = np.nan, -1
    if I.shape[1] < k:
        pad = ((0, 0), (0, k - I.shape[1]))
        D, I = np.pad(D, pad, constant_values=np.nan), np.pad(I, pad, constant_values=-1)
    return D, I
