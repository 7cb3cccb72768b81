"""Fixtures shared by the tagger tests: a tiny random BERT saved to a folder (loaded through
``pipeline.encoders.load_text_backbone`` like any local model) and in-memory image inputs for the
tiny dataset."""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY

WORDS = ["rt", "obama", "paris", "apple", "iphone", "lakers", "center", "the", "at", "in", "today",
         "visits", "new", "york", "city", "london"]


def make_tiny_encoder(folder) -> str:
    """A 2-layer, 32-wide BERT with random weights and a tiny WordPiece vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = special + chars + [f"##{c}" for c in chars] + WORDS
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    return make_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny-bert")


def tiny_image_inputs(dataset, dim: int = 6, regions: int | None = None, k: int = 3, seed: int = 0):
    """Random node features for every item plus neighbours among the others; item 0's image is
    invalid (own = -1) and flagged in both relations."""
    from trainer.batches import ImageInputs

    rng = np.random.default_rng(seed)
    items = dataset.item_ids()
    n = len(items)
    shape = (n, dim) if regions is None else (n, regions, dim)
    table = rng.standard_normal(shape).astype(np.float32)
    own = np.arange(n, dtype=np.int64)
    own[0] = -1
    inter = np.stack([rng.choice([j for j in range(1, n) if j != i], k, replace=False)
                      for i in range(n)]).astype(np.int64)
    intra = np.stack([rng.choice([j for j in range(1, n) if j != i], k, replace=False)
                      for i in range(n)]).astype(np.int64)
    inter[0] = -1
    intra[0] = -1
    intra[1, -1] = -1
    score = rng.uniform(0.2, 1.0, (n, k)).astype(np.float32)
    return ImageInputs(items, table, own, inter, score, intra, score.copy(),
                       view="image_global" if regions is None else "region_grid")


def tiny_tagger(encoder, dataset, image, **flags):
    """A tiny tagger (k=3, graph_dim=8, 2 heads; ``flags`` override), seeded, with the collator of
    the dataset's train split and the node table: ``(model, collator, table, config)``."""
    import torch

    from pipeline.encoders import load_text_backbone
    from pipeline.labels import label_list
    from trainer.batches import Collator, encode
    from trainer.config import ModelConfig
    from trainer.model import Tagger

    torch.manual_seed(0)
    labels = label_list()
    config = ModelConfig(encoder=encoder, **{"k": 3, "graph_dim": 8, "heads": 2, **flags})
    tokenizer, backbone, _ = load_text_backbone(encoder)
    tweets = dataset.tweets("train")
    encoded = encode(tweets, tokenizer, {t: i for i, t in enumerate(labels)}, config.max_subwords)
    rows = np.array([image.row_of[t.item_id] for t in tweets])
    collator = Collator(encoded, tokenizer.pad_token_id, image if config.uses_image else None, rows,
                        config.inter, config.intra, config.k)
    model = Tagger(config, backbone, labels, image.node_shape if config.uses_image else None)
    table = torch.from_numpy(image.table) if config.uses_image else None
    return model, collator, table, config


@pytest.fixture
def tiny_dataset():
    from pipeline.data import load_dataset
    return load_dataset(TINY)


def invoke(*args):
    """Run ``cli.py`` through click's CliRunner (the real command path)."""
    from click.testing import CliRunner

    import cli
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, tiny_encoder):
    """The tiny dataset after the real ``extract`` (captions, tiny sentence encoder) and
    ``build-graphs --k 3``: ``(data_dir, artifacts)``. Read-only: copy before changing files."""
    import shutil

    root = tmp_path_factory.mktemp("pipeline")
    data, artifacts = root / "tiny", root / "artifacts"
    shutil.copytree(TINY, data)
    result = invoke("extract", "--data-dir", data, "--artifacts", artifacts, "--text-encoder",
                    tiny_encoder, "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("build-graphs", "--data-dir", data, "--artifacts", artifacts, "--k", 3,
                    "--quiet")
    assert result.exit_code == 0, result.output
    return data, artifacts


def train_args(data, artifacts, encoder, *extra):
    return ("train", "--data-dir", data, "--artifacts", artifacts, "--encoder", encoder, "--k", 3,
            "--epochs", 2, "--batch-size", 4, "--quiet", *extra)


def extract_graphs_train(data, artifacts, encoder, epochs: int = 2):
    """The real ``extract``, ``build-graphs --k 3`` and ``train`` of ``data`` into ``artifacts``
    (each must succeed); the one run folder."""
    for args in (("extract", "--data-dir", data, "--artifacts", artifacts, "--text-encoder",
                  encoder, "--quiet"),
                 ("build-graphs", "--data-dir", data, "--artifacts", artifacts, "--k", 3,
                  "--quiet"),
                 ("train", "--data-dir", data, "--artifacts", artifacts, "--encoder", encoder,
                  "--k", 3, "--epochs", epochs, "--batch-size", 4, "--quiet")):
        result = invoke(*args)
        assert result.exit_code == 0, (args[0], result.output)
    (run,) = (Path(artifacts) / "runs").iterdir()
    return run


@pytest.fixture(scope="session")
def tiny_run(tiny_pipeline, tiny_encoder):
    """One trained full-model run on the tiny pipeline (2 epochs): its folder."""
    data, artifacts = tiny_pipeline
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--lr-head", "0.01"))
    assert result.exit_code == 0, result.output
    runs = sorted((artifacts / "runs").iterdir())
    assert len(runs) == 1
    return runs[0]


def one_line_error(result, *parts):
    """Exit 1 with exactly one ``Error: ...`` line holding ``parts``, and no traceback."""
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    for part in parts:
        assert part in result.output, result.output
