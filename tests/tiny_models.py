"""Tiny random models and odd image files for the extract tests (built in code, saved to tmp)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("a the man woman dog cat on in of at with and to is photo phone table crowd court bridge "
         "river city storm stage office building tree rocket window rain player players suit "
         "waving basketball soccer shirt television today visits unveils rt user obama paris "
         "apple iphone california lakers").split()


def tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide random BERT with a small WordPiece vocabulary, as a local model folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789@#:.,!?'-")
    tokens = list(dict.fromkeys([*specials, *WORDS, *letters, *(f"##{c}" for c in letters)]))
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=160)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TINY_CLIP = "TinyClipTest"


def register_tiny_clip(folder: Path) -> str:
    """Register a tiny open_clip architecture (32 px, 1 layer, 32 wide) and return its name."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        config = {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                 "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                               "heads": 2, "layers": 1}}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{TINY_CLIP}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    return TINY_CLIP


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth RGB picture (decoders agree on it within a few levels)."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def halves(width: int, height: int, first=(255, 0, 0), second=(0, 0, 255)) -> Image.Image:
    """Left half ``first``, right half ``second``."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = first
    array[:, width // 2:] = second
    return Image.fromarray(array)


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 40x20 (red left, blue right) with EXIF orientation 6: shown 20x40, red on top."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(halves(40, 20), exif=exif.tobytes())


def odd_images(folder: Path) -> dict[str, str]:
    """Write one file of every awkward kind; returns {file stem: kind}."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}

    def save(stem, kind, writer):
        writer(folder)
        kinds[stem] = kind

    save("rgb", "rgb", lambda d: (d / "rgb.jpg").write_bytes(jpeg_bytes(gradient())))
    save("gray", "gray", lambda d: gradient().convert("L").save(d / "gray.jpg"))
    save("cmyk", "cmyk", lambda d: Image.new("RGB", (32, 24), (255, 0, 0)).convert("CMYK")
         .save(d / "cmyk.jpg"))
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 1
    save("palette", "palette+transparency", lambda d: palette.save(d / "palette.png",
                                                                   transparency=1))
    save("rgba", "rgba", lambda d: Image.new("RGBA", (16, 16), (255, 0, 0, 128))
         .save(d / "rgba.png"))
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    save("anim", "animated gif", lambda d: frames[0].save(d / "anim.gif", save_all=True,
                                                          append_images=frames[1:], duration=100))
    save("exif", "exif rotated", lambda d: (d / "exif.jpg").write_bytes(exif_rotated_jpeg()))
    save("deep", "16-bit png", lambda d: Image.fromarray(
        np.full((8, 8), 65535 // 2, dtype=np.uint16)).save(d / "deep.png"))
    save("corrupt", "corrupt", lambda d: (d / "corrupt.jpg").write_bytes(b"not an image" * 10))
    save("empty", "empty", lambda d: (d / "empty.jpg").write_bytes(b""))
    full = jpeg_bytes(gradient(256, 192))
    save("truncated", "truncated", lambda d: (d / "truncated.jpg").write_bytes(
        full[: len(full) // 2]))
    return kinds
