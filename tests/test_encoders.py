"""The encoder registry and loaded encoders: offline CNN, random ResNet/timm/CLIP, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.encoders import REGISTRY, encoder_names, get_spec, resolve_encoder, weights_id
from pipeline.errors import MissingInput, UnknownEncoder
from pipeline.images import DecodeSpec, decode_bytes
from pipeline.loaders import load_encoder
from tiny_models import gradient, jpeg_bytes, register_tiny_clip, tiny_bert

COFFEE_CLASSES = {"espresso", "cup", "coffee mug", "coffeepot", "espresso maker"}


def photo_batch(spec, images) -> torch.Tensor:
    decode = DecodeSpec.from_preprocess(spec.preprocess)
    return torch.stack([decode_bytes(jpeg_bytes(img), decode)[0] for img in images])


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def clip_arch(tmp_path_factory):
    return register_tiny_clip(tmp_path_factory.mktemp("clip-config"))


def test_unknown_image_encoder_lists_the_valid_names():
    with pytest.raises(UnknownEncoder) as err:      # (vgg16 is a timm name: tests/test_model_names)
        resolve_encoder("no_such_net", "image")
    assert str(err.value) == (
        "unknown image encoder 'no_such_net'; use one of efficientnet-lite0, resnet101, resnet152, "
        "resnet50 (optionally :random or :<weights file>), timm:<model>, or a CLIP model "
        "(clip-vit-b16-openai, clip-vit-b32-laion2b, clip-vit-b32-openai, clip-vit-l14-openai or "
        "clip:<arch>/<tag>)")


def test_text_entries_and_get_spec_are_unchanged():
    assert get_spec("minilm-l6", "text").space == "sentence:minilm-l6"
    assert resolve_encoder("minilm-l6", "text") is REGISTRY["minilm-l6"]
    with pytest.raises(UnknownEncoder) as err:
        resolve_encoder("resnet50", "text")
    assert str(err.value) == ("encoder 'resnet50' is not a text encoder but image; use one of "
                              "bert-base-cased, bert-base-uncased, minilm-l6, mpnet-base")
    with pytest.raises(UnknownEncoder) as err:          # CLIP's text tower is --clip's business
        get_spec("clip-vit-b32-openai", "text")
    assert str(err.value) == ("encoder 'clip-vit-b32-openai' is not a text encoder but image+text "
                              "(a CLIP model is the clip setting); use one of bert-base-cased, "
                              "bert-base-uncased, minilm-l6, mpnet-base")
    assert "clip-vit-b32-openai" in encoder_names("image")


def test_image_specs_carry_their_preprocessing():
    lite = REGISTRY["efficientnet-lite0"]
    assert lite.preprocess == {"size": 224, "resize": "squash", "interpolation": "bilinear",
                               "mean": [0.5] * 3, "std": [0.5] * 3}
    assert REGISTRY["resnet152"].preprocess["mean"] == [0.485, 0.456, 0.406]
    assert REGISTRY["clip-vit-b32-openai"].space == "clip:ViT-B-32/openai"


def test_offline_efficientnet_sees_coffee_in_the_coffee_photo():
    data = pytest.importorskip("skimage.data", reason="scikit-image (the test extra) ships the photo")

    encoder = load_encoder("efficientnet-lite0", "cpu")
    batch = photo_batch(encoder.spec, [Image.fromarray(data.coffee())])
    views = encoder.forward_views(batch)
    assert views["grid"].shape == (1, 49, 1280)
    top5 = [encoder.classes[i] for i in views["probs"][0].topk(5).indices]
    assert COFFEE_CLASSES & set(top5), top5
    assert torch.allclose(views["probs"].sum(-1), torch.ones(1))
    assert encoder.fingerprint["weights_sha256"] == weights_id(encoder.spec)
    assert len(encoder.fingerprint["weights_sha256"]) == 64


def test_random_resnet_is_reproducible_and_round_trips_through_a_local_checkpoint(tmp_path):
    random = load_encoder("resnet50:random", "cpu")
    assert random.spec.space == "grid:resnet50/random"
    assert random.fingerprint["weights_sha256"] == "random:seed0"
    batch = photo_batch(random.spec, [gradient(), gradient(80, 60)])
    views = random.forward_views(batch)
    assert views["grid"].shape == (2, 49, 2048) and views["probs"].shape == (2, 1000)
    again = load_encoder("resnet50:random", "cpu").forward_views(batch)
    assert torch.equal(views["grid"], again["grid"])
    checkpoint = tmp_path / "resnet50-mine.pth"
    torch.save({"state_dict": random.model.state_dict()}, checkpoint)
    local = load_encoder(f"resnet50:{checkpoint}", "cpu")
    assert local.spec.space.startswith("grid:resnet50/file-")
    assert local.fingerprint["weights_sha256"] == weights_id(local.spec) != "random:seed0"
    assert torch.allclose(local.forward_views(batch)["grid"], views["grid"], atol=1e-5)


def test_named_resnet_uses_the_users_cache_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(MissingInput) as err:
        load_encoder("resnet50", "cpu")
    assert str(err.value).startswith(f"resnet50 weights not found at {tmp_path}/checkpoints/"
                                     "resnet50-11ad3fa6.pth; download https://download.pytorch")
    with pytest.raises(MissingInput, match="weights file not found for encoder 'resnet50'"):
        resolve_encoder(f"resnet50:{tmp_path / 'nope.pth'}")
    (tmp_path / "bad.pth").write_bytes(b"x")
    with pytest.raises(MissingInput, match="not a state dict for resnet50"):
        load_encoder(f"resnet50:{tmp_path / 'bad.pth'}", "cpu")


def test_timm_models_work_with_random_weights():
    encoder = load_encoder("timm:resnet18:random", "cpu")
    views = encoder.forward_views(photo_batch(encoder.spec, [gradient()]))
    assert views["grid"].shape == (1, 49, 512) and encoder.spec.space == "grid:timm-resnet18/random"


def test_clip_random_weights_and_local_checkpoint(clip_arch, tmp_path):
    encoder = load_encoder(f"clip:{clip_arch}/random", "cpu")
    assert encoder.spec.space == f"clip:{clip_arch}/random" and encoder.spec.dim == 32
    assert encoder.spec.preprocess["resize"] == "shortest+center_crop"
    images = photo_batch(encoder.spec, [gradient(), gradient(50, 90)])
    image_vectors, text_vectors = encoder.encode(images), encoder.encode(["a dog", "a cat"])
    assert image_vectors.shape == text_vectors.shape == (2, 32)
    assert np.allclose(np.linalg.norm(image_vectors, axis=1), 1, atol=1e-5)
    scores = encoder.zero_shot(torch.from_numpy(image_vectors), torch.from_numpy(text_vectors))
    assert torch.allclose(scores.sum(-1), torch.ones(2))
    checkpoint = tmp_path / "tiny-clip.pt"
    torch.save(encoder.model.state_dict(), checkpoint)
    local = load_encoder(f"clip:{clip_arch}/{checkpoint}", "cpu")
    assert local.spec.space.startswith(f"clip:{clip_arch}/file-")
    assert np.allclose(local.encode(images), image_vectors, atol=1e-5)
    with pytest.raises(UnknownEncoder, match="must read clip:<arch>/<tag>"):
        resolve_encoder(f"clip:{clip_arch}")


def test_sentence_encoder_mean_pools_and_normalises(bert_dir):
    encoder = load_encoder(str(bert_dir), "cpu")
    texts = ["a man on a bridge over the river", "dog", "obama visits paris today"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    alone = np.concatenate([encoder.encode([t]) for t in texts])   # no padding, original order
    assert np.allclose(vectors, alone, atol=1e-5)
    batch = encoder.tokenizer([texts[1]], return_tensors="pt")
    with torch.no_grad():
        manual = encoder.model(**batch).last_hidden_state.mean(1)
    assert np.allclose(vectors[1], torch.nn.functional.normalize(manual, dim=-1)[0], atol=1e-5)
    assert encoder.fingerprint["spec"]["space"] == f"sentence:{bert_dir}"


def test_hugging_face_ids_as_users_write_them(bert_dir):
    from pipeline.encoders import get_spec

    for name in ("roberta-large", "bert-base-cased-finetuned/x", "hf:roberta-large"):
        spec = get_spec(name, "text")
        assert spec.library == "transformers" and spec.identifier == name.removeprefix("hf:")
    assert get_spec("roberta-large").space == get_spec("hf:roberta-large").space
    assert get_spec(str(bert_dir), "text").identifier == str(bert_dir.resolve())
    with pytest.raises(UnknownEncoder):
        get_spec("../not a name", "text")


def test_an_uncached_hub_model_offline_fails_at_once_without_tmp_files(tmp_path, monkeypatch):
    from pipeline.encoders import load_text_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingInput) as err:
        load_text_backbone("no-such-org-x1/no-such-model-y2")
    assert "not in the local Hugging Face cache" in str(err.value)
    assert err.value.value == "no-such-org-x1/no-such-model-y2" and err.value.hint
    assert "\n" not in str(err.value) and "--" not in str(err.value)
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.incomplete"))
