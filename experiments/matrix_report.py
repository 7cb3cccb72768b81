"""RESULTS.md, matrix.csv and matrix.json from the finished run folders of the results matrix
(the ``report`` stage of experiments/results_matrix.py).

Per dataset: the main table (one line per matrix row: seeds done/planned, test P/R/F1 and per-type
F1 in conlleval mode, F1 in strict mode, mean ± sample std over seeds, wall time, machine, the
paper's F1), the gains between rows with their standard error and a verdict, the inputs the runs
used (read from their config.json / env.json / inputs.json / model.json and the feature files'
attributes), and the graph diagnostics of build-graphs (pipeline/diagnostics.py) for every graph
in the dataset's graph manifest.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import machine  # noqa: E402  (the host the report is written on)
from experiments.matrix_rows import PAPER  # noqa: E402
from experiments.matrix_runner import RUN_NAME, scan_runs  # noqa: E402
from experiments.summarize_runs import collect_records, scores  # noqa: E402
from pipeline.artifacts import atomic_path  # noqa: E402
from pipeline.errors import MnerError  # noqa: E402
from trainer.metrics import mean_std  # noqa: E402

TYPE_ORDER = ("PER", "LOC", "ORG", "OTHER", "MISC")
SOURCES = {"caption": "the image's caption", "image": "the image pixels",
           "imagenet_labels": "the image's top ImageNet labels as a phrase",
           "tweet_text": "the tweet text"}


def pm(pair) -> str:
    return f"{pair[0]:.2f} ± {pair[1]:.2f}"


def machine_of(env: dict) -> str:
    device = env.get("device") or {}
    return device.get("gpu") or f"CPU ({device.get('threads', '?')} threads)"


def finished_runs(runs_dir: Path, config, rows) -> dict[tuple[str, str], dict[int, dict]]:
    """``(dataset, row) -> {seed: record}`` for the planned runs with results.json (the latest
    folder when a slug was run twice); records are ``summarize_runs.read_run``'s plus
    ``inputs`` and ``model`` (model.json) when present."""
    planned = {f"{ds}-{row.name}-s{seed}": (ds, row.name, seed) for ds in config.datasets
               for row in rows for seed in config.planned_seeds(row)}
    found: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for record in collect_records([runs_dir]) if Path(runs_dir).is_dir() else []:
        match = RUN_NAME.match(record["folder"].name)
        key = planned.get(match["slug"]) if match and not match["tmp"] else None
        if key is None:
            continue
        for name in ("inputs", "model"):
            path = record["folder"] / f"{name}.json"
            record[name] = json.loads(path.read_text()) if path.is_file() else None
        found[key[:2]][key[2]] = record
    return found


def gain(a: list[float], b: list[float]) -> dict:
    """Mean difference a - b, its standard error sqrt(sd_a²/n_a + sd_b²/n_b) and the verdict:
    "clear" when |diff| > 2 SE and |diff| > max(sd_a, sd_b), "within noise" otherwise, "too few
    seeds" with fewer than 2 on either side."""
    (mean_a, sd_a), (mean_b, sd_b) = mean_std(a), mean_std(b)
    diff = mean_a - mean_b
    se = math.sqrt(sd_a ** 2 / len(a) + sd_b ** 2 / len(b))
    if min(len(a), len(b)) < 2:
        verdict = "too few seeds"
    elif abs(diff) > 2 * se and abs(diff) > max(sd_a, sd_b):
        verdict = "clear"
    else:
        verdict = "within noise"
    return {"diff": diff, "se": se, "sd_a": sd_a, "sd_b": sd_b, "n_a": len(a), "n_b": len(b),
            "verdict": verdict}


def summarize_row(dataset: str, row, runs: dict[int, dict], planned, status_runs: dict,
                  paper: dict) -> dict:
    """One line of the main table (and of the CSV/JSON)."""
    failed = {seed: status_runs[slug]["error"] for seed in planned if seed not in runs and (
        slug := f"{dataset}-{row.name}-s{seed}") in status_runs
        and status_runs[slug].get("status") == "failed"}
    done = sorted(runs)
    state = ("complete" if len(done) == len(planned) else "incomplete" if done
             else "failed" if failed else "not run")
    out = {"dataset": dataset, "row": row.name, "label": row.label, "flags": " ".join(row.flags),
           "status": state, "seeds_planned": list(planned), "seeds_done": done,
           "failed": failed, "paper_setting": row.paper,
           "paper_f1": paper.get(row.paper, {}).get(dataset)}
    if done:
        records = [runs[seed] for seed in done]
        out.update(scores([r["results"] for r in records]))
        out["machine"] = ", ".join(sorted({machine_of(r["env"]) for r in records}))
        out["per_seed"] = {seed: {mode: 100 * runs[seed]["results"]["test"][mode]["overall"]["f1"]
                                  for mode in ("conlleval", "strict")} for seed in done}
        out["folders"] = [runs[seed]["folder"].name for seed in done]
    return out


def gains_rows(summaries: dict[str, dict], gains) -> list[dict]:
    """The gains of one dataset over conlleval F1: a - b for each (a, b, meaning) in ``gains``."""
    out = []
    for a, b, meaning in gains:
        line = {"a": a, "b": b, "meaning": meaning}
        values = [list(summaries[x].get("per_seed", {}).values()) if x in summaries else []
                  for x in (a, b)]
        if all(values):
            line.update(gain(*[[v["conlleval"] for v in side] for side in values]))
        else:
            line["verdict"] = "no finished runs: " + ", ".join(x for x, v in zip((a, b), values) if not v)
        out.append(line)
    return out


def type_names(summaries) -> list[str]:
    seen = {key[3:] for s in summaries for key in s if key.startswith("F1_")}
    return [t for t in TYPE_ORDER if t in seen] + sorted(seen - set(TYPE_ORDER))


def main_table(summaries: list[dict]) -> str:
    types = type_names(summaries)
    head = (["row", "seeds", "P", "R", "F1", "F1 strict"] + [f"F1 {t}" for t in types]
            + ["s / run", "machine", "paper F1"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        seeds = f"{len(s['seeds_done'])}/{len(s['seeds_planned'])}" + (
            "" if s["status"] == "complete" else f" ({s['status']})")
        if s["seeds_done"]:
            cells = ([pm(s[f"conlleval_{m}"]) for m in ("precision", "recall", "f1")]
                     + [pm(s["strict_f1"])] + [pm(s[f"F1_{t}"]) if f"F1_{t}" in s else "-"
                                               for t in types]
                     + [f"{s['seconds']:.0f}", s["machine"]])
        else:
            cells = ["-"] * (6 + len(types))
        paper = f"{s['paper_f1']:.2f}" if s["paper_f1"] is not None else "-"
        lines.append("| " + " | ".join([f"{s['row']}: {s['label']}", seeds, *cells, paper])
                     + " |")
    return "\n".join(lines)


def failures(summaries: list[dict]) -> str:
    lines = [f"- {s['row']}, seed {seed}: failed: `` {error} ``"
             for s in summaries for seed, error in sorted(s["failed"].items())]
    return "\n".join(["Failed runs (their logs are in <artifacts>/logs/<dataset>-<row>-s<seed>"
                      ".log; they are launched again on the next call):", *lines]) if lines else ""


def gains_table(lines: list[dict]) -> str:
    head = ["a - b", "measures", "n a / b", "diff (F1 points)", "SE", "max sd", "verdict"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in lines:
        if "diff" in g:
            cells = [f"{g['n_a']} / {g['n_b']}", f"{g['diff']:+.2f}", f"{g['se']:.2f}",
                     f"{max(g['sd_a'], g['sd_b']):.2f}"]
        else:
            cells = ["-"] * 4
        out.append("| " + " | ".join([f"{g['a']} - {g['b']}", g["meaning"], *cells,
                                      g["verdict"]]) + " |")
    return "\n".join(out)


def feature_attrs(path) -> dict:
    """``source``, ``space``, ``view`` and the ``encoder`` name of a feature file, if readable;
    without the file, ``source`` and ``space`` from the extract manifest beside it."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            attrs = {k: h5.attrs[k] for k in ("source", "space", "view", "encoder")
                     if k in h5.attrs}
    except OSError:
        manifest = Path(path).parent / "manifest.json"
        views = json.loads(manifest.read_text()).get("views", {}) if manifest.is_file() else {}
        entry = next((e for e in views.values() if e.get("file") == Path(path).name), {})
        return {k: entry[k] for k in ("source", "space") if k in entry}
    attrs = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in attrs.items()}
    if "encoder" in attrs:
        attrs["encoder"] = json.loads(attrs["encoder"]).get("name", attrs["encoder"])
    return attrs


def image_inputs(record: dict) -> dict:
    return (record.get("inputs") or {}).get("image") or {}


def node_features(record: dict) -> str | None:
    features = image_inputs(record).get("features")
    if not features:
        return None
    attrs = feature_attrs(features["path"])
    source = SOURCES.get(attrs.get("source"), attrs.get("source"))
    what = (f"{source} embedded by {attrs['encoder']}" if "encoder" in attrs else
            f"{source} (from the extract manifest; feature file absent)" if source else
            "source not readable here (feature file absent)")
    return (f"{features['view']}: {what}, space {features['space']} "
            f"(features {Path(features['path']).name})")


def graph_input(record: dict, relation: str) -> str | None:
    graph = image_inputs(record).get(relation)
    if not graph:
        return None
    return (f"{graph.get('source')} graph, pool {graph.get('pool')}, K={graph.get('k')}, space "
            f"{graph.get('space')} ({Path(graph['path']).name})")


def context_input(record: dict) -> str | None:
    context = image_inputs(record).get("context")
    if not context:
        return None
    model = record["config"]["model"]
    return (f"the tweets of the first {context.get('context_k')} neighbours in the "
            f"{context.get('relation')} graph ({context.get('source')}, pool "
            f"{context.get('pool')}; {Path(context['path']).name}), within "
            f"{model.get('context_subwords')} extra subwords")


def text_encoder(record: dict) -> str:
    model = record.get("model") or {}
    sha = (model.get("encoder") or {}).get("weights_sha256")
    return f"{record['config']['model']['encoder']}" + (f" (weights sha256 {sha[:12]})" if sha
                                                       else "")


def training(record: dict) -> str:
    o, c = record["config"]["optim"], record["config"]
    return (f"epochs <= {o['epochs']} (patience {o['patience']}), batch {o['batch_size']}, lr "
            f"encoder {o['lr_encoder']:g}, lr head {o['lr_head']:g}, warm-up {o['warmup']:g}, "
            f"precision {c['precision']}")


def code(record: dict) -> str:
    env = record["env"]
    packages = env.get("packages", {})
    dirty = " (uncommitted changes)" if env.get("code", {}).get("git_dirty") else ""
    return (f"git {env.get('code', {}).get('git_sha')}{dirty}, torch {packages.get('torch')}, "
            f"transformers {packages.get('transformers')}")


SETTINGS = (("text encoder", text_encoder), ("node features", node_features),
            ("inter-modal graph", lambda r: graph_input(r, "inter")),
            ("intra-modal graph", lambda r: graph_input(r, "intra")),
            ("encoder context", context_input),
            ("training", training), ("code", code))


def inputs_table(rows_runs: dict[str, dict[int, dict]]) -> str:
    """Each setting's distinct values over the runs, with the rows that used each when they
    differ."""
    lines = ["| setting | value |", "|---|---|"]
    for name, describe in SETTINGS:
        users: dict[str, list[str]] = defaultdict(list)
        for row, runs in rows_runs.items():
            for value in {describe(record) for record in runs.values()} - {None}:
                users[value].append(row)
        if not users:
            continue
        cells = [value if len(users) == 1 and len(used) == len(rows_runs)
                 else f"{value} (rows: {', '.join(used)})" for value, used in users.items()]
        lines.append(f"| {name} | {'<br>'.join(cells)} |")
    return "\n".join(lines)


def graphs_section(artifacts: Path, dataset: str, k: int) -> str:
    """build-graphs' diagnostics table and overlap@k for the graphs in the dataset's manifest."""
    from pipeline.diagnostics import report
    from pipeline.graphs import load_graph_manifest, read_graph

    keys = sorted((Path(artifacts) / "graphs").glob(f"{dataset}-*/manifest.json"),
                  key=lambda p: p.stat().st_mtime)       # the store's folder: <name>-<ids hash>
    try:
        files = load_graph_manifest(artifacts, keys[-1].parent.name if keys else dataset)
        graphs = {name: read_graph(path) for name, path in sorted(files.items())}
    except MnerError as err:
        return f"No graph diagnostics: {err}"
    names = ", ".join(f"{n} = {p.name}" for n, p in sorted(files.items()))
    return f"Graph files ({names}):\n\n```\n{report(graphs, k)}\n```"


NOTES = """P, R, F1 and per-type F1: test split, seqeval entity-level micro scores in conlleval mode
(an orphan I-X starts an entity); F1 strict: seqeval strict IOB2 mode. Mean ± sample std over the
seeds done; the model of each run is its best validation epoch (conlleval F1). s / run: wall time
of one training process (several shared each GPU). Paper F1: the slides' Tables 1-2 (BERT-base,
ResNet grids), computed as the mean of per-batch F1 over word-piece chunks, not seqeval's
corpus-level F1: compare the gaps between rows, not the levels. full and full-rgcn are both set
against the paper's R-GCN (which used the authors' graphs)."""

GAIN_NOTES = """diff: mean test F1 (conlleval) of a minus that of b; SE = sqrt(sd_a²/n_a +
sd_b²/n_b); clear when |diff| > 2 SE and |diff| > the larger seed std, else within noise."""


def dataset_section(config, dataset: str, rows, gains, paper, status: dict, commands: dict,
                    found) -> tuple[str, list[dict], list[dict]]:
    """The markdown of one dataset, its row summaries and its gains."""
    status_runs = status.get("runs", {})
    summaries = [summarize_row(dataset, row, found.get((dataset, row.name), {}),
                               config.planned_seeds(row), status_runs, paper) for row in rows]
    by_name = {s["row"]: s for s in summaries}
    gain_lines = gains_rows(by_name, [g for g in gains if g[0] in by_name and g[1] in by_name])
    with_runs = {row.name: found[(dataset, row.name)] for row in rows
                 if found.get((dataset, row.name))}
    ks = {r["config"]["model"]["k"] for runs in with_runs.values() for r in runs.values()}
    calls = [f"{c['at']}  {c['command']}" for c in status.get("commands", [])
             if set(c["stages"]) & {"prepare", "train"}]
    by_hand = commands.get(dataset, {})
    parts = [f"## {dataset}", "### Main table", main_table(summaries), NOTES,
             failures(summaries), "### Gains (with their spread)", gains_table(gain_lines),
             GAIN_NOTES, "### Inputs",
             inputs_table(with_runs) if with_runs else "No finished runs yet.",
             "To reproduce the whole matrix from scratch (add `--device`, `--per-gpu`, "
             f"`--deadline` to taste):\n\n```\n{commands.get('matrix', '')}\n```",
             "Calls that prepared or trained into this artifacts folder:\n\n```\n"
             + ("\n".join(calls) or "(none recorded)") + "\n```",
             "By hand: prepare, then one training per row and seed (seed 1 shown):\n\n```\n"
             + "\n".join(by_hand.get("prepare", []) + by_hand.get("train", [])) + "\n```",
             "### Graph diagnostics",
             graphs_section(config.artifacts, dataset, min(ks) if ks else 5)]
    return "\n\n".join(p for p in parts if p), summaries, gain_lines


def write_csv(path: Path, summaries: list[dict]) -> None:
    fields: dict[str, None] = {}
    flat = []
    for s in summaries:
        row = {k: v for k, v in s.items() if k not in ("per_seed", "folders", "failed")}
        for key in ("seeds_planned", "seeds_done"):
            row[key] = " ".join(map(str, row[key]))
        for key, value in list(row.items()):
            if isinstance(value, (tuple, list)):
                row[key], row[f"{key}_std"] = round(value[0], 4), round(value[1], 4)
        row["failed"] = "; ".join(f"s{seed}: {e}" for seed, e in sorted(s["failed"].items()))
        fields.update(dict.fromkeys(row))
        flat.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    write_text(path, buffer.getvalue())


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def report_scope(config, table, status: dict):
    """``(config, rows)`` of the report: the planned datasets and rows plus any others with
    finished or failed runs in the artifacts folder, so that a call on a subset (--rows,
    --datasets) does not drop the rest from RESULTS.md."""
    finished = [*scan_runs(config.artifacts / "runs")[0], *status.get("runs", {})]
    features = config.artifacts / "features"
    more = sorted(p.name for p in features.iterdir() if p.is_dir() and any(
        slug.startswith(f"{p.name}-") for slug in finished)) if features.is_dir() else []
    datasets = tuple(dict.fromkeys([*config.datasets, *more]))
    rows = [row for row in table if row.name in config.rows or any(
        slug.startswith(f"{ds}-{row.name}-s") for slug in finished for ds in datasets)]
    return dataclasses.replace(config, datasets=datasets, rows=tuple(r.name for r in rows)), rows


def write_report(config, table, gains, status: dict, commands_for, paper=PAPER) -> list[Path]:
    """Write ``config.results`` (markdown), ``config.csv`` and ``config.json`` for the rows of
    ``table`` in ``report_scope``; ``commands_for(config, rows)`` gives the commands to
    reproduce them. Returns the paths written."""
    config, rows = report_scope(config, table, status)
    commands = commands_for(config, rows)
    found = finished_runs(config.artifacts / "runs", config, rows)
    here = machine("cpu")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections, summaries, all_gains = [], [], {}
    for dataset in config.datasets:
        text, lines, gain_lines = dataset_section(config, dataset, rows, gains, paper, status,
                                                  commands, found)
        sections.append(text)
        summaries += lines
        all_gains[dataset] = gain_lines
    header = (f"# Results: the R-GCN matrix (issue 6)\n\nWritten {now} by `python "
              f"experiments/results_matrix.py report` on {here['cpu']} ({here['cores']} cores); "
              f"runs read from `{config.artifacts}/runs`. Each row's machine is the one that "
              "trained it (its runs' env.json).")
    reading = config.reading
    if reading is not None and Path(reading).is_file():
        header += ("\n\n" + Path(reading).read_text().strip() + "\n\n---\n\nEverything below is "
                   "written by the report from the run records.")
    write_text(config.results, "\n\n".join([header, *sections]) + "\n")
    write_csv(config.csv, summaries)
    write_text(config.json, json.dumps({"written": now, "report_machine": here,
                                        "rows": summaries, "gains": all_gains},
                                       indent=2, default=str) + "\n")
    return [config.results, config.csv, config.json]
