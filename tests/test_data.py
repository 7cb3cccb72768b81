"""The data layer on the tiny fixture and on every malformed-input case (exact messages)."""
from __future__ import annotations

import pytest

from pipeline.data import (check_item_id, image_path, load_dataset, locate_images, read_captions,
                           read_umt)
from pipeline.errors import DataFormatError, MissingInput, UnsafeItemId
from pipeline.labels import count_entities, entities, first_subword_mask, label_list


def test_reads_every_tweet_including_the_last_one_without_final_blank_line(tiny_dir):
    tweets = read_umt(tiny_dir / "train.txt", "train")
    assert [t.item_id for t in tweets] == ["101", "102", "103", "104", "105", "106"]
    assert tweets[-1].tokens == ("@CNN", "reports", "storm", "hits", "New", "York")
    assert tweets[-1].tags == ("B-ORG", "O", "O", "O", "B-LOC", "I-LOC")
    assert tweets[0].line == 1 and tweets[1].line == 11


def test_keeps_the_bare_nbsp_token_aligned_with_its_tag(tiny_dir):
    tweet = read_umt(tiny_dir / "train.txt")[3]
    assert tweet.tokens[6] == "\u00a0"
    assert len(tweet.tokens) == len(tweet.tags) == 8
    assert tweet.tokens[7] == "http://t.co/x"


def test_other_is_misc_internally_and_the_dataset_keeps_its_name(tiny_dir):
    dataset = load_dataset(tiny_dir)
    assert dataset.splits["train"][1].tags[3] == "B-MISC"
    assert dataset.labels.spelling == (("MISC", "OTHER"),)
    assert dataset.labels.to_dataset("I-MISC") == "I-OTHER"
    assert dataset.labels.labels == label_list() and "B-OTHER" not in label_list()


def test_orphan_i_tags_are_kept_and_counted_by_mode(tiny_dir):
    tweet = read_umt(tiny_dir / "train.txt")[2]
    assert tweet.tags[4:] == ("I-LOC", "I-LOC")
    assert entities(tweet.tags, "conlleval") == [("ORG", 0, 1), ("ORG", 2, 3), ("LOC", 4, 6)]
    assert entities(tweet.tags, "strict") == [("ORG", 0, 1), ("ORG", 2, 3)]


def test_entity_modes_agree_with_seqeval():
    from seqeval.metrics.sequence_labeling import get_entities
    cases = [["I-PER", "I-PER", "O", "B-LOC", "I-ORG", "I-ORG", "B-PER", "B-PER", "I-PER"],
             ["B-LOC", "I-LOC", "I-LOC", "O", "I-MISC"], ["O", "O"]]
    for tags in cases:
        ours = {(t, s, e - 1) for t, s, e in entities(tags, "conlleval")}
        assert ours == set(get_entities(tags))
    from seqeval.scheme import IOB2, Entities
    for tags in cases:
        strict = {(e.tag, e.start, e.end) for e in Entities([tags], IOB2).entities[0]}
        assert {(t, s, e) for t, s, e in entities(tags, "strict")} == strict


def test_first_subword_mask():
    assert first_subword_mask([None, 0, 0, 1, 2, 2, None]) == [False, True, False, True, True,
                                                               False, False]


@pytest.mark.parametrize("text, message", [
    ("IMGID:1\nhello O\n", "{p}:2: no tab in 'hello O'; expected token<TAB>tag"),
    ("IMGID:1\nhello\tX-PER\n", "{p}:2: tag 'X-PER' is not in the BIO scheme (expected O, B-TYPE "
     "or I-TYPE; IOBES and BILOU tags are converted)"),
    ("IMGID:1\nhello\tB\n", "{p}:2: tag 'B' is not in the BIO scheme (expected O, B-TYPE or "
     "I-TYPE; IOBES and BILOU tags are converted)"),
    ("IMGID:1\nhello\tb-per\n", "{p}:2: tag 'b-per' is not in the BIO scheme (expected O, B-TYPE "
     "or I-TYPE; IOBES and BILOU tags are converted)"),
    ("IMGID:1\nhello\tB-\n", "{p}:2: tag 'B-' is not in the BIO scheme (expected O, B-TYPE "
     "or I-TYPE; IOBES and BILOU tags are converted)"),
    ("IMGID:1\nNew\tS-LOC\nYork\tU-LOC\n", "{p}:3: tag 'U-LOC' is BILOU but the tags at {p}:2 "
     "are IOBES; use one scheme"),
    ("IMGID:1\na\tO\n\nIMGID:2\nb\tO\n\nIMGID:1\nc\tO\n",
     "{p}:7: duplicate IMGID 1 (first at line 1); each tweet of a split needs its own IMGID"),
    ("", "{p}: file is empty; expected IMGID:<id> lines followed by token<TAB>tag lines"),
    ("\n\n", "{p}: file is empty; expected IMGID:<id> lines followed by token<TAB>tag lines"),
    ("hello\tO\n", "{p}:1: token line 'hello\\tO' before any IMGID line; every tweet starts with "
     "IMGID:<id>"),
    ("IMGID:1\n\nIMGID:2\na\tO", "{p}:1: IMGID 1 has no token lines; remove the IMGID line or add "
     "its tokens"),
    ("IMGID:1\n\tO\n", "{p}:2: empty token before tag 'O'; expected token<TAB>tag"),
    ("IMGID:1\n\u00a0\n", "{p}:2: no tab in '\\xa0'; expected token<TAB>tag"),
])
def test_malformed_umt_gives_one_clear_line(tmp_path, text, message):
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        read_umt(path)
    assert str(err.value) == message.format(p=path)
    assert "\n" not in str(err.value)


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes("IMGID:1\nok\tO\ncaf\u00e9\tO\n".encode("latin-1"))
    with pytest.raises(DataFormatError) as err:
        read_umt(path)
    assert str(err.value) == f"{path}:3: byte 0xe9 is not valid UTF-8; re-encode the file as UTF-8"


@pytest.mark.parametrize("item_id", ["../../etc/passwd", "/etc/passwd", "a/b", "..", ".hidden",
                                     "x\\..\\y", ""])
def test_path_like_imgids_are_refused(tmp_path, item_id):
    path = tmp_path / "train.txt"
    path.write_text(f"IMGID:{item_id}\na\tO\n", encoding="utf-8")
    with pytest.raises(UnsafeItemId) as err:
        read_umt(path)
    assert str(err.value) == (f"{path}:1: IMGID {item_id!r} is not a plain name (letters, digits, "
                              "'_', '-', '.'; no '/' or leading '.'); fix the IMGID line")
    with pytest.raises(UnsafeItemId):
        image_path(tmp_path, item_id)


def test_locate_images_finds_other_extensions_and_records_missing(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    found, missing = locate_images(tmp_path, ["a", "b", "c"])
    assert found == {"a": tmp_path / "a.jpg", "b": tmp_path / "b.png"}
    assert missing == ["c"]
    with pytest.raises(MissingInput, match="image directory not found"):
        locate_images(tmp_path / "nope", ["a"])


def test_captions_keep_empty_ones_and_refuse_malformed_lines(tiny_dir, tmp_path):
    captions = read_captions(tiny_dir / "image_captions" / "captions.txt")
    assert captions["104"] == "a bridge over a river with boats" and len(captions) == 13
    path = tmp_path / "caps.txt"
    path.write_text("1.jpg :a dog\n2.jpg :\n3.jpg a cat\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        read_captions(path)
    assert str(err.value) == f"{path}:3: no ' :' in '3.jpg a cat'; expected '<id>.jpg :<caption>'"
    path.write_text("1.jpg :a dog\n2.jpg :\n", encoding="utf-8")
    assert read_captions(path) == {"1": "a dog", "2": ""}


def test_dataset_refuses_ids_in_two_splits_and_missing_files(tiny_dir):
    (tiny_dir / "test.txt").write_text("IMGID:101\na\tO", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_dataset(tiny_dir)
    assert str(err.value) == (f"{tiny_dir / 'test.txt'}:1: IMGID 101 is also in train.txt; an item "
                              "must belong to one split")
    (tiny_dir / "valid.txt").unlink()
    with pytest.raises(MissingInput) as err:
        load_dataset(tiny_dir)
    assert str(err.value) == (f"{tiny_dir / 'valid.txt'}: file not found; the data folder must "
                              "hold train.txt, valid.txt, test.txt; set data_dir")
    assert err.value.setting == "data_dir" and "--" not in str(err.value)


def test_both_misc_and_other_in_one_dataset_is_an_error(tiny_dir):
    (tiny_dir / "test.txt").write_text("IMGID:9\nStar\tB-MISC", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_dataset(tiny_dir)
    assert str(err.value) == (f"{tiny_dir / 'test.txt'}:2: type MISC here but OTHER at "
                              f"{tiny_dir / 'train.txt'}:15; OTHER and MISC are one type, spell it "
                              "one way")


def test_count_entities(tiny_dir):
    tweets = read_umt(tiny_dir / "train.txt")
    conll = count_entities([t.tags for t in tweets], "conlleval")
    assert conll == {"PER": 2, "LOC": 5, "ORG": 4, "MISC": 2}
    assert count_entities([t.tags for t in tweets], "strict")["LOC"] == 4
