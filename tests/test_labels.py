"""Labels from the data: any type names, IOBES/BILOU converted, the label set recorded, counted by
stats and scored per type; a type that only valid/test hold is refused."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT
from pipeline.data import load_dataset
from pipeline.errors import DataFormatError
from pipeline.formats import read_umt
from pipeline.labels import LabelSet, TagReader, label_list

OWN = ROOT / "tests" / "fixtures" / "own"
MADE_UP = ("CITY", "GAME", "TEAM")


def test_label_set_is_read_from_the_training_split():
    dataset = load_dataset(OWN / "umt")
    assert dataset.labels == LabelSet(MADE_UP)
    assert dataset.labels.labels == ["B-CITY", "B-GAME", "B-TEAM", "I-CITY", "I-GAME", "I-TEAM",
                                     "O"]
    assert dataset.splits["train"][0].tags[1] == "B-GAME"


def test_label_set_round_trips_through_json():
    labels = LabelSet(("TEAM", "MISC", "GAME"), (("MISC", "OTHER"),), "IOBES")
    record = json.loads(json.dumps(labels.to_json()))
    assert record == {"scheme": "IOBES", "types": ["GAME", "MISC", "TEAM"],
                      "spelling": {"MISC": "OTHER"}, "labels": label_list(["GAME", "MISC", "TEAM"])}
    assert LabelSet.from_json(record) == labels
    assert labels.to_dataset("I-MISC") == "I-OTHER" and labels.to_dataset("B-TEAM") == "B-TEAM"
    assert labels.dataset_types() == ["GAME", "OTHER", "TEAM"]


def test_the_benchmarks_keep_their_labels(tiny_dir):
    """The two benchmarks' label list is unchanged, so runs saved before still load."""
    labels = load_dataset(tiny_dir).labels
    assert labels.labels == label_list() == sorted(
        ["O"] + [f"{p}-{t}" for t in ("PER", "LOC", "ORG", "MISC") for p in "BI"])
    assert labels.type_to_dataset("MISC") == "OTHER"


@pytest.mark.parametrize("scheme, tags", [
    ("IOBES", ["S-GAME", "O", "B-CITY", "I-CITY", "E-CITY", "B-TEAM", "E-TEAM"]),
    ("BILOU", ["U-GAME", "O", "B-CITY", "I-CITY", "L-CITY", "B-TEAM", "L-TEAM"]),
    ("BIO", ["B-GAME", "O", "B-CITY", "I-CITY", "I-CITY", "B-TEAM", "I-TEAM"]),
])
def test_iobes_and_bilou_are_converted_to_bio(tmp_path, scheme, tags):
    path = tmp_path / "train.txt"
    words = ["Zelda", "in", "Los", "Angeles", "City", "LA", "Lakers"]
    path.write_text("IMGID:1\n" + "".join(f"{w}\t{t}\n" for w, t in zip(words, tags)))
    reader = TagReader()
    tweet = read_umt(path, "train", reader)[0]
    assert tweet.tags == ("B-GAME", "O", "B-CITY", "I-CITY", "I-CITY", "B-TEAM", "I-TEAM")
    assert reader.label_set([tweet.tags]) == LabelSet(MADE_UP, (), scheme)


def test_a_dataset_mixing_iobes_and_bilou_is_refused_naming_both_places(tmp_path):
    for name, tag in (("train", "S-GAME"), ("valid", "O"), ("test", "U-GAME")):
        (tmp_path / f"{name}.txt").write_text(f"IMGID:{name}\nZelda\t{tag}\n")
    with pytest.raises(DataFormatError) as err:
        load_dataset(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'test.txt'}:2: tag 'U-GAME' is BILOU but the tags at "
                              f"{tmp_path / 'train.txt'}:2 are IOBES; use one scheme")


def test_a_type_missing_from_train_is_refused(tmp_path):
    shutil.copytree(OWN / "umt", tmp_path / "own")
    with open(tmp_path / "own" / "test.txt", "a") as handle:
        handle.write("\nIMGID:g304\nWorld\tB-EVENT\nCup\tI-EVENT\n")
    with pytest.raises(DataFormatError) as err:
        load_dataset(tmp_path / "own")
    assert str(err.value) == (f"{tmp_path / 'own' / 'test.txt'}:20: type EVENT (tweet g304) is not "
                              "in the training split, whose types are CITY, GAME, TEAM; add "
                              "examples of it to the training split, or tag it O")
    assert err.value.value == "B-EVENT"


def test_a_type_unknown_to_a_run_is_refused_at_its_jsonl_line(tmp_path):
    from pipeline.formats import check_types, read_examples

    path = tmp_path / "new.jsonl"
    path.write_text('{"id": "a", "tokens": ["Rome"], "tags": ["B-CITY"]}\n'
                    '{"id": "b", "tokens": ["Euro", "2024"], "tags": ["B-EVENT", "I-EVENT"]}\n')
    with pytest.raises(DataFormatError) as err:
        check_types(read_examples(path), path, LabelSet(MADE_UP), "this run's label set")
    assert str(err.value) == (f"{path}:2: type EVENT (tweet b) is not in this run's label set, "
                              "whose types are CITY, GAME, TEAM; add examples of it to the "
                              "training split, or tag it O")


def test_any_type_name_is_accepted_without_a_label_set_error(tmp_path):
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.txt").write_text(
            f"IMGID:{name}\nWorld\tB-EVENT\nCup\tI-EVENT\nPS5\tB-PRODUCT\nx\tB-WORK-OF-ART\n")
    dataset = load_dataset(tmp_path)
    assert dataset.labels.types == ("EVENT", "PRODUCT", "WORK-OF-ART")


def test_stats_has_a_column_per_type_found():
    from pipeline.stats import split_stats

    table = split_stats(load_dataset(OWN / "umt"))
    for mode in ("conlleval", "strict"):
        assert {f"{t}_{mode}" for t in MADE_UP} <= set(table.columns)
    assert not [c for c in table.columns if c.startswith(("PER_", "LOC_", "ORG_", "MISC_"))]
    assert table.loc["train", "GAME_conlleval"] == 4
    assert table.loc["train", "TEAM_conlleval"] == 5
    assert table.loc["total", "CITY_conlleval"] == 10


def test_scores_cover_the_made_up_types_and_match_seqeval():
    from seqeval.metrics import classification_report

    from trainer.metrics import format_table, score

    gold = [list(t.tags) for t in load_dataset(OWN / "umt").tweets("test")]
    pred = [["B-TEAM", "O", "O", "B-CITY"], ["O", "O", "B-CITY", "O"],
            ["O", "B-TEAM", "O", "B-GAME"]]
    scores = score(gold, pred, LabelSet(MADE_UP))
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    assert list(scores["conlleval"]["types"]) == list(MADE_UP)
    for etype in MADE_UP:
        assert scores["conlleval"]["types"][etype]["f1"] == pytest.approx(report[etype]["f1-score"])
    assert scores["conlleval"]["types"]["GAME"]["support"] == 1
    assert scores["conlleval"]["overall"]["f1"] == pytest.approx(report["micro avg"]["f1-score"])
    table = format_table(scores)
    assert [line.split()[0] for line in table.splitlines()[2:]] == [*MADE_UP, "overall"]


def test_scores_name_types_in_the_dataset_spelling_and_list_unseen_ones():
    from trainer.metrics import score

    scores = score([["B-MISC", "O"]], [["B-MISC", "B-PRODUCT"]],
                   LabelSet(("MISC", "PER"), (("MISC", "OTHER"),)))
    types = scores["strict"]["types"]
    assert list(types) == ["OTHER", "PER", "PRODUCT"]
    assert types["OTHER"]["f1"] == 1.0 and types["PER"]["support"] == 0
    assert types["PRODUCT"]["precision"] == 0.0
