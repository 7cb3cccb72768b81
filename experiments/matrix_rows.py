"""The rows of the issue-6 results matrix, the gains the report computes between them, and the
paper's numbers they are set against. Add a row here to add it to the matrix."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.graphs import manifest_key

INTRA_TEXT = manifest_key("intra", intra_view="image_global")     # intra:image_global


# The slides' Tables 1 and 2 (F1 %, their per-batch mean over word-piece chunks: not seqeval's
# corpus-level F1; see ../shared/docs/rgcn-method.md).
PAPER = {
    "BERT-CRF": {"twitter2015": 71.81, "twitter2017": 83.44},
    "R-GCN": {"twitter2015": 75.00, "twitter2017": 87.11},
    "R-GCN without gate": {"twitter2015": 74.60, "twitter2017": 86.70},
    "without InterRG": {"twitter2015": 74.05, "twitter2017": 86.17},
    "without IntraRG": {"twitter2015": 74.29, "twitter2017": 86.22},
    "without both relation graphs": {"twitter2015": 73.59, "twitter2017": 85.13},
}


@dataclass(frozen=True)
class Row:
    """One line of the matrix. ``flags`` go to ``cli.py train``; ``headline`` rows get
    --headline-seeds, the others --seeds; ``graphs``: the graph files the row trains on (the
    tweet-text graph "text" is built only when a planned row needs it); ``paper``: the setting
    of the slides' tables it compares with (PAPER above); ``weight``: relative run
    time, to launch the longest first; ``default``: planned without --rows (the issue-15 rows
    are not: name them)."""

    name: str
    label: str
    flags: tuple[str, ...] = ()
    headline: bool = False
    graphs: tuple[str, ...] = ()
    paper: str = ""
    weight: float = 1.0
    default: bool = True


ROWS = (
    Row("text-only", "text only (no image)", ("--text-only",), True, (), "BERT-CRF", 1.0),
    Row("full", "R-GCN, our graphs", (), True, ("inter", "intra"), "R-GCN", 1.3),
    Row("no-graphs", "without both relation graphs", ("--no-inter", "--no-intra"), True, (),
        "without both relation graphs", 1.1),
    Row("no-inter", "without InterRG", ("--no-inter",), False, ("intra",), "without InterRG",
        1.2),
    Row("no-intra", "without IntraRG", ("--no-intra",), False, ("inter",), "without IntraRG",
        1.2),
    Row("no-gate", "without gate (addition)", ("--no-gate",), False, ("inter", "intra"),
        "R-GCN without gate", 1.3),
    Row("full-rgcn", "R-GCN, the authors' graphs", ("--graph-source", "rgcn"), False,
        ("inter-rgcn", "intra-rgcn"), "R-GCN", 1.3),
    Row("ctx-images", "text + tweets of the inter-modal neighbour images as context",
        ("--text-only", "--context", "inter"), True, ("inter",), "", 2.0),
    Row("ctx-text", "text + nearest tweets by text as context (control)",
        ("--text-only", "--context", "text"), True, ("text",), "", 2.0),
    Row("ctx-images-k5", "ctx-images with 5 neighbour tweets (160 subwords)",
        ("--text-only", "--context", "inter", "--context-k", "5", "--context-subwords", "160"),
        True, ("inter",), "", 2.5),
    Row("full-ctx-images", "R-GCN, our graphs, + ctx-images",
        ("--context", "inter"), True, ("inter", "intra"), "", 2.3),
    Row("ctx-images-train", "ctx-images, neighbours from the train pool only (inductive)",
        ("--text-only", "--context", "inter", "--pool", "train"), True, ("inter@train",), "",
        2.0),
    # issue 15: the intra graph from image text (build-graphs --intra-view image_global: the own
    # image's text vector against the other images' text vectors) and labelled train neighbours
    Row("full-intra-text", "R-GCN, intra graph from image text (not object types)",
        ("--intra-view", "image_global"), True, ("inter", INTRA_TEXT), "R-GCN", 1.3,
        default=False),
    Row("no-inter-intra-text", "IntraRG alone, from image text",
        ("--no-inter", "--intra-view", "image_global"), False, (INTRA_TEXT,),
        "without InterRG", 1.2, default=False),
    Row("ctx-intra-text", "text + tweets of the images whose text is like the own image's text",
        ("--text-only", "--context", "intra", "--intra-view", "image_global"), True,
        (INTRA_TEXT,), "", 2.0, default=False),
    Row("ctx-labels", "ctx-images with the train neighbours' entity spans marked",
        ("--text-only", "--context", "inter", "--context-labels"), True, ("inter",), "", 2.1,
        default=False),
    Row("full-ctx-labels", "R-GCN, our graphs, + ctx-labels",
        ("--context", "inter", "--context-labels"), True, ("inter", "intra"), "", 2.4,
        default=False),
)

# (a, b, what a - b measures): the gains section of the report, in this order.
GAINS = (
    ("full", "no-graphs", "relation gain (both graphs)"),
    ("full", "text-only", "image gain"),
    ("full-rgcn", "no-graphs", "the authors' graphs"),
    ("no-inter", "no-graphs", "IntraRG alone"),
    ("no-intra", "no-graphs", "InterRG alone"),
    ("full", "no-gate", "gate vs addition"),
    ("ctx-images", "text-only", "neighbour-image tweets as context"),
    ("ctx-text", "text-only", "nearest-text tweets as context"),
    ("ctx-images", "ctx-text", "image neighbours vs text neighbours"),
    ("ctx-images-k5", "text-only", "5 neighbour-image tweets as context"),
    ("full-ctx-images", "text-only", "R-GCN + neighbour-image tweets"),
    ("full-ctx-images", "full", "context on top of R-GCN"),
    ("ctx-images-train", "text-only", "neighbour-image tweets, train pool (inductive)"),
    ("full-intra-text", "full", "intra graph from image text vs from object types"),
    ("full-intra-text", "text-only", "image gain, intra graph from image text"),
    ("no-inter-intra-text", "no-graphs", "IntraRG from image text alone"),
    ("ctx-intra-text", "text-only", "tweets of image-text neighbours as context"),
    ("ctx-labels", "ctx-images", "train neighbours' entity spans marked"),
    ("ctx-labels", "text-only", "labelled neighbour tweets as context"),
    ("full-ctx-labels", "full-ctx-images", "entity spans on top of R-GCN + context"),
)
