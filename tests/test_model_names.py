"""Model names as users write them (issue 13): timm names with tags or hub prefixes, with or
without ``timm:``; open_clip ``hf-hub:<org>/<name>`` models, read from the Hugging Face cache and
refused at once (one line) when not cached and the hub is off."""
from __future__ import annotations

import json

import huggingface_hub
import pytest

from pipeline.encoders import encoder_fingerprint, resolve_encoder
from pipeline.errors import MissingInput, UnknownEncoder
from pipeline.model_names import split_timm_name


def test_timm_names_keep_their_tags_and_hub_prefix():
    assert split_timm_name("resnet50.a1_in1k") == ("resnet50.a1_in1k", "")
    assert split_timm_name("hf-hub:timm/resnet18.a1_in1k:random") == (
        "hf-hub:timm/resnet18.a1_in1k", "random")
    spec = resolve_encoder("timm:hf-hub:timm/resnet18.a1_in1k:random", "image")
    assert spec.identifier == "hf-hub:timm/resnet18.a1_in1k" and spec.pretrained is None


def test_a_bare_timm_name_is_a_timm_model():
    spec = resolve_encoder("resnet18.a1_in1k", "image")
    assert (spec.library, spec.name, spec.identifier) == ("timm", "timm:resnet18.a1_in1k",
                                                          "resnet18.a1_in1k")
    assert resolve_encoder("convnext_tiny:random", "image").pretrained is None
    assert resolve_encoder("vgg16", "image").name == "timm:vgg16"
    with pytest.raises(UnknownEncoder, match="unknown image encoder 'no_such_net'"):
        resolve_encoder("no_such_net", "image")


def cached_config(monkeypatch, tmp_path, repo="laion/tiny-clip"):
    config = {"model_cfg": {"embed_dim": 64, "vision_cfg": {"image_size": [196, 196]}}}
    path = tmp_path / "open_clip_config.json"
    path.write_text(json.dumps(config))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda r, f: str(path) if (r, f) == (repo, path.name) else None)


def test_clip_hf_hub_names_are_one_name_not_split_at_the_slash(monkeypatch, tmp_path):
    cached_config(monkeypatch, tmp_path)
    spec = resolve_encoder("clip:hf-hub:laion/tiny-clip")
    assert (spec.identifier, spec.dim, spec.preprocess["size"]) == ("hf-hub:laion/tiny-clip",
                                                                     64, 196)
    assert spec.space == "clip:hf-hub:laion/tiny-clip" and spec.library == "open_clip"
    assert encoder_fingerprint(spec)["weights_sha256"] == \
        "hub:open_clip/hf-hub:laion/tiny-clip/hf-hub"
    from pipeline.extract import ExtractConfig
    assert ExtractConfig(data_dir=tmp_path, image_dir=tmp_path,
                         clip="hf-hub:laion/tiny-clip").clip_name == "clip:hf-hub:laion/tiny-clip"


def test_an_uncached_hub_clip_offline_is_one_line_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingInput, match="not in the local Hugging Face cache"):
        resolve_encoder("clip:hf-hub:laion/not-downloaded-here")      # no hub retries
    with pytest.raises(UnknownEncoder, match="must read hf-hub:<org>/<name>"):
        resolve_encoder("clip:hf-hub:laion")
