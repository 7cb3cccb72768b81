"""The HDF5 feature cache: round trip, join by id, resume, refusal of mismatched files, manifest."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.errors import CacheMismatch, MissingInput, MnerError
from pipeline.data import Dataset, Tweet
from pipeline.features import FeatureWriter, file_path, load_manifest, read_features, write_manifest
from pipeline.store import dataset_key, reusable

IDS = ["a", "b", "c", "d", "e"]
FP = "f" * 64
ATTRS = {"view": "text", "space": "sentence:test", "source": "tweet_text",
         "encoder": {"name": "t"}, "weights_sha256": "w", "config": {"k": 1},
         "environment": {"code": {}}, "dataset": "toy", "fingerprint": FP}


def cached(path, fp, ids, overwrite):
    return reusable(path, fp, overwrite, stage="extract", item_ids=ids)


def rows_of(values):
    return np.array(values, dtype=np.float32).reshape(-1, 1).repeat(3, 1)


def write_all(path, dtype=np.float32):
    writer = FeatureWriter(path, IDS, ATTRS, dtype, with_sha=True)
    writer.write([0, 1, 2], rows_of([0, 1, 2]), [True, False, True], ["", "empty caption", ""],
                 sha=["s0", "", "s2"])
    writer.write([3, 4], rows_of([3, 4]), [True, True], ["", ""], sha=["s3", "s4"])
    return writer.finish()


def test_round_trip_in_float16_reads_back_float32(tmp_path):
    path = write_all(tmp_path / "text-fff.h5", np.float16)
    assert not (tmp_path / "text-fff.h5.tmp").exists()
    with h5py.File(path) as f:
        assert f["features"].dtype == np.float16 and "done" not in f
    got = read_features(path)
    assert got.features.dtype == np.float32 and got.features.shape == (5, 3)
    assert got.item_ids == IDS and got.valid.tolist() == [True, False, True, True, True]
    assert got.reason[1] == "empty caption" and got.content_sha256 == ["s0", "", "s2", "s3", "s4"]
    assert got.attrs["complete"] is True
    assert got.attrs["encoder"] == {"name": "t"} and got.attrs["space"] == "sentence:test"


def test_rows_join_by_item_id_and_name_a_missing_one(tmp_path):
    got = read_features(write_all(tmp_path / "x.h5"))
    features, valid = got.rows(["d", "a", "b"])
    assert features[:, 0].tolist() == [3, 0, 1] and valid.tolist() == [True, True, False]
    with pytest.raises(MnerError) as err:
        got.rows(["a", "zz"])
    assert str(err.value) == (f"{tmp_path / 'x.h5'}: item zz is not in this feature file (made "
                              "for toy); run the extract stage again")
    assert (err.value.value, err.value.rerun) == ("zz", "extract")


def test_an_interrupted_file_resumes_and_never_looks_complete(tmp_path):
    final = tmp_path / "x.h5"
    writer = FeatureWriter(final, IDS, ATTRS)
    writer.write([0, 1], rows_of([0, 1]), [True, True], ["", ""])
    writer.close()                                   # the process died here
    assert not final.exists() and (tmp_path / "x.h5.tmp").exists()
    (tmp_path / "x.h5.tmp").rename(final)           # even if someone renamed it by hand
    with pytest.raises(CacheMismatch, match="incomplete feature file"):
        read_features(final)
    with pytest.raises(CacheMismatch, match="not marked complete"):
        cached(final, FP, IDS, overwrite=False)
    final.rename(tmp_path / "x.h5.tmp")
    again = FeatureWriter(final, IDS, ATTRS)
    assert again.notes == ["x.h5.tmp: resuming, 2 of 5 rows already done"]
    assert again.pending().tolist() == [2, 3, 4]
    again.write([2, 3, 4], rows_of([2, 3, 4]), [True] * 3, [""] * 3)
    assert read_features(again.finish()).features[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_an_unreadable_or_foreign_tmp_is_started_over(tmp_path):
    final = tmp_path / "x.h5"
    (tmp_path / "x.h5.tmp").write_bytes(b"garbage after kill -9")
    writer = FeatureWriter(final, IDS, ATTRS)
    assert len(writer.notes) == 1 and writer.notes[0].startswith("x.h5.tmp is unreadable (")
    assert writer.notes[0].endswith("); starting it over")
    assert writer.pending().tolist() == [0, 1, 2, 3, 4]
    writer.write([0], rows_of([0]), [True], [""])
    writer.close()
    other = FeatureWriter(final, IDS, {**ATTRS, "fingerprint": "0" * 64})
    assert other.notes == ["x.h5.tmp was made by another configuration; starting it over"]
    other.close()


def test_finish_refuses_unwritten_rows(tmp_path):
    writer = FeatureWriter(tmp_path / "x.h5", IDS, ATTRS)
    writer.write([0], rows_of([0]), [True], [""])
    with pytest.raises(MnerError, match="4 rows were never written"):
        writer.finish()
    writer.close()


def test_cached_reuses_refuses_or_overwrites(tmp_path):
    path = write_all(tmp_path / "x.h5")
    assert cached(path, FP, IDS, overwrite=False) is True
    assert cached(tmp_path / "absent.h5", FP, IDS, overwrite=False) is False
    with pytest.raises(CacheMismatch) as err:
        cached(path, "1" * 64, IDS, overwrite=False)
    assert str(err.value) == (f"{path}: made by another configuration (fingerprint ffffffffffff, "
                              "expected 111111111111); set overwrite")
    with pytest.raises(CacheMismatch) as err:
        cached(path, FP, IDS[:4], overwrite=False)
    assert str(err.value) == (f"{path}: its item ids differ from the dataset's (5 vs 4 rows); "
                              "set overwrite")
    assert cached(path, "1" * 64, IDS, overwrite=True) is False and not path.exists()


def test_manifest_lists_the_views_and_says_how_to_make_it(tmp_path):
    toy = Dataset("toy", tmp_path, {"train": [Tweet("a", ("x",), ("O",))]})
    key = dataset_key(toy)
    assert key.startswith("toy-") and len(key) == len("toy-") + 12
    with pytest.raises(MissingInput) as err:
        load_manifest(tmp_path, key)
    assert str(err.value) == (f"{tmp_path / 'features' / key / 'manifest.json'}: no views "
                              "recorded for this dataset; run the extract stage again")
    path = file_path(tmp_path, key, "text", FP)
    assert path == tmp_path / "features" / key / "text-ffffffffffff.h5"
    write_manifest(tmp_path, toy, {"text": {"file": path.name, "fingerprint": FP}})
    assert load_manifest(tmp_path, key) == {"text": path}
    write_manifest(tmp_path, toy, {"image_global": {"file": "g.h5", "fingerprint": FP}})
    assert load_manifest(tmp_path, key) == {"text": path, "image_global": path.parent / "g.h5"}


def test_rows_go_straight_into_their_chunks_across_chunk_edges_and_resume(tmp_path, monkeypatch):
    import pipeline.features as features
    monkeypatch.setattr(features, "TARGET_CHUNK_BYTES", 3 * 4 * 2)     # 3 rows of (2, 2) float16
    ids = [f"i{k}" for k in range(11)]
    values = np.arange(11 * 4, dtype=np.float32).reshape(11, 2, 2) / 8
    writer = FeatureWriter(tmp_path / "x.h5", ids, ATTRS, np.float16)
    writer.write([1, 2, 3, 4, 7], values[[1, 2, 3, 4, 7]], [True] * 5, [""] * 5)
    assert writer.raw is not None and writer.file["features"].chunks == (3, 2, 2)
    writer.close()
    again = FeatureWriter(tmp_path / "x.h5", ids, ATTRS, np.float16)
    again.write([0, 5, 6, 8, 9, 10], values[[0, 5, 6, 8, 9, 10]], [True] * 6, [""] * 6)
    assert again.raw is not None
    got = read_features(again.finish())
    assert np.array_equal(got.features, values.astype(np.float16).astype(np.float32))


def test_a_tmp_from_the_h5py_writer_resumes_through_h5py(tmp_path):
    final = tmp_path / "x.h5"
    writer = FeatureWriter(final, IDS, ATTRS)
    writer.file.create_dataset("features", shape=(5, 3), dtype=np.float32, chunks=(2, 3))
    writer.write([0, 1, 2], rows_of([0, 1, 2]), [True] * 3, [""] * 3)
    assert writer.raw is None                   # chunks allocated as written: no fixed places
    writer.close()
    again = FeatureWriter(final, IDS, ATTRS)
    again.write([3, 4], rows_of([3, 4]), [True, True], ["", ""])
    assert again.raw is None
    assert read_features(again.finish()).features[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_code_version_takes_the_commit_named_for_a_tree_copied_without_history(monkeypatch):
    from pipeline.artifacts import code_version

    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("MNER_GIT_SHA", sha)
    assert code_version() == {"package": code_version()["package"], "git_sha": sha,
                              "git_dirty": None, "git_sha_from": "MNER_GIT_SHA"}
    monkeypatch.setenv("MNER_GIT_SHA", "HEAD")   # not a SHA: the checkout's own git answers
    assert "git_sha_from" not in code_version()
