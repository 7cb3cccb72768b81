"""``cli.py extract`` end to end on the tiny dataset: views, reuse, resume, refusal, bad images."""
from __future__ import annotations

import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from conftest import TINY_KEY
from pipeline import extract_passes
from pipeline.loaders import load_encoder
from pipeline.errors import InvalidConfig
from pipeline.extract import ExtractConfig, run_extract
from pipeline.features import load_manifest, read_features
from tiny_models import odd_images, register_tiny_clip, tiny_bert

# tiny ids -> odd image files (see tiny_models.odd_images); 301 has no file, 302 duplicates 101
IMAGES = {"101": "rgb.jpg", "102": "gray.jpg", "103": "cmyk.jpg", "104": "palette.png",
          "105": "anim.gif", "106": "exif.jpg", "201": "corrupt.jpg", "202": "truncated.jpg",
          "203": "empty.jpg", "302": "rgb.jpg", "303": "deep.png"}
BROKEN = {"201": "corrupt: not an image file PIL can identify", "203": "corrupt: empty file",
          "202": "truncated: image file is truncated (1 bytes not processed)",
          "301": "missing image"}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(tiny_bert(tmp_path_factory.mktemp("models") / "bert"))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    odd = tmp_path_factory.mktemp("odd")
    odd_images(odd)
    folder = tmp_path_factory.mktemp("images")
    for item_id, name in IMAGES.items():
        shutil.copy(odd / name, folder / f"{item_id}{name[name.rindex('.'):]}")
    return folder


def extract(*args):
    return CliRunner().invoke(cli.main, ["extract", *map(str, args)])


def views_of(artifacts, dataset=TINY_KEY):
    return {view: read_features(path) for view, path in load_manifest(artifacts, dataset).items()}


def test_captions_only_gives_text_caption_bridge_and_caption_objects(tiny_dir, tmp_path, bert):
    result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path, "--text-encoder", bert)
    assert result.exit_code == 0, result.output
    assert f"  object_types  written  objects:coco-80 (caption) shape 12x80: valid 8, invalid: " \
           "no object found 4\n" in result.output
    views = views_of(tmp_path)
    assert set(views) == {"text", "image_global", "object_types"}
    text, bridge, objects = views["text"], views["image_global"], views["object_types"]
    assert text.attrs["space"] == bridge.attrs["space"] == f"sentence:{bert}"
    assert (text.attrs["source"], bridge.attrs["source"]) == ("tweet_text", "caption")
    assert text.item_ids[:2] == ["101", "102"] and text.item_ids[-1] == "303"
    encoder = load_encoder(bert, "cpu")
    expected = encoder.encode(["RT @user : Barack Obama visits Paris today",
                               "a man in a suit waving at a crowd"])
    assert np.allclose(text.rows(["101"])[0][0], expected[0], atol=1e-5)
    assert np.allclose(bridge.rows(["101"])[0][0], expected[1], atol=1e-5)
    assert text.attrs["config"]["text"]["drop_urls"] is True
    no_objects = [i for i, r in zip(objects.item_ids, objects.reason) if r == "no object found"]
    assert no_objects == ["106", "202", "203", "302"]
    assert not objects.features[~objects.valid].any()
    coco = objects.attrs["encoder"]["name"], objects.rows(["102"])[0][0].nonzero()[0].tolist()
    assert coco == ("coco-caption-nouns", [60, 67])          # dining table, cell phone


def test_second_run_reuses_every_file_and_does_no_work(tiny_dir, tmp_path, bert, monkeypatch):
    assert extract("--data-dir", tiny_dir, "--artifacts", tmp_path, "--text-encoder", bert,
                   "--quiet").exit_code == 0
    files = sorted((tmp_path / "features" / TINY_KEY).glob("*.h5"))
    stamps = [f.stat().st_mtime_ns for f in files]

    def no_work(*args, **kwargs):
        raise AssertionError("work was done on a reused configuration")
    monkeypatch.setattr(extract_passes, "run_jobs", no_work)
    result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path, "--text-encoder", bert)
    assert result.exit_code == 0, result.output
    assert result.output.count(" reused ") == 3 and " written " not in result.output
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_empty_and_absent_captions_are_invalid_with_a_reason(tiny_dir, tmp_path, bert):
    captions = tiny_dir / "image_captions" / "captions.txt"
    lines = captions.read_text().splitlines()
    lines = ["102.jpg :" if line.startswith("102.jpg") else line for line in lines
             if not line.startswith("303.jpg")]
    captions.write_text("\n".join(lines) + "\n")
    result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path, "--text-encoder", bert,
                     "--quiet", "--views", "image_global")
    assert result.exit_code == 0, result.output
    assert "valid 10, invalid: empty caption 1, no caption 1\n" in result.output
    bridge = views_of(tmp_path)["image_global"]
    assert bridge.reason[1] == "empty caption" and bridge.reason[-1] == "no caption"
    assert not bridge.features[~bridge.valid].any()


class Interrupt(Exception):
    pass


def interrupt_after(updates: int):
    """A progress factory whose bar raises after ``updates`` batches (like Ctrl-C)."""
    seen = []

    class Bar:
        def __init__(self, total=None, desc=None, **kwargs):
            pass

        def update(self, n=1):
            seen.append(n)
            if len(seen) == updates:
                raise Interrupt

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    return Bar


@pytest.mark.parametrize("views", [("text",), ("image_global", "object_types")])
def test_interrupted_run_resumes_and_equals_a_fresh_one(tiny_dir, tmp_path, bert, image_dir,
                                                        views, tmp_path_factory):
    images = "text" not in views     # the image pass with the tiny CLIP (fast on CPU)
    clip = f"{register_tiny_clip(tmp_path_factory.mktemp('clip'))}/random" if images else None

    def config(artifacts):
        return ExtractConfig(data_dir=tiny_dir, artifacts=artifacts, captions=None,
                             image_dir=image_dir if images else None, views=views, clip=clip,
                             text_encoder=bert, batch_size=4, text_batch_size=4, workers=0)
    with pytest.raises(Interrupt):
        run_extract(config(tmp_path / "a"), interrupt_after(1))
    folder = tmp_path / "a" / "features" / TINY_KEY
    assert not list(folder.glob("*.h5")) and len(list(folder.glob("*.h5.tmp"))) == len(views)
    assert not (folder / "manifest.json").exists()
    summary = run_extract(config(tmp_path / "a"))
    notes = [n for v in summary["views"].values() for n in v["notes"]]
    assert all(n.endswith("resuming, 4 of 12 rows already done") for n in notes) and notes
    fresh = run_extract(config(tmp_path / "b"))
    for view in views:
        resumed, clean = (read_features(summary["views"][view]["path"]),
                          read_features(fresh["views"][view]["path"]))
        assert np.array_equal(resumed.features, clean.features)
        assert resumed.reason == clean.reason and resumed.attrs["fingerprint"] == \
            clean.attrs["fingerprint"]


def test_a_file_of_another_configuration_is_refused_until_overwrite(tiny_dir, tmp_path, bert):
    args = ["--data-dir", tiny_dir, "--artifacts", tmp_path, "--text-encoder", bert, "--quiet",
            "--views", "text"]
    assert extract(*args).exit_code == 0
    path = load_manifest(tmp_path, TINY_KEY)["text"]
    with h5py.File(path, "r+") as f:
        expected = f.attrs["fingerprint"]
        f.attrs["fingerprint"] = "0" * 64
    result = extract(*args)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {path}: made by another configuration (fingerprint "
                                    f"000000000000, expected {expected[:12]});")
    assert result.output.count("\n") == 1
    result = extract(*args, "--overwrite")
    assert result.exit_code == 0 and "text          written" in result.output


def test_images_give_grids_imagenet_objects_and_name_every_broken_file(tiny_dir, tmp_path, bert,
                                                                       image_dir):
    result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path, "--text-encoder", bert,
                     "--image-dir", image_dir, "--workers", "1", "--batch-size", "5",
                     "--views", "region_grid,object_types,image_global")
    assert result.exit_code == 0, result.output
    assert "valid 8, invalid: corrupt 2, missing image 1, truncated 1\n" in result.output
    views = views_of(tmp_path)
    grid, objects = views["region_grid"], views["object_types"]
    assert grid.features.shape == (12, 49, 1280)
    assert grid.attrs["space"] == "grid:efficientnet-lite0"
    assert objects.features.shape == (12, 1000) and objects.attrs["space"] == "objects:imagenet-1k"
    reasons = {i: r for i, r in zip(grid.item_ids, grid.reason) if r}
    assert reasons == BROKEN and objects.reason == grid.reason
    assert np.allclose(objects.features[objects.valid].sum(1), 1, atol=1e-3)
    assert not grid.features[~grid.valid].any() and not objects.features[~objects.valid].any()
    sha = dict(zip(grid.item_ids, grid.content_sha256))
    digest = hashlib.sha256((image_dir / "101.jpg").read_bytes()).hexdigest()
    assert sha["101"] == sha["302"] == digest      # 302 is a byte-for-byte copy of 101
    assert sha["301"] == "" and sha["201"] != ""
    assert views["image_global"].attrs["source"] == "caption"
    assert views["image_global"].content_sha256 is None


def test_without_captions_the_image_is_described_by_its_imagenet_labels(tiny_dir, tmp_path, bert,
                                                                        image_dir):
    shutil.rmtree(tiny_dir / "image_captions")
    result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path, "--text-encoder", bert,
                     "--image-dir", image_dir, "--workers", "0", "--quiet", "--float16",
                     "--views", "image_global")
    assert result.exit_code == 0, result.output
    views = views_of(tmp_path)
    assert set(views) == {"image_global", "object_types"}      # the labels come from the objects
    bridge = views["image_global"]
    assert bridge.attrs["source"] == "imagenet_labels"
    assert bridge.attrs["space"] == f"sentence:{bert}"
    assert bridge.reason == views["object_types"].reason and bridge.valid.sum() == 8
    assert bridge.content_sha256 == views["object_types"].content_sha256
    with h5py.File(load_manifest(tmp_path, TINY_KEY)["image_global"]) as f:
        assert f["features"].dtype == np.float16


def test_gpu_decode_route_runs_on_cpu_and_agrees_with_pil(tiny_dir, tmp_path, bert, image_dir):
    grids = {}
    for route in ("pil", "gpu"):
        result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path / route, "--quiet",
                         "--image-dir", image_dir, "--workers", "0", "--decode", route,
                         "--device", "cpu", "--views", "region_grid")
        assert result.exit_code == 0, result.output
        grids[route] = views_of(tmp_path / route)["region_grid"]
    pil, gpu = grids["pil"], grids["gpu"]
    assert pil.reason == gpu.reason and pil.attrs["fingerprint"] == gpu.attrs["fingerprint"]
    jpeg = np.array([i in ("101", "102", "302") for i in pil.item_ids])   # nvJPEG-eligible files
    others = pil.valid & ~jpeg                                        # PIL decodes them either way
    assert np.array_equal(pil.features[others], gpu.features[others])
    a, b = pil.features[jpeg].mean(1), gpu.features[jpeg].mean(1)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.8, cosine    # pixels differ by <= 1 level; flat synthetic images
    assert not np.array_equal(a, b)      # ... and the JPEGs really took the other decoder


def test_clip_puts_text_and_images_in_one_space(tiny_dir, tmp_path, image_dir, tmp_path_factory):
    arch = register_tiny_clip(tmp_path_factory.mktemp("clip"))
    result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path, "--image-dir", image_dir,
                     "--clip", f"{arch}/random", "--workers", "0", "--quiet",
                     "--views", "text,image_global,object_types")
    assert result.exit_code == 0, result.output
    views = views_of(tmp_path)
    space = f"clip:{arch}/random"
    assert views["text"].attrs["space"] == views["image_global"].attrs["space"] == space
    assert views["object_types"].attrs["space"] == "objects:coco-80-clip"
    assert views["object_types"].features.shape == (12, 80)
    assert views["image_global"].features.shape == (12, 32) and views["text"].valid.all()
    manifest = json.loads((tmp_path / "features" / TINY_KEY / "manifest.json").read_text())
    assert manifest["views"]["image_global"]["space"] == space


@pytest.mark.parametrize("args, message", [
    (["--clip", "ViT-B-32/random"], "Error: a CLIP model embeds images, and no image folder is "
                                    "given;"),
    (["--views", "text,pixels"], "Error: unknown view 'pixels'; choose from text, image_global, "
                                 "object_types, region_grid"),
    (["--views", "region_grid"], "Error: the region_grid view needs images, and no image folder "
                                 "is given;"),
])
def test_impossible_configurations_are_one_line_errors(tiny_dir, tmp_path, args, message):
    result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path, *args)
    assert result.exit_code == 1 and result.output.startswith(message)
    assert result.output.count("\n") == 1


def test_config_validates_itself(tiny_dir):
    with pytest.raises(InvalidConfig, match="batch_size must be at least 1, not 0"):
        ExtractConfig(data_dir=tiny_dir, batch_size=0)


def test_cli_says_when_it_resumes_or_starts_a_broken_tmp_over(tiny_dir, tmp_path, bert):
    args = ["--data-dir", tiny_dir, "--artifacts", tmp_path, "--text-encoder", bert, "--quiet",
            "--views", "text"]
    assert extract(*args).exit_code == 0
    path = load_manifest(tmp_path, TINY_KEY)["text"]
    path.with_name(path.name + ".tmp").write_bytes(b"\x89HDF killed mid-write")
    result = extract(*args, "--overwrite")      # removes the final file and the .tmp
    assert result.exit_code == 0 and "starting it over" not in result.output
    path.rename(path.with_name(path.name + ".tmp"))
    path.with_name(path.name + ".tmp").write_bytes(b"\x89HDF killed mid-write")
    result = extract(*args)
    assert result.exit_code == 0
    assert f"{path.name}.tmp is unreadable (" in result.output
    assert "); starting it over\n" in result.output and "text          written" in result.output


def test_a_first_batch_without_any_image_still_gets_rows_of_the_right_shape(tiny_dir, tmp_path,
                                                                           image_dir):
    images = tmp_path / "late"
    images.mkdir()
    shutil.copy(image_dir / "303.png", images / "303.png")     # only the last item has an image
    result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path, "--image-dir", images,
                     "--workers", "0", "--batch-size", "4", "--quiet", "--views", "region_grid")
    assert result.exit_code == 0, result.output
    assert "valid 1, invalid: missing image 11\n" in result.output
    grid = views_of(tmp_path)["region_grid"]
    assert grid.features.shape == (12, 49, 1280) and grid.valid.tolist() == [False] * 11 + [True]
    assert grid.features[-1].any() and not grid.features[:-1].any()


def test_caption_objects_can_be_counts(tiny_dir, tmp_path, bert):
    result = extract("--data-dir", tiny_dir, "--artifacts", tmp_path, "--quiet",
                     "--views", "object_types", "--object-counts")
    assert result.exit_code == 0, result.output
    objects = views_of(tmp_path)["object_types"]
    assert objects.attrs["config"]["counts"] is True
    assert objects.rows(["101"])[0][0][0] == 2.0          # "a man ... at a crowd": person x2


def test_the_benchmark_runs_small_on_cpu_with_every_row_it_can(tmp_path, capsys, monkeypatch):
    import importlib.util
    import sys

    from conftest import ROOT
    from pipeline.images import DecodeSpec

    spec = importlib.util.spec_from_file_location("bench_extract", ROOT / "bench" /
                                                  "bench_extract.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_extract", bench)    # its JPEG maker is pickled
    spec.loader.exec_module(bench)
    bench.main(["--images", "4", "--batch-size", "2", "--workers", "0", "--models",
                "efficientnet-lite0", "--dir", str(tmp_path), "--out", str(tmp_path / "b.json")])
    result = json.loads((tmp_path / "b.json").read_text())
    row = result["models"]["efficientnet-lite0"]
    assert row["grid"] == "1280 x 49" and row["hdf5_write"] > 0 and row["extract_steady"] > 0
    assert row["steady_over_limit"] == row["extract_steady"] / min(row["forward"],
                                                                   result["decode"]["cpu_pil"])
    assert "ext/min = extract over the slower of forward and decode (PIL)" in result["table"]
    paths = sorted((tmp_path / "images").glob("*.jpg"))      # the GPU rows' code, on the CPU
    batches = bench.jpeg_batches(paths, 2, "cpu")
    speeds = bench.bench_gpu_decode(batches, DecodeSpec(16), "cpu")
    assert sorted(speeds) == ["gpu_nvjpeg_bare", "gpu_nvjpeg_resize_each", "gpu_route"]
    assert bench.bench_shared_gpu(load_encoder("efficientnet-lite0:random", "cpu", "fp32"),
                                  batches, DecodeSpec(224), "cpu") > 0
    assert min(speeds.values()) > 0 and bench.bench_input_path(paths, DecodeSpec(16), 2, 0,
                                                               "cpu") > 0
