"""Image encoders behind ``load_encoder``: CNN grids with an ImageNet head, and open_clip models.

Every encoder takes a batch of uint8 images (n, 3, S, S) already resized as ``spec.preprocess``
says (pipeline/images.py does that on CPU workers or on the GPU), normalises it on its device and
runs under bf16 autocast on CUDA when asked. Weights come from the offline package, the user's
cache, a local file, or are random (seed ``RANDOM_SEED``) for tests and benchmarks; nothing is
downloaded here except through open_clip's own pretrained tags.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .encoders import RANDOM_SEED, EncoderSpec, encoder_fingerprint
from .runtime import autocast
from .errors import MissingInput


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names (shipped inside torchvision's code, offline)."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def _seeded(build):
    """Build a module with random weights that are the same on every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


def _load_state(path: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: nn.Module, path: str, name: str) -> None:
    try:
        model.load_state_dict(_load_state(path))
    except (RuntimeError, KeyError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise MissingInput(f"{path}: not a state dict for {name} "
                           f"({str(err).splitlines()[0][:160]})") from None


def _efficientnet(spec: EncoderSpec) -> tuple[nn.Module, nn.Module, nn.Module]:
    from efficientnet_lite_pytorch import EfficientNet

    model = _seeded(lambda: EfficientNet.from_name(spec.identifier))
    if spec.pretrained is not None:
        _load_into(model, spec.locate(), spec.name)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), model._fc)
    return model, _Lambda(model.extract_features, model), head


def _torchvision_resnet(spec: EncoderSpec) -> tuple[nn.Module, nn.Module, nn.Module]:
    import torchvision

    model = _seeded(lambda: getattr(torchvision.models, spec.identifier)(weights=None))
    if spec.pretrained is not None:
        _load_into(model, spec.locate() if spec.locate else _torchvision_cached(spec), spec.name)
    trunk = nn.Sequential(*list(model.children())[:-2])
    return model, trunk, nn.Sequential(model.avgpool, nn.Flatten(), model.fc)


def _torchvision_cached(spec: EncoderSpec) -> str:
    """The torchvision weights file in the user's torch hub cache (never downloaded here)."""
    import torchvision

    enum = torchvision.models.get_model_weights(spec.identifier)[spec.pretrained]
    path = Path(torch.hub.get_dir(), "checkpoints", Path(enum.url).name)
    if not path.is_file():
        raise MissingInput(
            f"{spec.name} weights not found at {path}; download {enum.url} there (python -c "
            f"\"import torchvision; torchvision.models.{spec.identifier}(weights="
            f"'{spec.pretrained}')\"), pass {spec.name}:<local file>, or use the offline "
            "efficientnet-lite0")
    return str(path)


def _timm(spec: EncoderSpec) -> tuple[nn.Module, nn.Module, nn.Module]:
    import timm

    kwargs = {}
    if spec.locate is not None:
        kwargs["checkpoint_path"] = spec.locate()
    try:
        model = _seeded(lambda: timm.create_model(spec.identifier,
                                                  pretrained=spec.pretrained == "timm", **kwargs))
    except (RuntimeError, OSError, ValueError) as err:
        raise MissingInput(f"cannot build timm model {spec.identifier!r}: "
                           f"{str(err).splitlines()[0][:160]}; pass timm:<model>:<local file> "
                           "when offline") from None
    return model, _Lambda(model.forward_features, model), _Lambda(model.forward_head, model)


class _Lambda(nn.Module):
    """Wrap a bound method of ``owner`` as a module (so .to() and .eval() reach the owner)."""

    def __init__(self, fn, owner: nn.Module):
        super().__init__()
        self.fn, self.owner = fn, owner

    def forward(self, x):
        return self.fn(x)


_BUILDERS = {"efficientnet_lite_pytorch": _efficientnet, "torchvision": _torchvision_resnet,
             "timm": _timm}


class _Normalizer:
    def __init__(self, preprocess: dict, device: str):
        self.mean = torch.tensor(preprocess["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(preprocess["std"], device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.device, non_blocking=True).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


class CnnEncoder:
    """A CNN trunk giving an R x D region grid (7 x 7 at 224 px) and an ImageNet-1k head.

    ``forward_views(images) -> {"grid": (n, R, D), "probs": (n, classes)}`` on the device;
    ``encode(images) -> float32 (n, D)``: the mean of the grid (the usual pooled feature).
    ``model`` is the whole network (its ``state_dict()`` is what ``<name>:<file>`` loads).
    """

    def __init__(self, spec: EncoderSpec, device: str = "cpu", precision: str = "fp32"):
        self.spec, self.device, self.precision = spec, device, precision
        self.model, trunk, head = _BUILDERS[spec.library](spec)
        self.trunk = trunk.eval().to(device, memory_format=torch.channels_last)
        self.head = head.eval().to(device)
        self.normalize = _Normalizer(spec.preprocess, device)
        self.fingerprint = encoder_fingerprint(spec)
        self.classes = imagenet_classes()

    @torch.inference_mode()
    def forward_views(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.precision):
            fmap = self.trunk(self.normalize(images))
            logits = self.head(fmap)
        grid = fmap.float().flatten(2).transpose(1, 2).contiguous()
        return {"grid": grid, "probs": logits.float().softmax(-1)}

    def encode(self, images: torch.Tensor) -> np.ndarray:
        return self.forward_views(images)["grid"].mean(1).cpu().numpy()


class ClipEncoder:
    """An open_clip model: L2-normalised image and text embeddings in one space.

    ``encode(batch)`` takes a list of strings or a uint8 image batch; ``zero_shot(images, prompts)``
    gives softmax scores over the prompts (CLIP's logit scale).
    """

    def __init__(self, spec: EncoderSpec, device: str = "cpu", precision: str = "fp32"):
        import open_clip

        self.spec, self.device, self.precision = spec, device, precision
        pretrained = None if spec.pretrained in (None, "hf-hub") else (   # hf-hub: in the name
            spec.locate() if spec.locate is not None else spec.pretrained)
        try:
            model = _seeded(lambda: open_clip.create_model(spec.identifier, pretrained=pretrained))
        except (RuntimeError, OSError, ValueError) as err:
            raise MissingInput(f"cannot load CLIP {spec.identifier}/{spec.pretrained}: "
                               f"{str(err).splitlines()[0][:160]}", value=spec.name,
                               setting="clip", hint=f"offline, name a local checkpoint: "
                               f"{spec.identifier}/<checkpoint file>") from None
        self.model = model.eval().to(device)
        self.tokenizer = open_clip.get_tokenizer(spec.identifier)
        self.normalize = _Normalizer(spec.preprocess, device)
        self.fingerprint = encoder_fingerprint(spec)

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            features = self.model.encode_image(self.normalize(images))
        return nn.functional.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with autocast(self.device, self.precision):
            features = self.model.encode_text(tokens)
        return nn.functional.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def zero_shot(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor):
        scale = self.model.logit_scale.exp().float()
        return (scale * image_embeddings @ text_embeddings.T).softmax(-1)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def encode(self, batch, max_length: int | None = None) -> np.ndarray:
        """Texts (``max_length`` unused: open_clip's context length applies) or images."""
        if isinstance(batch, (list, tuple)):
            return self.encode_text(batch).cpu().numpy()
        return self.encode_image(batch).cpu().numpy()


def load_image_encoder(spec: EncoderSpec, device: str = "cpu", precision: str = "fp32"):
    if spec.library == "open_clip":
        return ClipEncoder(spec, device, precision)
    return CnnEncoder(spec, device, precision)
