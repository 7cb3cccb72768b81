"""Neighbour evidence of each image-text source, before any training is spent on it (issue 15).

For every source (a captions / image-text file: BLIP-2 ``<id>.jpg :<text>``, CATR JSON, GPT-4
JSON lines), two graphs over the whole dataset, exact cosine top-K with the sentence encoder:

- inter: tweet text -> the other images' text (the R-GCN inter-modal bridge);
- intra: the own image's text -> the other images' text (image content to image content; a tweet
  whose image has no text gets no neighbours).

Each is scored as experiments/neighbour_entities.py scores a graph: the share of the split's gold
entity mentions found in the tweet of one of the first K neighbours, and the share of queries with
at least one found; ``random`` is the chance level. Gold tags are read only to score.

    python experiments/source_evidence.py --data-dir ../shared/data/twitter2017 \\
        --source blip2=../shared/data/twitter2017/image_captions/BLIP2_17.txt \\
        --source gpt4=../shared/data/image_text/twitter2017/deqa-gpt4-descriptions.jsonl.gz
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine  # noqa: E402
from experiments.neighbour_entities import mention_recall, random_neighbours  # noqa: E402
from pipeline.data import load_dataset, read_captions  # noqa: E402
from pipeline.loaders import load_encoder  # noqa: E402
from pipeline.text import tweet_text  # noqa: E402


def top_k(xq: np.ndarray, xb: np.ndarray, k: int, own: np.ndarray) -> np.ndarray:
    """Rows of ``xb`` nearest to each query (inner product), best first, ``own[q]`` left out
    (-1: nothing to leave out); ties to the lower row."""
    scores = xq @ xb.T
    rows = np.flatnonzero(own >= 0)
    scores[rows, own[rows]] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def source_rows(dataset, name: str, texts: dict[str, str], encoder, tweet_vectors, words,
                k: int):
    """The inter and intra rows of one source on the test split."""
    ids = dataset.item_ids()
    have = [i for i in ids if (texts.get(i) or "").strip()]
    row_of = {item: row for row, item in enumerate(have)}
    xs = encoder.encode([texts[i] for i in have])
    test = dataset.tweets("test")
    own = np.array([row_of.get(t.item_id, -1) for t in test])
    index = {item: row for row, item in enumerate(ids)}
    xq = tweet_vectors[[index[t.item_id] for t in test]]
    inter = [[have[j] for j in row] for row in top_k(xq, xs, k, own)]
    found = np.flatnonzero(own >= 0)
    intra = [[] for _ in test]
    for q, row in zip(found, top_k(xs[own[found]], xs, k, own[found])):
        intra[q] = [have[j] for j in row]
    coverage = f"{len(have)}/{len(ids)}"
    return [{"source": name, "relation": relation, "coverage": coverage,
             **mention_recall(test, graph, words)} for relation, graph in
            (("inter", inter), ("intra", intra))]


def evaluate(data_dir, sources: dict[str, Path], encoder_name: str, k: int) -> list[dict]:
    dataset = load_dataset(data_dir)
    encoder = load_encoder(encoder_name, "cpu")
    tweet_vectors = encoder.encode([tweet_text(t.tokens, True) for t in dataset.tweets()])
    words = {t.item_id: [w.lower() for w in t.tokens] for t in dataset.tweets()}
    rows = []
    for name, path in sources.items():
        rows += source_rows(dataset, name, read_captions(path), encoder, tweet_vectors, words, k)
    test = dataset.tweets("test")
    rows.append({"source": "random", "relation": "-", "coverage": "-",
                 **mention_recall(test, random_neighbours(test, dataset.item_ids(), k, 0),
                                  words)})
    return [{"dataset": dataset.name, "k": k, **row} for row in rows]


def markdown(rows: list[dict], encoder: str) -> str:
    host = machine("cpu")
    lines = [f"Encoder {encoder}, exact cosine top-{rows[0]['k']}, test split; machine: "
             f"{host['cpu']}, {host['cores']} cores", "",
             "| dataset | source | relation | images with text | mentions found | queries with "
             "one found |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['source']} | {r['relation']} | {r['coverage']} | "
              f"{100 * r['mention_recall']:.1f}% | {100 * r['query_hit_rate']:.1f}% |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--source", action="append", required=True,
                        help="NAME=FILE, repeat (captions, CATR JSON or GPT-4 JSON lines)")
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args(argv)
    sources = dict(item.split("=", 1) for item in args.source)
    print(markdown(evaluate(args.data_dir, sources, args.encoder, args.k), args.encoder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
