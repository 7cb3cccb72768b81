"""Issue 12 case 6: image links that leave the image folder, path-like names and unknown ids in a
captions file, and a JPEG cut short that still loads."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import TINY
from pipeline.data import locate_images, read_captions
from pipeline.errors import DataFormatError, UnsafeItemId
from pipeline.images import DecodeSpec, decode_bytes
from tagger_fixtures import invoke, tiny_encoder  # noqa: F401


def test_a_link_out_of_the_image_folder_is_refused_by_where_it_points(tmp_path):
    images, outside = tmp_path / "images", tmp_path / "outside"
    images.mkdir()
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(images / "101.jpg")
    Image.new("RGB", (4, 4)).save(outside / "secret.jpg")
    (images / "102.jpg").symlink_to(images / "101.jpg")          # inside: fine
    found, missing = locate_images(images, ["101", "102", "103"])
    assert set(found) == {"101", "102"} and missing == ["103"]
    (images / "103.jpg").symlink_to(outside / "secret.jpg")
    with pytest.raises(UnsafeItemId) as err:
        locate_images(images, ["101", "103"])
    assert err.value.value == "103" and str(outside / "secret.jpg") in str(err.value)
    (images / "103.jpg").unlink()
    (images / "103.jpg").symlink_to("../outside/secret.jpg")     # a relative link, same thing
    with pytest.raises(UnsafeItemId):
        locate_images(images, ["103"])


def test_path_like_names_in_a_captions_file_are_refused_not_cut(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("101.jpg :a dog\n../../etc/102.jpg :a cat\n")
    with pytest.raises(DataFormatError) as err:
        read_captions(path)
    assert (err.value.line, err.value.value) == (2, "../../etc/102.jpg")
    path.write_text("101.jpg :a dog\n17_06_4.png :a cat\n205 :no extension\n")
    assert read_captions(path) == {"101": "a dog", "17_06_4": "a cat", "205": "no extension"}


def test_captions_of_images_no_tweet_has_are_counted(tmp_path, tiny_encoder):
    data = tmp_path / "tiny"
    shutil.copytree(TINY, data)
    with open(data / "image_captions" / "captions.txt", "a") as handle:
        handle.write("997.jpg :a stray caption\n998.jpg :another\n")
    result = invoke("extract", "--data-dir", data, "--artifacts", tmp_path / "a",
                    "--text-encoder", tiny_encoder, "--views", "text,image_global", "--quiet")
    assert result.exit_code == 0, result.output
    assert ("captions: 0 tweets have none; 3 name images no tweet has (e.g. 997, 998, 999): not used"
            in result.output)


def jpeg(height=64) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_jpeg_whose_lower_half_is_missing_is_invalid_with_a_reason():
    data = jpeg()
    assert decode_bytes(data, DecodeSpec())[1] == ""
    cut = data[:len(data) // 2] + b"\xff\xd9"          # loads in PIL without an error
    with Image.open(io.BytesIO(cut)) as img:
        img.load()
    pixels, reason = decode_bytes(cut, DecodeSpec())
    assert pixels is None and reason.startswith("truncated:")
    assert decode_bytes(data[:len(data) // 2], DecodeSpec())[1].startswith("truncated:")


def test_image_text_comes_as_lines_json_or_json_lines(tmp_path):
    import gzip
    import json

    from pipeline.data import image_text_source

    catr = tmp_path / "catr-captions.json.gz"
    catr.write_bytes(gzip.compress(json.dumps({"101.jpg": "a dog", "102.jpg": " a cat "}).encode()))
    deqa = tmp_path / "deqa.jsonl"
    deqa.write_text('{"image_name": "101.jpg", "description": "A dog."}\n\n'
                    '{"image_name": "103.png", "description": ""}\n')
    assert read_captions(catr) == {"101": "a dog", "102": "a cat"}
    assert read_captions(deqa) == {"101": "A dog.", "103": ""}
    assert [image_text_source(p) for p in (catr, deqa, tmp_path / "BLIP2_17.txt")] == [
        "catr-captions", "deqa", "BLIP2_17"]
    deqa.write_text('{"image_name": "../101.jpg", "description": "x"}\n')
    with pytest.raises(DataFormatError) as err:
        read_captions(deqa)
    assert err.value.line == 1
    deqa.write_text('{"image": "101.jpg"}\n')
    with pytest.raises(DataFormatError, match="image_name"):
        read_captions(deqa)


def test_the_text_source_is_recorded_in_the_manifest(tmp_path, tiny_encoder):
    import json

    data = tmp_path / "tiny"
    shutil.copytree(TINY, data)
    lines = (data / "image_captions" / "captions.txt").read_text().splitlines()
    table = {line.partition(" :")[0]: line.partition(" :")[2] for line in lines if line.strip()}
    (data / "image_captions" / "captions.txt").unlink()
    source = tmp_path / "gpt4-text.json"
    source.write_text(json.dumps(table))
    result = invoke("extract", "--data-dir", data, "--artifacts", tmp_path / "a",
                    "--captions", source, "--text-encoder", tiny_encoder, "--quiet")
    assert result.exit_code == 0, result.output
    [manifest] = (tmp_path / "a" / "features").glob("*/manifest.json")
    views = json.loads(manifest.read_text())["views"]
    assert views["image_global"]["text_source"] == "gpt4-text"
    assert views["text"]["text_source"] is None
