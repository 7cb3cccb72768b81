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
