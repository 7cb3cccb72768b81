"""Diagnostics of several graph files side by side, and the overlap@K of every pair.

    python experiments/compare_graphs.py NAME=graph.h5 NAME=graph.h5 [...] [--k 5]

For example MiniLM vs MPNet inter-modal graphs vs the authors' lists: hubness, coverage, score
distributions (pipeline/diagnostics.py) and mean |N_a(q) ∩ N_b(q)| / K over the common queries.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.diagnostics import diagnostics_table, format_table, overlap_at_k  # noqa: E402
from pipeline.graphs import read_graph  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+", help="NAME=path/to/graph.h5")
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args(argv)
    graphs = {}
    for item in args.graphs:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: expected NAME=path/to/graph.h5")
        graphs[name] = read_graph(path)
    print(f"diagnostics (first {args.k} neighbours of each graph):")
    print(format_table(diagnostics_table(graphs, args.k)))
    for a, b in itertools.combinations(graphs, 2):
        value, common = overlap_at_k(graphs[a], graphs[b], args.k)
        print(f"overlap@{args.k} {a} vs {b}: {value:.4f} over {common} common queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
