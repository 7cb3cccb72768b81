"""Model names as users write them, for the libraries that name models themselves: timm names
with pretrained tags or hub prefixes, open_clip ``hf-hub:<org>/<name>`` models (issue 13).

Only plain data comes out of here (a name split, a config dict); pipeline/encoders.py turns it
into an ``EncoderSpec``.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UnknownEncoder
from .hub import check_hub_reachable

HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def split_timm_name(rest: str) -> tuple[str, str]:
    """``(model, weights)`` of what follows ``timm:``: ``resnet50.a1_in1k``,
    ``hf-hub:timm/resnet50.a1_in1k`` (the hub prefix is part of the model name), each optionally
    followed by ``:random`` or ``:<weights file>``."""
    hub = next((p for p in HUB_PREFIXES if rest.startswith(p)), "")
    model, _, weights = rest[len(hub):].partition(":")
    return hub + model, weights


def is_timm_model(name: str) -> bool:
    """A model name timm knows (``convnext_tiny``, ``resnet50.a1_in1k``), so that it works
    without the ``timm:`` prefix. False without timm (optional)."""
    try:
        import timm      # optional, heavy: only for names no registry entry serves
    except ImportError:
        return False
    return timm.is_model(name.partition(":")[0])


def clip_hub_config(name: str, repo: str) -> tuple[int, int]:
    """``(embedding dims, image size)`` of the open_clip hub model ``repo`` (``<org>/<name>``),
    from its config: in the local Hugging Face cache, else downloaded; at once a one-line error
    when the hub is offline or unreachable (no minute of retries)."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UnknownEncoder(f"CLIP encoder {name!r} must read hf-hub:<org>/<name>, e.g. "
                             "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", value=name,
                             setting="clip")
    import open_clip     # optional, heavy: only for CLIP models
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "open_clip_config.json")
    if isinstance(cached, str):
        config = json.loads(Path(cached).read_text())["model_cfg"]
    else:
        check_hub_reachable(name, repo)
        config = open_clip.get_model_config(f"hf-hub:{repo}")
    if not config:
        raise UnknownEncoder(f"{repo} on the Hugging Face hub has no open_clip config",
                             value=name, setting="clip")
    size = config["vision_cfg"]["image_size"]
    return config["embed_dim"], size if isinstance(size, int) else size[0]
