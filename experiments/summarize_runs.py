"""Mean ± std over seeds of finished run folders, grouped by what differs between them.

    python experiments/summarize_runs.py artifacts/runs [more run roots...] [--out table.json]

Groups by dataset, encoder, model variant, graph source, pool and node view (read from each run's
config.json); prints a markdown table with test P/R/F1 (conlleval and strict), per-type F1
(conlleval), the number of seeds, mean wall time and the machine (from env.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer.metrics import mean_std  # noqa: E402


def variant(model: dict) -> str:
    """The ablation name (no-* parts joined by '+'), plus the context graph and size if any."""
    if model.get("text_only"):
        name = "text-only"
    else:
        parts = [name for name, on in (("no-inter", model.get("inter")),
                                       ("no-intra", model.get("intra")),
                                       ("no-gate", model.get("gate"))) if not on]
        name = "full" if not parts else "+".join(parts)
    if not model.get("shape", True):
        name += "+no-shape"
    if model.get("context", "none") != "none":
        name += f"+ctx-{model['context']}-k{model.get('context_k')}" + (
            "+labels" if model.get("context_labels") else "")
    return name


def run_key(config: dict, env: dict) -> tuple:
    model = config["model"]
    intra_view = config.get("intra_view", "object_types")     # which intra graph (issue 15)
    return (Path(config["data_dir"]).name, Path(str(model["encoder"])).name,
            variant(model) + ("" if intra_view == "object_types" else f"+intra:{intra_view}"),
            "-" if model.get("text_only") else config.get("graph_source", "ours"),
            config.get("pool", "all"), "-" if model.get("text_only") else model.get("node_view"),
            env.get("device", {}).get("gpu") or "CPU")


def read_run(folder) -> dict:
    """A finished run folder's records: ``{"folder", "config", "env", "results"}``."""
    folder = Path(folder)
    return {"folder": folder, "config": json.loads((folder / "config.json").read_text()),
            "env": json.loads((folder / "env.json").read_text()),
            "results": json.loads((folder / "results.json").read_text())}


def collect_records(roots) -> list[dict]:
    """``read_run`` of every finished run folder (one with results.json) under ``roots``."""
    return [read_run(results.parent) for root in roots
            for results in sorted(Path(root).glob("*/results.json"))]


def collect(roots) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in collect_records(roots):
        groups[run_key(record["config"], record["env"])].append(record["results"])
    return groups


def scores(runs: list[dict]) -> dict:
    """Seeds, mean ± std of test P/R/F1 (both modes, %), per-type F1 (conlleval) and mean wall
    seconds over the ``results.json`` records of several runs."""
    out = {"seeds": len(runs)}
    for mode in ("conlleval", "strict"):
        for metric in ("precision", "recall", "f1"):
            values = [100 * r["test"][mode]["overall"][metric] for r in runs]
            out[f"{mode}_{metric}"] = mean_std(values)
    for etype in sorted(runs[0]["test"]["conlleval"]["types"]):
        out[f"F1_{etype}"] = mean_std([100 * r["test"]["conlleval"]["types"][etype]["f1"]
                                       for r in runs])
    out["seconds"] = sum(r["seconds"] for r in runs) / len(runs)
    return out


def row(key: tuple, runs: list[dict]) -> dict:
    out = dict(zip(("dataset", "encoder", "variant", "graphs", "pool", "nodes", "machine"), key))
    out.update(scores(runs))
    return out


def markdown(rows: list[dict]) -> str:
    head = ["dataset", "encoder", "variant", "graphs", "seeds", "F1 conlleval", "F1 strict",
            "P", "R", "per-type F1 (conlleval)", "s / run", "machine"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}"  # noqa: E731
    for r in rows:
        types = ", ".join(f"{k[3:]} {v[0]:.1f}" for k, v in r.items() if k.startswith("F1_"))
        lines.append("| " + " | ".join([
            r["dataset"], r["encoder"], r["variant"],
            r["graphs"] + ("" if r["pool"] == "all" else f" (pool {r['pool']})"), str(r["seeds"]),
            fmt(r["conlleval_f1"]), fmt(r["strict_f1"]), f"{r['conlleval_precision'][0]:.2f}",
            f"{r['conlleval_recall'][0]:.2f}", types, f"{r['seconds']:.0f}", r["machine"]]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders holding run folders")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    groups = collect(args.roots)
    if not groups:
        print(f"no finished runs (results.json) under {', '.join(map(str, args.roots))}")
        return 1
    rows = [row(key, runs) for key, runs in sorted(groups.items())]
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
