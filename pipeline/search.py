"""Exact (and opt-in approximate) inner-product top-k search, the faiss way:
``D, I = search(xq, xb, k)``.

``xq`` (n, d) are the queries, ``xb`` (m, d) the database (pool); ``D`` (n, k) float32 holds the
scores best first and ``I`` (n, k) int64 the rows of ``xb``; ``I = -1`` (with ``D = nan``) where
fewer than k candidates remain. Cosine similarity is the inner product of L2-normalised vectors.

Backends, all exact and interchangeable (tested against each other and against brute force):

- ``faiss``: ``IndexFlatIP`` on the CPU, or faiss's GPU flat index when the installed faiss has GPUs
  and a CUDA device is asked for. faiss is imported lazily: it is optional.
- ``torch``: chunked matmul + ``topk``. On CUDA the matmul runs in float16 (or bfloat16) for speed;
  the candidates are then re-scored in float32 and every row is checked against a rounding-error
  bound, rows that fail it are searched again in float32, so the result equals exact search.
- ``auto``: faiss GPU > torch on CUDA > faiss CPU > torch CPU.

Pairs that must never match (the query's own item, an exact duplicate image) are excluded by asking
each backend for ``k + extra`` neighbours and filtering them out afterwards.
"""
from __future__ import annotations

import contextlib
import importlib
from collections import defaultdict

import numpy as np

from .encoders import resolve_device
from .errors import MissingInput, MnerError
from .progress import no_progress

BACKENDS = ("auto", "faiss", "torch")
APPROX = ("hnsw", "ivf")
PRECISIONS = ("auto", "float32", "float16", "bfloat16")
_UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


def load_faiss():
    """The faiss module, or None when it is not installed."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


def faiss_gpus() -> int:
    faiss = load_faiss()
    return faiss.get_num_gpus() if faiss is not None and hasattr(faiss, "get_num_gpus") else 0


def resolve_backend(backend: str, device: str) -> str:
    """The concrete backend: ``faiss-cpu``, ``faiss-gpu`` or ``torch``."""
    if backend not in BACKENDS:
        raise MnerError(f"unknown search backend {backend!r}; use one of {', '.join(BACKENDS)}",
                        value=backend, setting="backend")
    on_cuda = device.startswith("cuda")
    faiss = load_faiss()
    if backend == "faiss":
        if faiss is None:
            raise MissingInput("the faiss backend needs faiss, which is not installed "
                               "(pip install faiss-cpu)", value="faiss", setting="backend")
        return "faiss-gpu" if on_cuda and faiss_gpus() > 0 else "faiss-cpu"
    if backend == "torch":
        return "torch"
    if on_cuda:
        return "faiss-gpu" if faiss_gpus() > 0 else "torch"
    return "faiss-cpu" if faiss is not None else "torch"


def same_item_pairs(query_keys, pool_keys) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (query row, pool row) sharing any non-empty key: the matches to exclude.

    ``query_keys[i]`` and ``pool_keys[j]`` are tuples of strings, e.g.
    ``(item_id, content_sha256)``; position matters (an id never matches a hash) and ``""`` or
    None never matches.
    """
    index: dict[tuple[int, str], list[int]] = defaultdict(list)
    for row, keys in enumerate(pool_keys):
        for slot, key in enumerate(keys):
            if key:
                index[(slot, key)].append(row)
    pairs = set()
    for row, keys in enumerate(query_keys):
        for slot, key in enumerate(keys):
            if key:
                pairs.update((row, b) for b in index.get((slot, key), ()))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    q, b = np.array(sorted(pairs), dtype=np.int64).T
    return q, b


def search(xq, xb, k: int, *, backend: str = "auto", device: str = "auto", exclude=None,
           approx: str | None = None, precision: str = "auto", chunk_rows: int | None = None,
           progress=no_progress, info: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of every row of ``xq`` against ``xb``: ``(D, I)``, best first.

    ``exclude`` is ``(q_rows, b_rows)``, pairs that must not appear (see ``same_item_pairs``).
    ``approx`` ("hnsw" or "ivf", faiss only) trades exactness for speed; measure it with
    ``estimate_recall``. ``precision`` applies to the torch backend ("auto": float16 on CUDA,
    float32 on CPU). ``info``, when given, receives the backend actually used and how many rows the
    torch low-precision path had to search again in float32.
    """
    xq, xb = _as_matrix(xq, "xq"), _as_matrix(xb, "xb")
    if xq.shape[1] != xb.shape[1]:
        raise MnerError(f"query vectors have {xq.shape[1]} dims but pool vectors {xb.shape[1]}; "
                        "both must come from the same encoder")
    if k < 1:
        raise MnerError(f"k must be at least 1, got {k}")
    device = resolve_device(device)
    q_rows, b_rows = exclude if exclude is not None else (np.zeros(0, np.int64),) * 2
    extra = int(np.bincount(q_rows, minlength=1).max()) if len(q_rows) else 0
    kk = min(len(xb), k + extra)
    n = len(xq)
    if kk == 0 or n == 0:
        return np.full((n, k), np.nan, np.float32), np.full((n, k), -1, np.int64)
    used = "faiss-" + approx if approx else resolve_backend(backend, device)
    with progress(total=n, desc=f"search ({used})") as bar:
        if approx:
            D, I = _faiss_approx(xq, xb, kk, approx, bar)
        elif used == "torch":
            D, I, again = _torch_search(xq, xb, kk, device, precision, chunk_rows, bar)
            if info is not None:
                info["fallback_rows"] = again
        else:
            D, I = _faiss_flat(xq, xb, kk, used == "faiss-gpu", device, chunk_rows, bar)
    if info is not None:
        info.update(backend=used, device=device if used != "faiss-cpu" else "cpu")
    return _drop_excluded(D, I, k, q_rows, b_rows, len(xb))


def _as_matrix(x, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise MnerError(f"{name} must be a 2-d array (rows, dims), got shape {x.shape}")
    return x


def _drop_excluded(D, I, k, q_rows, b_rows, m):
    """Remove excluded pairs and -1 labels from each row, keep the order, pad to k with -1/nan."""
    bad = I < 0
    if len(q_rows):
        codes = np.arange(len(I), dtype=np.int64)[:, None] * m + np.where(bad, 0, I)
        bad |= np.isin(codes, q_rows * m + b_rows)
    if I.shape[1] == k and not bad.any():
        return D.astype(np.float32), I.astype(np.int64)
    order = np.argsort(bad, axis=1, kind="stable")[:, :k]
    I = np.take_along_axis(I, order, axis=1)
    D = np.take_along_axis(D.astype(np.float32), order, axis=1)
    gone = np.take_along_axis(bad, order, axis=1)
    I[gone], D[gone] = -1, np.nan
    if I.shape[1] < k:
        pad = k - I.shape[1]
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=np.nan)
    return D, I.astype(np.int64)


def _chunks(n: int, rows: int):
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def _default_rows(m: int, bytes_per_score: int, budget: int) -> int:
    return max(1, budget // max(1, m * bytes_per_score))


def _faiss_flat(xq, xb, kk, gpu: bool, device: str, chunk_rows, bar):
    faiss = load_faiss()
    index = _faiss_gpu_flat(faiss, xb.shape[1], device) if gpu else faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    rows = chunk_rows or _default_rows(len(xb), 4, 1 << 28)
    D = np.empty((len(xq), kk), np.float32)
    I = np.empty((len(xq), kk), np.int64)
    for part in _chunks(len(xq), rows):
        D[part], I[part] = index.search(xq[part], kk)
        bar.update(part.stop - part.start)
    return D, I


def _faiss_gpu_flat(faiss, dims: int, device: str):
    """faiss's exact GPU index: on ``cuda:N`` that GPU; on ``cuda`` with several GPUs the pool
    sharded over all of them (``index_cpu_to_all_gpus``, an ``IndexShards`` merging the shards'
    top-k), else GPU 0."""
    if ":" not in device and faiss.get_num_gpus() > 1:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        return faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dims), options)
    config = faiss.GpuIndexFlatConfig()
    config.device = int(device.split(":")[1]) if ":" in device else 0
    return faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), dims, config)


def approx_index(xb: np.ndarray, kind: str, kk: int):
    """A faiss HNSW or IVF inner-product index over ``xb``, with search parameters set."""
    faiss = load_faiss()
    if faiss is None:
        raise MissingInput(f"approximate search ({kind}) needs faiss (pip install faiss-cpu); "
                           "exact search works without it")
    m, d = xb.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(xb)
        index.hnsw.efSearch = max(128, 2 * kk)
        return index
    if kind == "ivf":
        nlist = int(max(1, min(4 * np.sqrt(m), m // 39)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = xb[np.random.default_rng(0).choice(m, min(m, 64 * nlist), replace=False)]
        index.train(sample)
        index.add(xb)
        index.nprobe = min(nlist, 32)
        return index
    raise MnerError(f"unknown approximate index {kind!r}; use one of {', '.join(APPROX)}")


def _faiss_approx(xq, xb, kk, kind, bar):
    index = approx_index(xb, kind, kk)
    D = np.empty((len(xq), kk), np.float32)
    I = np.empty((len(xq), kk), np.int64)
    for part in _chunks(len(xq), 16384):
        D[part], I[part] = index.search(xq[part], kk)
        bar.update(part.stop - part.start)
    return D, I


@contextlib.contextmanager
def _full_precision_reduction(torch):
    """cuBLAS may accumulate half-precision products in half precision: forbid it meanwhile."""
    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_fp16_reduced_precision_reduction,
             matmul.allow_bf16_reduced_precision_reduction)
    matmul.allow_fp16_reduced_precision_reduction = False
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        (matmul.allow_fp16_reduced_precision_reduction,
         matmul.allow_bf16_reduced_precision_reduction) = saved


def _torch_search(xq, xb, kk, device, precision, chunk_rows, bar):
    """Chunked matmul + topk; low precision with an exact float32 re-score on the candidates."""
    import torch

    cuda = device.startswith("cuda")
    if precision not in PRECISIONS:
        raise MnerError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "float16" if cuda else "float32"
    scale = float(np.linalg.norm(xb, axis=1).max()) * float(np.linalg.norm(xq, axis=1).max())
    if precision == "float16" and scale > 1e4:  # products could overflow half precision
        precision = "float32"
    dtype = getattr(torch, precision)
    m = len(xb)
    xb32 = torch.from_numpy(xb).to(device)
    xb_low = xb32 if precision == "float32" else xb32.to(dtype)
    kc = kk if precision == "float32" else min(m, kk + max(kk, 32))
    rows = chunk_rows or _default_rows(m, xb_low.element_size() + 4, (1 << 32) if cuda else (1 << 28))
    D = np.empty((len(xq), kk), np.float32)
    I = np.empty((len(xq), kk), np.int64)
    again = 0
    guard = _full_precision_reduction(torch) if cuda else contextlib.nullcontext()
    with torch.inference_mode(), guard:
        for part in _chunks(len(xq), rows):
            q32 = torch.from_numpy(xq[part]).to(device)
            scores, cand = torch.topk(q32.to(dtype) @ xb_low.T, kc, dim=1)
            if precision != "float32":
                scores, cand, redo = _rescore(q32, xb32, scores, cand, kk, m, precision)
                if redo.any():
                    rows_redo = redo.nonzero().squeeze(1)
                    scores[rows_redo], cand[rows_redo] = torch.topk(q32[rows_redo] @ xb32.T, kk,
                                                                    dim=1)
                    again += int(rows_redo.numel())
            D[part] = scores.float().cpu().numpy()
            I[part] = cand.cpu().numpy()
            bar.update(part.stop - part.start)
    return D, I, again


def _rescore(q32, xb32, approx_scores, cand, kk, m, precision):
    """Exact float32 scores of the candidates, best ``kk`` first, and the rows to search again.

    A row is exact when its ``kk``-th exact score beats every non-candidate's best possible exact
    score: the lowest low-precision candidate score plus the rounding-error bound ``eps``.
    """
    import torch

    exact = torch.einsum("cd,ckd->ck", q32, xb32[cand])
    exact, order = torch.sort(exact, dim=1, descending=True)
    cand = torch.gather(cand, 1, order)[:, :kk]
    exact = exact[:, :kk]
    if approx_scores.shape[1] == m:
        return exact, cand, torch.zeros(len(cand), dtype=torch.bool, device=cand.device)
    u = _UNIT_ROUNDOFF[precision]
    d = q32.shape[1]
    eps = 2 * (3 * u + d * 2.0 ** -24) * q32.norm(dim=1) * xb32.norm(dim=1).max()
    floor = approx_scores[:, -1].float() + eps
    return exact, cand, exact[:, -1] < floor


def recall_at_k(I, I_ref) -> float:
    """Mean over rows of |found ∩ reference| / |reference| (ignoring -1 labels)."""
    hits = total = 0
    for row, ref in zip(I, I_ref):
        ref = set(ref[ref >= 0].tolist())
        hits += len(ref & set(row[row >= 0].tolist()))
        total += len(ref)
    return hits / total if total else 1.0


def estimate_recall(xq, xb, I, k: int, *, exclude=None, sample: int = 1000, seed: int = 0,
                    backend: str = "auto", device: str = "auto") -> float:
    """Recall@k of an approximate result ``I`` against exact search on ``sample`` random queries."""
    xq = _as_matrix(xq, "xq")
    rows = np.sort(np.random.default_rng(seed).choice(len(xq), min(sample, len(xq)), replace=False))
    sub_exclude = None
    if exclude is not None:
        keep = np.isin(exclude[0], rows)
        sub_exclude = (np.searchsorted(rows, exclude[0][keep]), exclude[1][keep])
    _, I_ref = search(xq[rows], xb, k, backend=backend, device=device, exclude=sub_exclude)
    return recall_at_k(np.asarray(I)[rows, :k], I_ref)

