"""Neighbour context: the tweets paired with an example's graph neighbours, appended to its
encoder input.

R-GCN's idea is to learn from *other* (text, image) pairs of the dataset. The node features carry
the neighbours' images; ``model.context`` carries their tweets: for an example, the first
``context_k`` neighbours (best first) of one graph that have a tweet in the dataset give their
words, appended after the example's own ``[SEP]``, each closed by ``[SEP]``, within
``context_subwords`` subwords. The example's words keep their positions, so tagging is unchanged;
the appended words are never tagged. ``inter`` reaches the pairs through the images the tweet's
text points to, ``intra`` through the images like its own, ``text`` by tweet similarity alone
(the control with no image involved).

With ``model.context_labels`` the neighbours that are *train* tweets bring their gold entity spans,
marked inline around the span's words: ``[PER Barack Obama ] visits [LOC Paris ]`` (the type as the
data spells it, conlleval spans). Neighbours from valid or test or the unlabelled pool split, and
tweets outside the dataset, bring their words only: their labels never travel (``tweet_words``).
A train tweet's own labels cannot reach it this way (the graphs exclude the tweet itself), but a
duplicate of it in train can, as a labelled train neighbour can for a test tweet: that is the
point of the variant.
Without ``context_labels`` neighbours are never labels: only words travel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import CacheMismatch
from pipeline.graph_store import read_graph
from pipeline.labels import entities

LABELLED_SPLITS = ("train",)      # the only split whose labels may be shown as context


def load_context(path: Path, dataset, k: int, pool: str) -> tuple[dict[str, list[str]], dict]:
    """``({item: [neighbour tweet ids, best first, at most k]}, record)`` from one graph file.

    Neighbours without a tweet in the dataset (the authors' pool holds a few ids with no tweet)
    are skipped, so the next one takes the place. The items are the labelled splits' (the
    queries); neighbours may be tweets of the pool split too."""
    graph = read_graph(path)
    check_graph(graph, path, dataset, pool)
    items = dataset.query_ids()
    tweets = set(dataset.item_ids())
    ids, _ = graph.neighbours(items)
    context = {item: [n for n in found if n in tweets][:k] for item, found in zip(items, ids)}
    short = sum(len(found) < k for found in context.values())
    record = {"path": str(Path(path).resolve()), "fingerprint": graph.attrs.get("fingerprint"),
              "relation": graph.attrs.get("relation"), "source": graph.attrs.get("source"),
              "pool": graph.attrs.get("pool"), "context_k": k,
              "items_with_fewer": int(short)}
    return context, record


def context_ids(neighbours: list[list[str]], words_of: dict[str, list[str]], tokenizer,
                budget: int) -> list[np.ndarray]:
    """Per example, the subword ids to append: each neighbour tweet's subwords then ``[SEP]``,
    cut to ``budget`` ids (the last one always ``[SEP]``); an empty array without neighbours."""
    wanted = sorted({n for found in neighbours for n in found})
    sep = tokenizer.sep_token_id
    encoded = tokenizer([" ".join(words_of[n]) for n in wanted], add_special_tokens=False)
    pieces = {n: list(ids) + [sep] for n, ids in zip(wanted, encoded["input_ids"])}
    out = []
    for found in neighbours:
        ids = [i for n in found for i in pieces[n]]
        if len(ids) > budget:
            ids = ids[:budget - 1] + [sep]
        out.append(np.asarray(ids, dtype=np.int64))
    return out


def tweet_words(dataset, labels: bool = False) -> dict[str, list[str]]:
    """Every tweet's words by item id, all splits; with ``labels`` the train tweets' entity spans
    are marked (``marked_words``), the other splits' tweets keep their words only."""
    return {t.item_id: marked_words(t.tokens, t.tags)
            if labels and split in LABELLED_SPLITS else list(t.tokens)
            for split, tweets in dataset.splits.items() for t in tweets}


def marked_words(tokens, tags) -> list[str]:
    """``tokens`` with each entity span of ``tags`` wrapped as ``[TYPE`` ... ``]``:
    ``(Barack, Obama, visits), (B-PER, I-PER, O) -> [PER, Barack, Obama, ], visits``."""
    starts, ends = {}, {}
    for etype, start, end in entities(tags):
        starts[start], ends[end - 1] = etype, True
    words = []
    for i, token in enumerate(tokens):
        words += ([f"[{starts[i]}"] if i in starts else []) + [token] + (
            ["]"] if i in ends else [])
    return words


def check_graph(graph, path, dataset: Dataset, pool: str) -> None:
    if graph.attrs.get("pool") != pool:
        raise CacheMismatch(f"built over pool '{graph.attrs.get('pool')}' but this run uses "
                            f"pool '{pool}'", path=path, value=pool, setting="pool",
                            rerun="build-graphs")
