"""`predict`: a saved run tags a UMT file exactly as it tagged the test split, and new tweets end to
end, with neighbours computed through the same encoders as the feature cache."""
from __future__ import annotations

import json

import numpy as np

from tagger_fixtures import (invoke, tiny_encoder, tiny_pipeline, tiny_run,  # noqa: F401
                             train_args)
from trainer.batches import SHAPE_FEATURES
from conftest import TINY_KEY


def test_save_load_predict_gives_the_saved_tags(tiny_run, tiny_pipeline):
    data, _ = tiny_pipeline
    assert not [p for p in tiny_run.rglob("*") if p.suffix in (".pt", ".bin", ".pkl", ".pth")]
    result = invoke("predict", "--run", tiny_run, "--input", data / "test.txt")
    assert result.exit_code == 0, result.output
    assert result.stdout == (tiny_run / "predictions_test.conll").read_text()
    assert "overall" in result.stderr       # gold tags in the input: the P/R/F1 table


def test_predict_tags_a_new_tweet_end_to_end(tiny_run):
    result = invoke("predict", "--run", tiny_run, "--text", "Obama visits #Paris with @NASA",
                    "--caption", "a man waving at a crowd")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == ""
    tokens = [line.split(" ") for line in lines[:-1]]   # token id predicted (pipeline.outputs)
    assert [t[0] for t in tokens] == ["Obama", "visits", "#Paris", "with", "@NASA"]
    assert {t[1] for t in tokens} == {"text-1"}
    labels = json.loads((tiny_run / "model.json").read_text())["labels"]
    assert all(len(t) == 3 and t[2].replace("OTHER", "MISC") in labels for t in tokens)
    err = result.stderr.splitlines()
    shown = err[err.index("neighbours:") + 1:]          # readable lines, not a Python dict
    assert not any("{" in line for line in shown)
    neighbours = {line.split("(")[0].strip().split("-")[0]: line.split(": ", 1)[1].split(", ")
                  for line in shown if line.startswith("  ")}
    data = tiny_run.parent.parent.parent / "tiny"
    pool = {line[6:] for name in ("train", "valid", "test")
            for line in (data / f"{name}.txt").read_text().splitlines()
            if line.startswith("IMGID:")}
    assert len(neighbours["inter"]) == 3 and set(neighbours["inter"]) <= pool
    assert len(neighbours["intra"]) == 3    # "man" and "crowd" name the COCO class person


def test_without_a_caption_the_new_tweet_has_no_image_and_no_intra_neighbours(tiny_run):
    from trainer.predict import predict, text_example

    result = predict(tiny_run, [text_example("Rain in Seattle")], "cpu")
    assert result.neighbours[0]["intra"] == [] and len(result.neighbours[0]["inter"]) == 3
    assert len(result.tags[0]) == 3 and result.known == 0


def test_new_tweets_get_the_vectors_of_the_feature_cache(tiny_pipeline):
    """A dataset tweet and its caption, embedded anew, give the cached rows (same encoders)."""
    from pipeline.data import load_dataset
    from pipeline.features import load_manifest, read_features
    from trainer.predict import Example, feature_attrs, view_vectors

    data, artifacts = tiny_pipeline
    dataset = load_dataset(data, data / "image_captions" / "captions.txt")
    tweets = dataset.tweets("train")
    examples = [Example(f"new-{t.item_id}", t.tokens, (), dataset.captions[t.item_id])
                for t in tweets]
    for view, path in load_manifest(artifacts, TINY_KEY).items():
        cached = read_features(path)
        X, ok = view_vectors(feature_attrs(path), examples, "cpu")
        rows, valid = cached.rows([t.item_id for t in tweets])
        assert ok.tolist() == valid.tolist(), view
        np.testing.assert_allclose(X[ok], rows[valid], atol=1e-5, err_msg=view)


def test_a_caption_run_refuses_an_image_and_usage_errors(tiny_run, tmp_path):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"not really")
    result = invoke("predict", "--run", tiny_run, "--text", "Obama", "--image", image)
    assert result.exit_code == 1
    assert result.output.startswith("Error: this run's image_global features come from "
                                    "captions, not image files;")
    assert result.output.count("\n") == 1
    result = invoke("predict", "--run", tiny_run)
    assert result.exit_code == 2
    assert "give exactly one of --input FILE or --text TEXT" in result.output
    result = invoke("predict", "--run", tmp_path, "--text", "x")
    assert result.output.startswith(f"Error: {tmp_path}: not a run folder (no config.json);")


def test_a_text_only_run_predicts_without_any_image_input(tiny_dir, tmp_path, tiny_encoder):
    result = invoke(*train_args(tiny_dir, tmp_path, tiny_encoder, "--text-only", "--no-shape",
                                "--epochs", 1))
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    meta = json.loads((run / "model.json").read_text())
    assert meta["node_shape"] is None and meta["shape_features"] == list(SHAPE_FEATURES)
    result = invoke("predict", "--run", run, "--input", tiny_dir / "test.txt")
    assert result.exit_code == 0, result.output
    assert result.stdout == (run / "predictions_test.conll").read_text()


def test_region_grids_and_images_end_to_end(tiny_dir, tmp_path, tiny_encoder):
    """With images, node features are the region grids (auto) and predict embeds a new image."""
    from PIL import Image

    images = tiny_dir / "images"
    images.mkdir()
    for k, item in enumerate(["101", "102", "103", "104", "105", "106", "201", "202", "203",
                              "301", "302"]):  # 303 has no image: invalid, masked
        Image.new("RGB", (4, 4), (20 * k, 255 - 20 * k, 90)).save(images / f"{item}.png")
    artifacts = tmp_path / "artifacts"
    for args in (("extract", "--text-encoder", tiny_encoder, "--image-encoder",
                  "efficientnet-lite0:random"), ("build-graphs", "--k", 3)):
        result = invoke(args[0], "--data-dir", tiny_dir, "--artifacts", artifacts, *args[1:],
                        "--quiet")
        assert result.exit_code == 0, result.output
    result = invoke(*train_args(tiny_dir, artifacts, tiny_encoder, "--epochs", 1))
    assert result.exit_code == 0, result.output
    run = next((artifacts / "runs").iterdir())
    record = json.loads((run / "inputs.json").read_text())["image"]
    assert record["features"]["view"] == "region_grid" and record["features"]["shape"] == [49, 1280]
    assert record["masked"]["own_image"] == 1
    result = invoke("predict", "--run", run, "--text", "Obama in Paris", "--image",
                    images / "101.png", "--caption", "a man on a bridge")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 4   # 3 token lines and the blank one
    assert "warning" not in result.stderr
    check_broken_images(run, tmp_path)
    result = invoke("predict", "--run", run, "--input", tiny_dir / "test.txt")
    assert result.stdout == (run / "predictions_test.conll").read_text()


def check_broken_images(run, tmp_path):
    """Issue 12 case 4: a missing image is an error; an empty file, a file that is not an image
    and a truncated JPEG are reported and recorded, the tweet tagged without its image."""
    import io

    from PIL import Image

    from trainer.predict import predict, text_example

    result = invoke("predict", "--run", run, "--text", "Obama", "--image", tmp_path / "no.jpg")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith(f"Error: {tmp_path / 'no.jpg'}: image file not found")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "JPEG")
    bad = {"empty.jpg": b"", "text.jpg": b"not an image", "cut.jpg": buffer.getvalue()[:300]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        result = invoke("predict", "--run", run, "--text", "Obama in Paris", "--image",
                        tmp_path / name)
        assert result.exit_code == 0, result.output
        assert f"warning: text-1: image {tmp_path / name} is not usable (" in result.stderr
        assert "  own image: invalid: " in result.stderr
        assert "  intra-modal (image -> images): none" in result.stderr
    got = predict(run, [text_example("Obama", image=tmp_path / "empty.jpg")], "cpu")
    assert got.neighbours[0]["image"] == "invalid: corrupt: empty file"
    assert got.notes == [f"text-1: image {tmp_path / 'empty.jpg'} is not usable (corrupt: empty "
                         "file); tagged without it"]


def host_table_run(run, folder, **settings):
    """A copy of ``run`` whose config puts the node table on the host (``node_table``) and scores
    one tweet per batch, so that no batch needs every row of the tiny table."""
    import shutil

    copy = folder / run.name
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(node_table="host", **settings)
    config["optim"]["eval_batch_size"] = 1
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_evaluate_and_predict_never_read_the_pool_table_whole(tiny_run, tiny_pipeline, tmp_path,
                                                             monkeypatch):
    """Issue 14: with the run's table on the host, evaluate and predict read pool.h5's node
    table by rows (a whole read fails here) and give the tags of the device table."""
    from test_pool_file import refuse_whole_reads
    from trainer.batches import HostTable
    from trainer.predict import load_run, predict, text_example
    from trainer.run import load_saved_split

    data, _ = tiny_pipeline
    run = host_table_run(tiny_run, tmp_path)
    refuse_whole_reads(monkeypatch)
    assert isinstance(load_saved_split(run, "test", "cpu").table, HostTable)
    result = invoke("evaluate", "--run", run, "-o", tmp_path / "scores.json", "--quiet")
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    saved = json.loads((tiny_run / "results.json").read_text())["test"]
    assert scores["conlleval"]["overall"] == saved["conlleval"]["overall"]
    result = invoke("predict", "--run", run, "--input", data / "test.txt")
    assert result.exit_code == 0, result.output
    assert result.stdout == (tiny_run / "predictions_test.conll").read_text()
    new = predict(load_run(run, "cpu"), [text_example("Obama visits Paris", "a man waving")],
                  "cpu")
    assert len(new.tags[0]) == 3 and len(new.neighbours[0]["intra"]) == 3
