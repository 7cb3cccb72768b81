"""Image decoding: every awkward kind decoded correctly, every broken kind named, both routes."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.images as images_module
from pipeline.images import (DecodeAhead, DecodeSpec, decode_file, gpu_decodable, image_batches,
                             materialize, resize_batch, resize_tensor)
from tiny_models import exif_rotated_jpeg, gradient, halves, jpeg_bytes, odd_images

SPEC = DecodeSpec(16)


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    odd_images(folder)
    return {p.stem: p for p in folder.iterdir()}


def pixel(pixels, y, x):
    return tuple(pixels[:, y, x].tolist())


def test_plain_jpeg_keeps_its_colours(odd):
    pixels, reason, sha = decode_file(odd["rgb"], SPEC)
    assert reason == "" and pixels.dtype == torch.uint8 and pixels.shape == (3, 16, 16)
    r, g, b = pixel(pixels, 0, 0)          # gradient: top-left is blue, top-right cyan
    assert b > 200 and r < 30 and g < 30
    assert sha == hashlib.sha256(odd["rgb"].read_bytes()).hexdigest()


def test_grayscale_becomes_three_equal_channels(odd):
    pixels, reason, _ = decode_file(odd["gray"], SPEC)
    assert reason == "" and pixels.shape == (3, 16, 16)
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])


def test_cmyk_jpeg_is_converted_to_rgb(odd):
    pixels, reason, _ = decode_file(odd["cmyk"], SPEC)
    assert reason == "" and pixel(pixels, 8, 8) == (255, 0, 0)


def test_palette_transparency_and_alpha_are_composited_on_white(odd):
    palette, reason, _ = decode_file(odd["palette"], SPEC)
    assert reason == "" and pixel(palette, 3, 3) == (255, 255, 255)   # index 1 is transparent
    rgba, reason, _ = decode_file(odd["rgba"], SPEC)                    # red at alpha 128
    assert reason == "" and pixel(rgba, 3, 3) == (255, 127, 127)


def test_animated_gif_gives_its_first_frame(odd):
    pixels, reason, _ = decode_file(odd["anim"], SPEC)
    assert reason == "" and pixel(pixels, 8, 8) == (255, 0, 0)        # frame 2 is blue


def test_exif_orientation_is_applied(odd):
    pixels, reason, _ = decode_file(odd["exif"], SPEC)
    assert reason == ""
    top, bottom = pixel(pixels, 0, 8), pixel(pixels, 15, 8)
    assert top[0] > 200 and top[2] < 50            # red on top once rotated, not on the left
    assert bottom[2] > 200 and bottom[0] < 50


def test_sixteen_bit_png_is_scaled_to_eight_bits(odd):
    pixels, reason, _ = decode_file(odd["deep"], SPEC)
    assert reason == "" and pixel(pixels, 4, 4) == (127, 127, 127)


@pytest.mark.parametrize("stem, reason", [
    ("corrupt", "corrupt: not an image file PIL can identify"),
    ("empty", "corrupt: empty file"),
    ("truncated", "truncated: image file is truncated (1 bytes not processed)"),
])
def test_broken_files_are_failures_with_a_reason(odd, stem, reason):
    pixels, got, sha = decode_file(odd[stem], SPEC)
    assert pixels is None and got == reason
    assert sha == hashlib.sha256(odd[stem].read_bytes()).hexdigest()


def test_missing_file_is_a_failure(tmp_path):
    assert decode_file(tmp_path / "nope.jpg", SPEC) == (None, "missing image", "")
    assert decode_file(None, SPEC) == (None, "missing image", "")


def test_only_plain_complete_jpegs_take_the_gpu_route(odd):
    routes = {stem: gpu_decodable(path.read_bytes()) for stem, path in odd.items()}
    assert {stem for stem, ok in routes.items() if ok} == {"rgb", "gray"}


def test_shortest_side_resize_then_centre_crop():
    spec = DecodeSpec(8, "shortest+center_crop", "bicubic")
    img = torch.from_numpy(np.array(halves(40, 20))).permute(2, 0, 1)
    out = resize_tensor(img, spec)
    assert out.shape == (3, 8, 8)
    assert pixel(out, 4, 0)[0] > 200 and pixel(out, 4, 7)[2] > 200   # the crop straddles both


def test_decode_spec_validates_itself():
    with pytest.raises(ValueError, match="resize must be squash or shortest"):
        DecodeSpec(8, "stretch")


@pytest.mark.parametrize("workers", [0, 1])
def test_gpu_route_batches_agree_with_pil_and_carry_failures(odd, tmp_path, workers):
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(gradient(640, 480)))
    names = ["rgb", "gray", "cmyk", "corrupt", "exif", None, "truncated"]
    paths = [odd[n] if n else tmp_path / "missing.jpg" for n in names] + [tmp_path / "big.jpg"]
    rows = list(range(10, 10 + len(paths)))
    results = {}
    for route in ("pil", "gpu"):
        batches = list(image_batches(rows, paths, SPEC, route, batch_size=4, workers=workers))
        assert [b["rows"] for b in batches] == [rows[:4], rows[4:]]
        decoded, failed = {}, {}
        for batch in batches:
            images, ok_rows, fails = materialize(batch, SPEC, "cpu")
            decoded.update(zip(ok_rows, images))
            failed.update(fails)
            if route == "gpu":
                assert set(batch["jpeg_rows"]) <= {10, 11, 17}
        results[route] = decoded
        assert failed == {13: "corrupt: not an image file PIL can identify",
                          15: "missing image",
                          16: "truncated: image file is truncated (1 bytes not processed)"}
    assert results["pil"].keys() == results["gpu"].keys() == {10, 11, 12, 14, 17}
    for row in results["pil"]:
        diff = (results["pil"][row].float() - results["gpu"][row].float()).abs().mean()
        assert diff < 4, (row, diff)


def test_exif_jpeg_bytes_really_carry_the_orientation():
    img = Image.open(io.BytesIO(exif_rotated_jpeg()))
    assert img.size == (40, 20) and img.getexif()[0x0112] == 6


@pytest.mark.parametrize("spec", [DecodeSpec(8), DecodeSpec(8, "shortest+center_crop", "bicubic")])
def test_a_batch_resize_equals_resizing_each_image(spec, monkeypatch):
    monkeypatch.setattr(images_module, "GROUP_ELEMENTS", 2 * 3 * 30 * 40)   # split the groups
    rng = np.random.default_rng(0)
    sizes = [(30, 40), (17, 23), (30, 40), (40, 30), (30, 40), (17, 23), (30, 40), (9, 9)]
    batch = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
    calls = []
    real = images_module._interpolate
    monkeypatch.setattr(images_module, "_interpolate",
                        lambda x, how: calls.append(len(x)) or real(x, how))
    out = resize_batch(batch, spec)
    assert sorted(calls) == [1, 1, 2, 2, 2]      # one call per size and 2 images of 30 x 40 each
    monkeypatch.setattr(images_module, "_interpolate", real)
    assert out.dtype == torch.uint8 and out.shape == (len(batch), 3, 8, 8)
    for k, img in enumerate(batch):
        assert torch.equal(out[k], resize_tensor(img, spec)), k


def test_a_jpeg_nvjpeg_refuses_is_decoded_by_pil_and_keeps_its_place(odd, monkeypatch):
    real = images_module.decode_jpegs
    monkeypatch.setattr(images_module, "decode_jpegs",
                        lambda blobs, device: [None, *real(blobs[1:], device)])
    paths = [odd["rgb"], odd["cmyk"], odd["gray"], odd["corrupt"], odd["rgb"]]
    batch = next(iter(image_batches([0, 1, 2, 3, 4], paths, SPEC, "gpu", 5, 0)))
    assert batch["jpeg_rows"] == [0, 2, 4] and batch["pixel_rows"] == [1]
    images, rows, failed = materialize(batch, SPEC, "cpu")
    assert rows == [0, 1, 2, 4] and list(failed) == [3]
    for k, row in enumerate(rows):
        expected, reason, _ = decode_file(paths[row], SPEC)
        diff = (images[k].float() - expected.float()).abs().mean()
        assert diff < (0.01 if row in (0, 1) else 4), (row, diff)    # 0 and 1 went through PIL


class Failing:
    """A loader that gives its batches, then raises."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        yield from self.batches
        raise OSError("disk gone")


def test_decode_ahead_gives_the_batches_in_order_and_reraises_in_the_caller(odd):
    paths = [odd[n] for n in ("rgb", "cmyk", "gray", "corrupt", "palette", "rgb", "anim")]
    rows = list(range(len(paths)))
    batches = list(image_batches(rows, paths, SPEC, "gpu", 3, 0))
    with DecodeAhead(batches, SPEC, "cpu", depth=1) as ahead:
        got = list(ahead)
    assert [b["rows"] for b, *_ in got] == [[0, 1, 2], [3, 4, 5], [6]]
    for (batch, images, ok, failed), original in zip(got, batches):
        expected = materialize(original, SPEC, "cpu")
        assert torch.equal(images, expected[0]) and ok == expected[1] and failed == expected[2]
    seen = []
    with pytest.raises(OSError, match="disk gone"):
        with DecodeAhead(Failing(batches), SPEC, "cpu") as ahead:
            seen.extend(batch["rows"] for batch, *_ in ahead)
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]
    with DecodeAhead(batches * 4, SPEC, "cpu", depth=1) as ahead:
        next(iter(ahead))                 # the caller stops early: the thread must not hang
    assert not ahead.thread.is_alive()
