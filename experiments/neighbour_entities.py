"""How much entity evidence a neighbour graph carries: the share of a split's gold entity mentions
whose words (lower-cased) occur in the tweet of at least one of the query's first K neighbours.

    python experiments/neighbour_entities.py --data-dir ../shared/data/twitter2017 \\
        [--artifacts artifacts] [--graphs inter,intra,intra:image_global,text] [--k 3]

Graphs are named by their build-graphs manifest key: ``intra:image_global`` is the intra graph
built from the image-text view (``build-graphs --relation intra --intra-view image_global``),
``inter@train`` one over the train pool, ``inter-rgcn`` the authors' lists.

A neighbour without a tweet in the dataset counts as an empty tweet. ``random`` draws K other tweets
of the pool uniformly (seeded): the chance level. The gold tags are read only to score the graphs;
no training or graph building uses them. Prints a markdown table; --out writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.data import load_dataset  # noqa: E402
from pipeline.labels import entities  # noqa: E402


def mentions(tweet) -> list[tuple[str, ...]]:
    """The gold entity mentions of a tweet as lower-cased word tuples (conlleval mode)."""
    words = [w.lower() for w in tweet.tokens]
    return [tuple(words[start:end]) for _, start, end in entities(tweet.tags)]


def contains(words: list[str], mention: tuple[str, ...]) -> bool:
    n = len(mention)
    return any(tuple(words[i:i + n]) == mention for i in range(len(words) - n + 1))


def mention_recall(queries, neighbours: list[list[str]], words_of: dict[str, list[str]]) -> dict:
    """Share of the queries' mentions found in their neighbours' tweets, and of queries with at
    least one mention that have at least one found."""
    found = total = hit_queries = with_mentions = 0
    for tweet, near in zip(queries, neighbours):
        gold = mentions(tweet)
        if not gold:
            continue
        texts = [words_of.get(n, []) for n in near]
        hits = sum(any(contains(t, m) for t in texts) for m in gold)
        found, total = found + hits, total + len(gold)
        hit_queries += hits > 0
        with_mentions += 1
    return {"mention_recall": found / max(total, 1),
            "query_hit_rate": hit_queries / max(with_mentions, 1), "mentions": total}


def random_neighbours(queries, pool: list[str], k: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for tweet in queries:
        picks = [pool[i] for i in rng.choice(len(pool), size=k + 1, replace=False)]
        out.append([p for p in picks if p != tweet.item_id][:k])
    return out


def evaluate(data_dir, artifacts, names, k: int, split: str, seed: int = 0) -> list[dict]:
    from pipeline.graphs import load_graph_manifest, read_graph
    from pipeline.store import dataset_key

    dataset = load_dataset(data_dir)
    words_of = {t.item_id: [w.lower() for w in t.tokens]
                for tweets in dataset.splits.values() for t in tweets}
    queries = dataset.splits[split]
    ids = [t.item_id for t in queries]
    manifest = load_graph_manifest(artifacts, dataset_key(dataset))
    rows = []
    for name in names:
        if name not in manifest:
            print(f"skipped {name}: not in the build-graphs manifest of {dataset.name}",
                  file=sys.stderr)
            continue
        graph = read_graph(manifest[name])
        near, _ = graph.neighbours(ids)
        near = [[n for n in found if n in words_of][:k] for found in near]
        rows.append({"dataset": dataset.name, "graph": name, "k": k, "split": split,
                     **mention_recall(queries, near, words_of)})
    near = random_neighbours(queries, list(dataset.item_ids()), k, seed)
    rows.append({"dataset": dataset.name, "graph": "random", "k": k, "split": split,
                 **mention_recall(queries, near, words_of)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| dataset | graph | K | split | mentions found in a neighbour's tweet | queries with "
             "one found | mentions |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['graph']} | {r['k']} | {r['split']} | "
              f"{100 * r['mention_recall']:.1f}% | {100 * r['query_hit_rate']:.1f}% | "
              f"{r['mentions']} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--graphs",
                        default="inter,intra,intra:image_global,text,inter-rgcn,intra-rgcn")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = evaluate(args.data_dir, args.artifacts, args.graphs.split(","), args.k, args.split)
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
