"""The ranking step of build-graphs: top-k pool rows per query by cosine or CSLS, ties broken by
seeded random columns or by pool row (see ``graphs.py``'s docstring for the recipe).

Two paths, same neighbours:

- ``rank`` (in memory): ``xq``, ``xb`` are arrays; the extra columns are stacked onto them and the
  cosine of the chosen pairs is recomputed from the vectors. The single-process path of
  ``search``'s backends (faiss / torch), which take whole arrays.
- ``rank_streamed``: ``xq``, ``xb`` are row views (``row_views.FileRows``), read a block at a time
  by ``sharded_search``; the extra columns are appended per block (``row_views.Columns``) and the
  cosine is recovered from the search's own scores (the extra columns' share taken out), so no
  table is ever gathered or held whole. Used whenever the search is ``sharded_search``
  (``streams``: under torchrun, or ``ties="index"``).
"""
from __future__ import annotations

import warnings

import numpy as np

from . import row_views
from .progress import no_progress
from .row_views import Columns
from .runtime import resolve_device
from .search import estimate_recall, search
from .sharded_search import sharded_search

TIE_SCALE = 1e-5     # largest change a tie-break may make to a score
TIE_DIMS = 16


def row_means(D) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nan_to_num(np.nanmean(D, axis=1))


def tie_columns(n: int, m: int, seed: int):
    """Extra columns whose inner products add a pseudo-random amount in [-TIE_SCALE, TIE_SCALE]
    to every (query, pool) score: exact ties are broken per pair instead of by pool order."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((n + m, TIE_DIMS)).astype(np.float32)
    r *= np.float32(np.sqrt(TIE_SCALE)) / np.linalg.norm(r, axis=1, keepdims=True)
    return r[:n], r[n:]


def streams(config, dist) -> bool:
    """Whether the exact search is ``sharded_search``, which streams row blocks: in a group, for
    ``ties="index"`` (a tie goes to the lower pool row, however many ranks), or for tables too
    large to hold (``config.stream``)."""
    return config.approx is None and (dist.active or config.ties == "index" or config.stream)


def exact_search(config, dist):
    """The top-k the graph uses: the ranks' sharded search (pipeline/sharded_search.py) when
    ``streams``, else ``search`` with the configured backend. All are exact: same neighbours on
    tie-free data."""
    if streams(config, dist):
        device = dist.device if dist.active else resolve_device(config.device)

        def sharded(xq, xb, k, exclude=None, info=None, progress=no_progress):
            if info is not None:
                info["backend"] = f"sharded exact ({dist.world} rank(s), {device})"
            return sharded_search(xq, xb, k, dist=dist, exclude=exclude, device=device,
                                  query_rows=row_views.QUERY_ROWS,
                                  pool_rows=row_views.POOL_ROWS, progress=progress)
        return sharded

    def plain(xq, xb, k, exclude=None, info=None, progress=no_progress):
        return search(xq, xb, k, exclude=exclude, info=info, backend=config.backend,
                      device=config.device, approx=config.approx, progress=progress)
    return plain


def _csls_radii(top, xq, xb, exclude, config, progress, info):
    """``(r_q, r_b)``: each side's mean cosine to its ``csls_k`` nearest on the other side."""
    r_q = row_means(top(xq, xb, config.csls_k, exclude=exclude, progress=progress)[0])
    r_b = row_means(top(xb, xq, config.csls_k, exclude=exclude[::-1], progress=progress)[0])
    info["csls"] = {"r_q_mean": float(r_q.mean()), "r_b_mean": float(r_b.mean())}
    return r_q, r_b[:, None].astype(np.float32)


def rank(xq, xb, exclude, config, progress, info: dict, dist):
    """``(D, I)``: cosine scores and pool rows of the top-k, ranked by cosine or CSLS, for
    arrays ``xq`` (n, d), ``xb`` (m, d) of unit rows."""
    top = exact_search(config, dist)
    aq, ab = xq, xb
    if config.hubness == "csls":
        _, r_b = _csls_radii(top, xq, xb, exclude, config, progress, info)
        aq = np.hstack([2 * xq, -np.ones((len(xq), 1), np.float32)])
        ab = np.hstack([xb, r_b])
    if config.ties == "random":
        tq, tb = tie_columns(len(xq), len(xb), config.seed)
        aq, ab = np.hstack([aq, tq]), np.hstack([ab, tb])
    _, I = top(aq, ab, config.k, exclude=exclude, info=info, progress=progress)
    if config.approx:
        info["recall_at_k"] = estimate_recall(
            aq, ab, I, config.k, exclude=exclude, sample=config.recall_sample,
            backend="faiss" if config.backend == "auto" else config.backend, device=config.device)
    return _pair_cosines(xq, xb, I), I


def _pair_cosines(xq, xb, I, rows: int = 4096) -> np.ndarray:
    """The cosine of each query and its pool rows ``I`` (nan where -1), per block of queries:
    gathering every pair's pool vector at once took n x k x d floats (15 GB at 1M x 10 x 384)."""
    out = np.full(I.shape, np.nan, np.float32)
    for first in range(0, len(I), rows):
        part = slice(first, first + rows)
        D = np.einsum("nd,nkd->nk", xq[part], xb[np.maximum(I[part], 0)])
        out[part] = np.where(I[part] >= 0, D, np.nan)
    return out


def rank_streamed(xq, xb, exclude, config, progress, info: dict, dist):
    """``rank`` for row views ``xq``, ``xb`` (``row_views.FileRows``): the same neighbours, the
    cosine within float32 rounding; never more than a block of either in memory, besides what
    ``sharded_search`` keeps of the pool (its shard, on its device)."""
    top = exact_search(config, dist)
    aq, ab, r_b, tq, tb = xq, xb, None, None, None
    if config.hubness == "csls":
        _, r_b = _csls_radii(top, xq, xb, exclude, config, progress, info)
        aq = Columns(xq, -np.ones((len(xq), 1), np.float32), scale=2)
        ab = Columns(xb, r_b)
    if config.ties == "random":
        tq, tb = tie_columns(len(xq), len(xb), config.seed)
        aq, ab = Columns(aq, tq), Columns(ab, tb)
    D, I = top(aq, ab, config.k, exclude=exclude, info=info, progress=progress)
    return _cosines(D, I, r_b, tq, tb), I


def _cosines(D, I, r_b, tq, tb, rows: int = 4096) -> np.ndarray:
    """The cosine part of the search's scores ``D`` of pairs ``I``: CSLS's 2cos - r_b and the
    tie-break's shift taken out (float64, per block of queries); nan where ``I`` is -1."""
    out = np.full(D.shape, np.nan, np.float32)
    for first in range(0, len(D), rows):
        part = slice(first, first + rows)
        J, S = np.maximum(I[part], 0), D[part].astype(np.float64)
        if tq is not None:
            S -= np.einsum("nd,nkd->nk", tq[part], tb[J], dtype=np.float64)
        if r_b is not None:
            S = (S + r_b[J, 0]) / 2
        out[part] = np.where(I[part] >= 0, S, np.nan)
    return out
