"""What a neighbour graph looks like: hubness, coverage, scores, and overlap between two graphs.

All measures use each graph's first ``k`` columns (its best k) over the queries not flagged.

- k-occurrence ``N_k(b)``: in how many top-k lists pool image b appears. Hubness shows as a few
  images with a huge ``N_k`` (a right-skewed distribution): ``hub_share`` is the share of lists that
  contain the single most popular image, ``nk_skew`` the sample skewness of ``N_k`` over the pool,
  ``nk_max`` its maximum.
- ``coverage``: distinct neighbour images / pool size.
- score quantiles over all edges, and the share of scores equal to 1 or 0 (within 1e-6) among all
  edges and among the top-1 edges (the authors' image->image lists have many of both).
- ``overlap@k(a, b)`` = mean over common non-flagged queries of |N_a(q) ∩ N_b(q)| / k, neighbours
  compared by image id.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .graph_store import Graph

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
TOL = 1e-6


def _top(graph: Graph, k: int | None):
    k = graph.k if k is None else min(k, graph.k)
    live = ~graph.flagged
    return graph.I[live, :k], graph.D[live, :k], k


def k_occurrence(graph: Graph, k: int | None = None) -> np.ndarray:
    """``N_k`` per pool row: how many (non-flagged) top-k lists contain that image."""
    I, _, _ = _top(graph, k)
    return np.bincount(I[I >= 0], minlength=len(graph.pool_ids))


def _skew(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    sd = x.std()
    return float(((x - x.mean()) ** 3).mean() / sd ** 3) if sd > 0 else 0.0


def diagnose(graph: Graph, k: int | None = None) -> dict:
    """All measures of one graph, as a flat dict (one column of ``diagnostics_table``)."""
    I, D, k = _top(graph, k)
    nk = k_occurrence(graph, k)
    hub = int(nk.argmax()) if nk.size else -1
    lists = len(I)
    edges = D[I >= 0]
    top1 = D[I[:, 0] >= 0, 0] if lists else np.zeros(0)
    row = {"k": k, "queries": len(graph.query_ids), "flagged": int(graph.flagged.sum()),
           "pool": len(graph.pool_ids), "edges": int(edges.size),
           "hub_id": graph.pool_ids[hub] if hub >= 0 and nk[hub] else "-",
           "hub_share": float((I == hub).any(axis=1).mean()) if lists and hub >= 0 else 0.0,
           "nk_max": int(nk.max()) if nk.size else 0, "nk_skew": _skew(nk),
           "coverage": float((nk > 0).mean()) if nk.size else 0.0}
    for q in QUANTILES:
        row[f"score_q{int(q * 100):02d}"] = float(np.quantile(edges, q)) if edges.size else np.nan
    for name, values in (("edges", edges), ("top1", top1)):
        row[f"{name}_eq1"] = float((np.abs(values - 1) <= TOL).mean()) if values.size else np.nan
        row[f"{name}_eq0"] = float((np.abs(values) <= TOL).mean()) if values.size else np.nan
    return row


def overlap_at_k(a: Graph, b: Graph, k: int) -> tuple[float, int]:
    """``(overlap@k, common queries)``: mean |N_a(q) ∩ N_b(q)| / k over queries live in both."""
    k = min(k, a.k, b.k)
    rows_b = {item: r for r, item in enumerate(b.query_ids)}
    total, count = 0.0, 0
    for ra, item in enumerate(a.query_ids):
        rb = rows_b.get(item)
        if rb is None or a.flagged[ra] or b.flagged[rb]:
            continue
        na = {a.pool_ids[j] for j in a.I[ra, :k] if j >= 0}
        nb = {b.pool_ids[j] for j in b.I[rb, :k] if j >= 0}
        total += len(na & nb) / k
        count += 1
    return (total / count if count else float("nan")), count


def diagnostics_table(graphs: dict[str, Graph], k: int | None = None) -> pd.DataFrame:
    """Measures as rows, one column per graph (printable with ``to_string``)."""
    return pd.DataFrame({name: diagnose(graph, k) for name, graph in graphs.items()})


def format_table(table: pd.DataFrame) -> str:
    """The table with floats rounded to 4 places and counts as integers."""
    def cell(value):
        if isinstance(value, (float, np.floating)):
            return "-" if np.isnan(value) else f"{value:.4f}"
        return str(value)
    return table.map(cell).to_string()


def overlaps(graphs: dict[str, Graph], k: int) -> list[tuple[str, str, float, int]]:
    """overlap@k of each of our graphs with the authors' graph of that relation, if both exist."""
    rows = []
    for relation in ("inter", "intra"):
        if relation in graphs and f"{relation}-rgcn" in graphs:
            value, common = overlap_at_k(graphs[relation], graphs[f"{relation}-rgcn"], k)
            rows.append((relation, f"{relation}-rgcn", value, common))
    return rows


def plot_k_occurrence(graphs: dict[str, Graph], path, k: int | None = None):
    """One histogram of ``N_k`` per graph (log counts) in a PNG; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(graphs), figsize=(4 * len(graphs), 3.2), squeeze=False)
    for ax, (name, graph) in zip(axes[0], graphs.items()):
        nk = k_occurrence(graph, k)
        ax.hist(nk, bins=min(60, max(1, int(nk.max()) + 1)), log=True, color="tab:blue")
        ax.set_title(f"{name}  (k={min(k or graph.k, graph.k)}, skew {_skew(nk):.1f})", fontsize=9)
        ax.set_xlabel("N_k: top-k lists containing the image")
        ax.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(graphs: dict[str, Graph], k: int) -> str:
    """The diagnostics table and the overlap@k of ours vs the authors' graphs, as printed text."""
    lines = [f"diagnostics (first {k} neighbours of each graph):",
             format_table(diagnostics_table(graphs, k))]
    for ours, theirs, value, common in overlaps(graphs, k):
        lines.append(f"overlap@{k} {ours} vs {theirs}: {value:.4f} (mean |N_ours ∩ N_theirs| / {k} "
                     f"over {common} tweets)")
    return "\n".join(lines)
