"""The R-GCN ``*_2.txt`` reader and its check against the UMT files."""
from __future__ import annotations

import pytest

from pipeline.data import read_umt
from pipeline.errors import DataFormatError
from pipeline.rgcn import check_against_umt, read_rgcn

SCORES = " ".join(["0.5"] * 10)
IDS = " ".join(f"{i}.jpg" for i in range(900, 910))


def record(tokens, tags, item_id, scores=SCORES, ids=IDS):
    return "\n".join([tokens, tags, f"{item_id}.jpg", scores, ids, scores, ids]) + "\n"


def test_reads_records_and_matches_umt(tiny_dir, tmp_path):
    path = tmp_path / "train_2.txt"
    path.write_text(record("Barack Obama", "B-PER I-PER", "7")
                    + record("Apple unveils the iPhone in California",
                             "B-ORG O O B-OTHER O B-LOC", "102"), encoding="utf-8")
    records = read_rgcn(path)
    assert records[1].tags[3] == "B-MISC" and records[1].text_ids[0] == "900"
    assert records[0].line == 1 and records[1].line == 8
    tweets = read_umt(tiny_dir / "train.txt")
    check = check_against_umt(path, records, tweets)
    assert check.matched == 1 and check.extra == ["7"]
    assert check.missing == ["101", "103", "104", "105", "106"]


def test_a_tag_mismatch_is_refused_with_the_line(tiny_dir, tmp_path):
    path = tmp_path / "train_2.txt"
    path.write_text(record("x", "O", "101") + record("Apple unveils the iPhone in California",
                                                     "B-ORG O O O O B-LOC", "102"), encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        check_against_umt(path, read_rgcn(path), read_umt(tiny_dir / "train.txt"))
    assert str(err.value).startswith(f"{path}:1: tokens or tags of 101 differ from the UMT file "
                                     "(line 1)")


@pytest.mark.parametrize("content, message", [
    (record("a b", "O", "1"), "{p}:2: 1 tags for 2 tokens"),
    (record("a", "O", "1")[:-1].rsplit("\n", 1)[0] + "\n", "{p}:6: 6 lines is not a multiple of 7; "
     "a record is cut short or has an extra line"),
    (record("a", "O", "1", scores="0.5 x"), "{p}:4: expected 10 numeric scores, got '0.5 x'"),
    (record("a", "O", "1", scores="0.5 0.4"), "{p}:4: expected 10 scores, got 2"),
    (record("a", "O", "1", ids="1.jpg 2.jpg"), "{p}:5: expected 10 image files, got 2"),
    (record("a", "O", "../1"), "{p}:3: IMGID '../1' is not a plain name"),
    (record("a", "O", "1", ids=" ".join(["1.png"] * 10)),
     "{p}:5: '1.png' is not an image file name '<id>.jpg'"),
    (record("a", "X-FOO", "1"), "{p}:2: tag 'X-FOO' is not in the BIO scheme"),
])
def test_malformed_records_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "x_2.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(Exception) as err:
        read_rgcn(path)
    assert str(err.value).startswith(message.format(p=path))
