"""Prediction files others read: CoNLL a conlleval reader scores to seqeval's numbers, JSON lines
with entity spans, gold tags only when given."""
from __future__ import annotations

import io
import json
import random

import pytest

from conftest import ROOT
from conlleval_port import conlleval
from pipeline.data import load_dataset
from pipeline.errors import DataFormatError, OutputError
from pipeline.formats import Tweet
from pipeline.labels import LabelSet
from pipeline.outputs import (conll_lines, format_of, jsonl_records, write_predictions,
                              write_predictions_file)

OWN = ROOT / "tests" / "fixtures" / "own"
TWEET = Tweet("7", ("Star", "Wars", "in", "New\u00a0York"), ("B-MISC", "I-MISC", "O", "B-LOC"))
PRED = ["B-MISC", "O", "O", "B-LOC"]
LABELS = LabelSet(("LOC", "MISC"), (("MISC", "OTHER"),))


def test_conll_lines_have_token_id_gold_pred_and_no_comment_lines():
    assert list(conll_lines([TWEET], [PRED], LABELS)) == [
        "Star 7 B-OTHER B-OTHER", "Wars 7 I-OTHER O", "in 7 O O", "New_York 7 B-LOC B-LOC", ""]
    untagged = Tweet("8", ("Star", "Wars"))
    assert list(conll_lines([untagged], [["B-MISC", "I-MISC"]], LABELS)) == [
        "Star 8 B-OTHER", "Wars 8 I-OTHER", ""]


def test_jsonl_records_hold_tokens_tags_and_entity_spans():
    (record,) = jsonl_records([TWEET], [PRED], LABELS)
    assert record == {"id": "7", "tokens": ["Star", "Wars", "in", "New\u00a0York"],
                      "tags": ["B-OTHER", "O", "O", "B-LOC"],
                      "gold": ["B-OTHER", "I-OTHER", "O", "B-LOC"],
                      "entities": [{"type": "OTHER", "start": 0, "end": 1, "text": "Star"},
                                   {"type": "LOC", "start": 3, "end": 4, "text": "New\u00a0York"}]}
    (record,) = jsonl_records([Tweet("8", ("a", "b"))], [["I-MISC", "I-MISC"]], LABELS)
    assert "gold" not in record
    assert record["entities"] == [{"type": "OTHER", "start": 0, "end": 2, "text": "a b"}]


def test_gold_for_some_examples_only_is_refused():
    with pytest.raises(DataFormatError, match="example 8 has no gold tags but others have"):
        list(conll_lines([TWEET, Tweet("8", ("a",))], [PRED, ["O"]]))


def _noisy(tags, rng):
    """Predictions with the usual errors: missed, wrong type, cut short, orphan I-."""
    out = list(tags)
    for i, tag in enumerate(out):
        roll = rng.random()
        if roll < 0.15:
            out[i] = "O"
        elif roll < 0.3 and tag != "O":
            out[i] = tag[:2] + rng.choice(["GAME", "TEAM", "CITY"])
        elif roll < 0.4:
            out[i] = rng.choice(["B-GAME", "I-TEAM", "I-CITY"])
    return out


@pytest.mark.parametrize("seed", range(5))
def test_written_conll_reads_back_to_the_seqeval_scores(tmp_path, seed):
    from trainer.metrics import score

    dataset = load_dataset(OWN / "umt")
    tweets = dataset.tweets()
    rng = random.Random(seed)
    predicted = [_noisy(t.tags, rng) for t in tweets]
    path = write_predictions_file(tmp_path / "pred.conll", tweets, predicted, dataset.labels)
    ours = conlleval(path.read_text(encoding="utf-8").splitlines())
    scores = score([list(t.tags) for t in tweets], predicted, dataset.labels)["conlleval"]
    assert ours["overall"] == pytest.approx(tuple(
        scores["overall"][k] for k in ("precision", "recall", "f1")))
    for etype, row in scores["types"].items():
        if row["support"] or row["precision"]:
            assert ours[etype] == pytest.approx((row["precision"], row["recall"], row["f1"]))


def test_benchmark_predictions_read_back_in_the_dataset_spelling(tiny_dir, tmp_path):
    from trainer.metrics import score

    dataset = load_dataset(tiny_dir)
    tweets = dataset.tweets("test")
    predicted = [["B-MISC" if t != "O" else "O" for t in tw.tags] for tw in tweets]
    path = write_predictions_file(tmp_path / "p.conll", tweets, predicted, dataset.labels)
    ours = conlleval(path.read_text(encoding="utf-8").splitlines())
    scores = score([list(t.tags) for t in tweets], predicted, dataset.labels)["conlleval"]
    assert "OTHER" in ours and "MISC" not in ours
    assert ours["OTHER"][2] == pytest.approx(scores["types"]["OTHER"]["f1"])


def test_files_are_written_by_extension_and_unknown_ones_refused(tmp_path):
    path = write_predictions_file(tmp_path / "p.jsonl", [TWEET], [PRED], LABELS)
    assert json.loads(path.read_text())["id"] == "7"
    assert not list(tmp_path.glob("*.tmp"))
    assert format_of("x.conll") == format_of("x.txt") == "conll"
    with pytest.raises(OutputError) as err:
        write_predictions_file(tmp_path / "p.csv", [TWEET], [PRED], LABELS)
    assert str(err.value) == (f"{tmp_path / 'p.csv'}: unknown prediction file extension; use "
                              ".conll, .txt or .jsonl")
    with pytest.raises(ValueError):
        write_predictions(io.StringIO(), [TWEET], [PRED[:2]], LABELS)
