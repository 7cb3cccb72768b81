"""Neighbour context (``--context``): the tweets paired with a graph's neighbours appended to the
encoder input, through build-graphs' text relation, train, evaluate and predict."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from tagger_fixtures import (invoke, tiny_dataset, tiny_encoder, tiny_pipeline,  # noqa: F401
                             train_args)
from trainer.batches import encode
from trainer.context import context_ids, tweet_words
from conftest import TINY_KEY


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_encoder)


def test_context_ids_close_each_tweet_and_respect_the_budget(tokenizer):
    words = {"a": ["obama", "paris"], "b": ["lakers"], "c": ["apple", "iphone", "today"]}
    sep = tokenizer.sep_token_id
    ids = tokenizer.convert_tokens_to_ids
    out = context_ids([["a", "b"], [], ["c"]], words, tokenizer, budget=5)
    assert out[0].tolist() == ids(["obama", "paris", "[SEP]", "lakers", "[SEP]"])
    assert out[1].tolist() == []
    assert out[2].tolist() == ids(["apple", "iphone", "today", "[SEP]"])
    cut = context_ids([["a", "c"]], words, tokenizer, budget=4)[0].tolist()
    assert cut == ids(["obama", "paris", "[SEP]"]) + [sep]


def test_encode_appends_the_context_after_the_tweet_and_keeps_word_positions(tokenizer):
    example = SimpleNamespace(item_id="1", tokens=("Obama", "visits", "Paris"),
                              tags=("B-PER", "O", "B-LOC"))
    label2id = {"O": 0, "B-PER": 1, "B-LOC": 2}
    plain = encode([example], tokenizer, label2id, 32)
    extra = np.array(tokenizer.convert_tokens_to_ids(["lakers", "[SEP]"]))
    with_context = encode([example], tokenizer, label2id, 32, [extra])
    assert with_context.input_ids[0].tolist() == plain.input_ids[0].tolist() + extra.tolist()
    assert with_context.first[0].tolist() == plain.first[0].tolist()
    assert with_context.labels[0].tolist() == [1, 0, 2]


def test_check_lengths_refuses_inputs_the_encoder_cannot_position():
    from trainer.run import check_lengths

    split = SimpleNamespace(encoded=SimpleNamespace(input_ids=[np.zeros(10), np.zeros(130)]))
    backbone = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=128))
    with pytest.raises(Exception) as err:
        check_lengths({"train": split}, SimpleNamespace(model_max_length=10**30), backbone)
    assert str(err.value) == ("an input holds 130 subwords but the encoder takes at most 128; "
                              "lower the context's subword budget or model.max_subwords "
                              "(context_subwords)")
    check_lengths({"train": split}, SimpleNamespace(model_max_length=512),
                  SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512)))


@pytest.fixture(scope="module")
def context_pipeline(tiny_pipeline, tmp_path_factory):
    """A copy of the tiny pipeline with the text graph built too."""
    data, artifacts = tiny_pipeline
    root = tmp_path_factory.mktemp("context")
    copy = root / "artifacts"
    shutil.copytree(artifacts, copy, ignore=shutil.ignore_patterns("runs"))
    result = invoke("build-graphs", "--data-dir", data, "--artifacts", copy, "--k", 3,
                    "--relation", "text", "--quiet")
    assert result.exit_code == 0, result.output
    return data, copy


def test_the_text_graph_ranks_other_tweets_by_text_and_joins_the_manifest(context_pipeline):
    from pipeline.data import load_dataset
    from pipeline.graphs import load_graph_manifest, read_graph

    data, artifacts = context_pipeline
    manifest = load_graph_manifest(artifacts, TINY_KEY)
    assert {"inter", "intra", "text"} <= set(manifest)
    graph = read_graph(manifest["text"])
    assert graph.attrs["relation"] == "text" and graph.attrs["space"].startswith("sentence:")
    assert [k for k in graph.attrs["inputs"] if k.startswith("features:")] == ["features:text"]
    ids, _ = graph.neighbours(graph.query_ids)
    assert all(q not in found and len(found) == 3 for q, found in zip(graph.query_ids, ids))
    assert set(graph.pool_ids) == set(load_dataset(data).item_ids())


def test_a_missing_text_graph_says_what_to_run(tiny_pipeline, tiny_encoder):
    data, artifacts = tiny_pipeline
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--text-only", "--context", "text"))
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(
        f"Error: no text graph for tiny in {artifacts};")


def test_a_context_run_trains_evaluates_and_predicts(context_pipeline, tiny_encoder):
    from trainer.config import TrainConfig
    from trainer.inputs import load_inputs

    data, artifacts = context_pipeline
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--text-only", "--context",
                                "inter", "--context-k", 2, "--epochs", 1))
    assert result.exit_code == 0, result.output
    run = next((artifacts / "runs").glob("*-tiny-text-only-ctx-inter-s1"))
    config = TrainConfig.from_json(run / "config.json")
    manifest = json.loads((artifacts / "graphs" / TINY_KEY / "manifest.json").read_text())
    assert config.model.context == "inter" and config.features is None
    assert config.context_graph.endswith(manifest["graphs"]["inter"])
    record = json.loads((run / "inputs.json").read_text())["image"]["context"]
    assert record["relation"] == "inter" and record["context_k"] == 2

    inputs = load_inputs(config)
    words = tweet_words(inputs.dataset)
    assert all(len(found) == 2 and item not in found and all(n in words for n in found)
               for item, found in inputs.context.items())

    result = invoke("evaluate", "--run", run)
    assert result.exit_code == 0, result.output
    result = invoke("predict", "--run", run, "--input", data / "test.txt")
    assert result.exit_code == 0, result.output
    assert result.stdout == (run / "predictions_test.conll").read_text()
    result = invoke("predict", "--run", run, "--text", "Obama visits Paris today")
    assert result.exit_code == 0, result.output
    shown = [line for line in result.stderr.splitlines() if line.startswith("  neighbour tweets: ")]
    found = shown[0].split(": ", 1)[1].split(", ")
    assert len(found) == 2 and all(n in words for n in found)


def test_marked_words_wrap_each_entity_span_in_its_type():
    from trainer.context import marked_words

    tokens = ("Barack", "Obama", "visits", "Paris", "with", "NASA")
    tags = ("B-PER", "I-PER", "O", "B-LOC", "O", "I-ORG")        # an orphan I- starts an entity
    assert marked_words(tokens, tags) == ["[PER", "Barack", "Obama", "]", "visits", "[LOC",
                                          "Paris", "]", "with", "[ORG", "NASA", "]"]
    assert marked_words(("a", "b"), ("O", "O")) == ["a", "b"]


def test_only_train_tweets_bring_their_labels(tiny_dataset):
    plain, labelled = tweet_words(tiny_dataset), tweet_words(tiny_dataset, labels=True)
    assert set(plain) == set(labelled)
    marked = 0
    for split, tweets in tiny_dataset.splits.items():
        for t in tweets:
            has_entity = any(tag != "O" for tag in t.tags)
            if split == "train":
                assert (labelled[t.item_id] != plain[t.item_id]) == has_entity
                marked += has_entity
            else:
                assert labelled[t.item_id] == plain[t.item_id] == list(t.tokens)
    assert marked >= 3 and any(tag != "O" for t in tiny_dataset.splits["test"] for tag in t.tags)


def test_a_labelled_context_run_never_shows_valid_or_test_labels(context_pipeline, tiny_encoder,
                                                                  monkeypatch):
    """Through train, evaluate and predict: every word list appended for a neighbour is its
    plain words unless it is a train tweet; and valid/test neighbours are appended."""
    import trainer.predict
    import trainer.run
    from pipeline.data import load_dataset
    from trainer.config import TrainConfig

    data, artifacts = context_pipeline
    dataset = load_dataset(data)
    split_of = {t.item_id: s for s, tweets in dataset.splits.items() for t in tweets}
    plain = tweet_words(dataset)
    seen = []

    def spy(neighbours, words_of, tokenizer, budget):
        seen.extend((n, list(words_of[n])) for found in neighbours for n in found)
        return context_ids(neighbours, words_of, tokenizer, budget)

    for module in (trainer.run, trainer.predict):
        monkeypatch.setattr(module, "context_ids", spy)
    result = invoke(*train_args(data, artifacts, tiny_encoder, "--text-only", "--context",
                                "text", "--context-labels", "--epochs", 1))
    assert result.exit_code == 0, result.output
    run = next((artifacts / "runs").glob("*-tiny-text-only-ctx-text-labels-s1"))
    assert TrainConfig.from_json(run / "config.json").model.context_labels
    for args in (("evaluate", "--run", run, "--split", "valid"),
                 ("predict", "--run", run, "--input", data / "test.txt")):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    outside = [(n, words) for n, words in seen if split_of[n] != "train"]
    assert outside and all(words == plain[n] for n, words in outside)
    assert any(words != plain[n] for n, words in seen if split_of[n] == "train")


def test_context_labels_need_a_context():
    from pipeline.errors import InvalidConfig
    from trainer.config import ModelConfig

    with pytest.raises(InvalidConfig, match="context_labels marks the neighbour tweets"):
        ModelConfig(context_labels=True)
    assert ModelConfig(context="inter", context_labels=True).variant() == "full-ctx-inter-labels"
