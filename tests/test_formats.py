"""The JSON lines format beside UMT (same tweets, exact one-line errors naming file:line and
field), plain untagged text, and how load_dataset picks the format of a folder."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT
from pipeline.data import load_dataset
from pipeline.errors import DataFormatError
from pipeline.formats import read_examples, read_jsonl, read_umt, read_untagged

OWN = ROOT / "tests" / "fixtures" / "own"


def test_jsonl_and_umt_give_the_same_dataset():
    umt, jsonl = load_dataset(OWN / "umt"), load_dataset(OWN / "jsonl")
    assert (umt.format, jsonl.format) == ("umt", "jsonl")
    for split in ("train", "valid", "test"):
        assert [(t.item_id, t.tokens, t.tags) for t in umt.splits[split]] == [
            (t.item_id, t.tokens, t.tags) for t in jsonl.splits[split]]
    assert jsonl.labels == umt.labels
    assert jsonl.splits["train"][2].image == "g103.jpg" and jsonl.splits["train"][2].line == 3


def test_a_folder_with_both_formats_is_refused(tmp_path):
    shutil.copytree(OWN / "umt", tmp_path / "own")
    shutil.copy(OWN / "jsonl" / "train.jsonl", tmp_path / "own")
    with pytest.raises(DataFormatError) as err:
        load_dataset(tmp_path / "own")
    assert str(err.value) == (f"{tmp_path / 'own'}: the folder holds split files in two formats "
                              "(train.txt, valid.txt, test.txt, train.jsonl); keep either the .txt "
                              "(UMT) or the .jsonl files")


def test_a_missing_jsonl_split_names_the_jsonl_files(tmp_path):
    shutil.copytree(OWN / "jsonl", tmp_path / "own")
    (tmp_path / "own" / "valid.jsonl").unlink()
    with pytest.raises(Exception) as err:
        load_dataset(tmp_path / "own")
    assert str(err.value) == (f"{tmp_path / 'own' / 'valid.jsonl'}: file not found; the data "
                              "folder must hold train.jsonl, valid.jsonl, test.jsonl; set data_dir")


GOOD = '{"id": "1", "tokens": ["Zelda", "rocks"], "tags": ["B-GAME", "O"]}'


@pytest.mark.parametrize("line, message", [
    ('{"id": "1", "tokens": ["a"], "tags": ["O"]', "not valid JSON: Expecting ',' delimiter at "
     "column 43"),
    ('["a", "O"]', "expected a JSON object per line, got list"),
    ('{"id": "1", "tokens": ["a"], "tag": ["O"]}', "unknown field 'tag'; the fields are id, "
     "tokens, tags, image"),
    ('{"tokens": ["a"], "tags": ["O"]}', "field 'id' is missing; every example needs an id"),
    ('{"id": 1.5, "tokens": ["a"], "tags": ["O"]}', "field 'id' must be a string, got 1.5"),
    ('{"id": "../x", "tokens": ["a"], "tags": ["O"]}', "field 'id': '../x' is not a plain name "
     "(letters, digits, '_', '-', '.'; no '/' or leading '.')"),
    ('{"id": "1", "tokens": [], "tags": []}', "field 'tokens' must be a non-empty list of "
     "non-empty strings"),
    ('{"id": "1", "tokens": "a b", "tags": ["O"]}', "field 'tokens' must be a non-empty list of "
     "non-empty strings"),
    ('{"id": "1", "tokens": ["a", ""], "tags": ["O", "O"]}', "field 'tokens' must be a non-empty "
     "list of non-empty strings"),
    ('{"id": "1", "tokens": ["a"]}', "field 'tags' is missing; every example of a dataset split "
     "needs its gold tags"),
    ('{"id": "1", "tokens": ["a", "b"], "tags": ["O"]}', "field 'tags' has 1 tags for 2 tokens"),
    ('{"id": "1", "tokens": ["a"], "tags": "O"}', "field 'tags' must be a list of strings"),
    ('{"id": "1", "tokens": ["a"], "tags": ["X-GAME"]}', "field 'tags': tag 'X-GAME' is not in the "
     "BIO scheme (expected O, B-TYPE or I-TYPE; IOBES and BILOU tags are converted)"),
    ('{"id": "1", "tokens": ["a"], "tags": ["O"], "image": "../a.jpg"}', "field 'image' must be a "
     "file name or id in the image folder (no '/'), got '../a.jpg'"),
    ('{"id": "1", "tokens": ["a"], "tags": ["O"]}', "field 'id': duplicate id '1' (first at "
     "line 1); each example needs its own id"),
])
def test_malformed_jsonl_gives_one_line_naming_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        read_jsonl(path, "train")
    assert str(err.value) == f"{path}:3: {message}"
    assert err.value.line == 3 and "\n" not in str(err.value)


def test_jsonl_to_tag_may_leave_out_tags_and_ids_but_not_in_some_examples_only(tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text('{"tokens": ["Zelda", "rocks"], "image": "x1.jpg"}\n'
                    '{"id": 7, "tokens": ["a"]}\n')
    tweets = read_jsonl(path, require_tags=False)
    assert [(t.item_id, t.tokens, t.tags, t.image) for t in tweets] == [
        ("line-1", ("Zelda", "rocks"), (), "x1.jpg"), ("7", ("a",), (), None)]
    path.write_text(f'{{"tokens": ["a"]}}\n{GOOD}\n')
    with pytest.raises(DataFormatError) as err:
        read_jsonl(path, require_tags=False)
    assert str(err.value) == (f"{path}:2: field 'tags' is given here but not at line 1; tag every "
                              "example or none")


def test_untagged_text_is_one_tweet_per_line_split_on_whitespace(tmp_path):
    path = tmp_path / "new.txt"
    path.write_text("Obama visits #Paris !\n\n  RT @user :\tZelda  \n", encoding="utf-8")
    tweets = read_untagged(path)
    assert [(t.item_id, t.tokens, t.tags) for t in tweets] == [
        ("line-1", ("Obama", "visits", "#Paris", "!"), ()),
        ("line-3", ("RT", "@user", ":", "Zelda"), ())]
    assert read_examples(path) == tweets


def test_read_examples_picks_the_format_and_keeps_gold_tags_when_given(tmp_path):
    assert read_examples(OWN / "jsonl" / "test.jsonl")[0].tags == ("B-TEAM", "O", "O", "B-GAME")
    assert read_examples(OWN / "umt" / "test.txt") == read_umt(OWN / "umt" / "test.txt")
    path = tmp_path / "new.txt"
    path.write_text("IMGID:5\nZelda\nrocks\n\nIMGID:6\nok\n")
    assert [(t.item_id, t.tokens, t.tags) for t in read_examples(path)] == [
        ("5", ("Zelda", "rocks"), ()), ("6", ("ok",), ())]
    path.write_text("IMGID:5\nZelda\tB-GAME\nrocks\n")
    with pytest.raises(DataFormatError) as err:
        read_examples(path)
    assert str(err.value) == (f"{path}:3: line 2 has a tag but line 3 has none; tag every token "
                              "or none")


def test_jsonl_image_references_find_images_and_captions(tmp_path):
    data = tmp_path / "own"
    shutil.copytree(OWN / "jsonl", data)
    lines = (data / "test.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["image"] = "pic7.jpg"
    (data / "test.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("pic7.png", "g302.jpg", "g301.jpg"):
        (images / name).write_bytes(b"x")
    captions = tmp_path / "captions.txt"
    captions.write_text("pic7.jpg :a football match\ng302.jpg :rain\ng301.jpg :not this one\n")
    dataset = load_dataset(data, captions, images)
    assert dataset.images == {"g301": images / "pic7.png", "g302": images / "g302.jpg"}
    assert dataset.captions == {"g301": "a football match", "g302": "rain"}
