"""The Python API (trainer.api): train from a config object, load the run, tag raw tweets given
as strings or token lists, with captions, and get entity spans back."""
from __future__ import annotations

import shutil

import pytest

from tagger_fixtures import tiny_encoder, tiny_pipeline  # noqa: F401


@pytest.fixture(scope="module")
def api_run(tiny_pipeline, tiny_encoder, tmp_path_factory):
    from trainer.api import train
    from trainer.config import TrainConfig

    data, artifacts = tiny_pipeline
    root = tmp_path_factory.mktemp("api")
    shutil.copytree(artifacts, root / "artifacts")
    config = TrainConfig(data_dir=str(data), artifacts=str(root / "artifacts")).with_overrides(
        encoder=tiny_encoder, k=3, epochs=2, batch_size=4, lr_head=0.01)
    return train(config)


def test_train_from_a_config_object_writes_a_run(api_run):
    assert api_run.path.is_dir() and (api_run.path / "pool.h5").is_file()
    assert "overall" in api_run.test["conlleval"]


def test_load_and_tag_raw_tweets_gives_spans(api_run):
    from pipeline.labels import entities
    from trainer.api import Span, load
    from trainer.predict import predict, text_example

    tagger = load(api_run.path, device="cpu")
    tweets = ["Obama visits Paris today", ["RT", "@NASA", ":", "Lakers", "win"]]
    spans = tagger.tag(tweets, captions=["a man waving at a crowd", None])
    assert len(spans) == 2 and all(isinstance(s, Span) for found in spans for s in found)
    # the same tags as predict gives for the same tweet and caption
    expected = predict(api_run.path, [text_example(tweets[0], "a man waving at a crowd")], "cpu")
    tokens = tweets[0].split()
    assert [(s.type, s.start, s.end, s.text) for s in spans[0]] == [
        (expected.type_names.type_to_dataset(t), a, b, " ".join(tokens[a:b]))
        for t, a, b in entities(expected.tags[0])]
    assert set(tagger.types) <= {"PER", "LOC", "ORG", "OTHER", "MISC"}
    assert any("neither an image nor a caption" in note for note in tagger.notes)


def test_tag_refuses_mismatched_views_and_empty_tweets(api_run):
    from pipeline.errors import InvalidConfig
    from trainer.api import load

    tagger = load(api_run.path, device="cpu")
    with pytest.raises(InvalidConfig, match="1 captions for 2 tweets"):
        tagger.tag(["a b", "c d"], captions=["x"])
    with pytest.raises(InvalidConfig, match="tweet 2 has no words"):
        tagger.tag(["a b", "  "])
    with pytest.raises(InvalidConfig, match="a list of tweets"):
        tagger.tag("Obama visits Paris")
