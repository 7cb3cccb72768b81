"""The ``extract`` stage: a dataset's text and image views into the HDF5 feature cache.

``run_extract(ExtractConfig(...), progress) -> summary``. Which views, and from what:

- captions only (no images): ``text`` = the tweet through the sentence encoder; ``image_global`` =
  the caption through the same encoder; ``object_types`` = COCO-80 categories named in the caption.
- with ``image_dir``: ``region_grid`` = CNN grid; ``object_types`` = ImageNet-1k probabilities;
  ``image_global`` = the caption if there is one, else the top ImageNet labels as a phrase, through
  the sentence encoder.
- with ``clip`` (and images): ``text`` and ``image_global`` in CLIP space; ``object_types`` = CLIP
  zero-shot scores over the 80 COCO names; ``region_grid`` still from the CNN.

Each view is one file named by its fingerprint (pipeline/features.py); a complete file of the same
configuration is reused without loading any model.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


from . import features as fs
from . import store
from .artifacts import environment, ids_fingerprint
from .data import Dataset, load_dataset
from .distributed import Distributed
from .encoders import EncoderSpec, encoder_fingerprint, resolve_encoder
from .errors import InvalidConfig
from .extract_passes import run_jobs
from .objects import COCO_80, LEXICON
from .producers import recipe, view_fingerprint
from .progress import no_progress
from .runtime import resolve_device, resolve_precision
from .text import tweet_text  # noqa: F401 (re-exported: the tweet text of the text view)

VIEWS = ("text", "image_global", "object_types", "region_grid")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``extract`` needs; defaults live here only."""

    data_dir: Path
    artifacts: Path = Path("artifacts")
    captions: Path | None = None          # "<id>.jpg :<caption>" file
    image_dir: Path | None = None         # <IMGID>.jpg files
    views: tuple[str, ...] = ()           # empty: every view the inputs allow
    text_encoder: str = "minilm-l6"       # sentence encoder for the tweet and the bridge
    image_encoder: str = "efficientnet-lite0"   # CNN for region grids and ImageNet classes
    clip: str | None = None               # "ARCH/TAG", "ARCH/<checkpoint>" or a registered name
    drop_urls: bool = True                # tweet text: drop http(s):// and www. tokens
    max_length: int = 128                 # word pieces per text (sentence encoder)
    object_counts: bool = False           # caption objects: mention counts instead of 0/1
    label_topk: int = 3                   # ImageNet labels in the phrase bridge
    float16: bool = False                 # store features as float16
    device: str = "auto"
    precision: str = "auto"               # auto: bf16 autocast on CUDA, fp32 on CPU
    decode: str = "auto"                  # auto: gpu (nvJPEG) on CUDA, pil on CPU
    batch_size: int = 64                  # images per forward pass
    text_batch_size: int = 256            # texts per written batch
    workers: int | None = None            # decode processes; None: min(8, CPU count)
    overwrite: bool = False

    def __post_init__(self):
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown:
            raise InvalidConfig(f"unknown view {unknown[0]!r}; choose from {', '.join(VIEWS)}")
        if self.clip is not None and self.image_dir is None:
            raise InvalidConfig("a CLIP model embeds images, and no image folder is given",
                                setting="image_dir")
        if "region_grid" in self.views and self.image_dir is None:
            raise InvalidConfig("the region_grid view needs images, and no image folder is given",
                                setting="image_dir")
        if self.image_dir is None and self.captions is None and set(self.views) - {"text"}:
            raise InvalidConfig("image views need an image folder or a captions file",
                                setting="image_dir")
        for name in ("batch_size", "text_batch_size", "label_topk", "max_length"):
            if getattr(self, name) < 1:
                raise InvalidConfig(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise InvalidConfig(f"workers must be 0 or more, not {self.workers}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InvalidConfig(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        if self.decode not in ("auto", "pil", "gpu"):
            raise InvalidConfig(f"decode must be auto, pil or gpu, not {self.decode!r}")

    @property
    def clip_name(self) -> str | None:
        if self.clip is None:
            return None
        return self.clip if self.clip.startswith("clip") else f"clip:{self.clip}"


@dataclass
class Job:
    """One view file to produce: what it holds, from what, and where."""

    view: str
    source: str            # tweet_text, caption, imagenet_labels, image
    producer: str          # sentence, clip_text, caption_objects, cnn, clip_image, label_phrase
    space: str
    encoder: dict          # {"spec": ..., "weights_sha256": ...}
    config: dict
    inputs: dict           # recorded data inputs: {name: {"sha256", "path"?}} (pipeline/store.py)
    path: Path = Path()
    needs: Path | None = None   # a file this job reads (the ImageNet probabilities of the bridge)
    fingerprint: str = ""
    reused: bool = False
    notes: list[str] = field(default_factory=list)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _text_config(config: ExtractConfig) -> dict:
    return {"join": "space", "drop_urls": config.drop_urls, "max_length": config.max_length,
            "pooling": "mean", "normalized": True}


def _caption_objects_encoder() -> dict:
    spec = EncoderSpec(name="coco-caption-nouns", modality="text", library="pipeline.objects",
                       identifier="COCO_80 names, plurals and synonyms", dim=len(COCO_80),
                       space="objects:coco-80")
    return {"spec": spec.as_dict(), "weights_sha256": _sha(sorted(
        [" ".join(k), v] for k, v in LEXICON.items()))}


class _Sources:
    """What the jobs are made from; each encoder is resolved (and its weights hashed) only if used."""

    def __init__(self, config: ExtractConfig, dataset: Dataset):
        self.config, self.dataset = config, dataset
        self.images, self.captions = dataset.images is not None, dataset.captions is not None

    @functools.cached_property
    def sentence(self) -> dict:
        spec = resolve_encoder(self.config.text_encoder, "text")
        if spec.library != "transformers":
            raise InvalidConfig(f"text encoder {self.config.text_encoder!r} is not a sentence "
                                "encoder", value=self.config.text_encoder, setting="text_encoder")
        return encoder_fingerprint(spec)

    @functools.cached_property
    def clip(self) -> dict | None:
        return encoder_fingerprint(resolve_encoder(self.config.clip_name)) if self.config.clip \
            else None

    @functools.cached_property
    def cnn(self) -> dict:
        spec = resolve_encoder(self.config.image_encoder, "image")
        if spec.library == "open_clip":
            raise InvalidConfig("the image encoder must be a CNN (efficientnet-lite0, resnet50, "
                                "timm:<model>); a CLIP model is given as the clip setting",
                                value=self.config.image_encoder, setting="clip")
        return encoder_fingerprint(spec)

    @functools.cached_property
    def image_sha(self) -> dict:
        """The images input (their bytes' sha256, cached by path, size and mtime)."""
        return store.data_inputs(self.dataset, ("images",), image_dir=self.config.image_dir,
                                 digests=store.DigestCache(self.config.artifacts))

    @functools.cached_property
    def caption_sha(self) -> dict:
        return store.data_inputs(self.dataset, ("captions",), captions_path=self.config.captions)

    def pixels(self, encoder: dict, **extra) -> dict:
        return {"preprocess": encoder["spec"]["preprocess"], "pil_draft": True, **extra}

    def text(self) -> dict:
        return {"text": _text_config(self.config)}


def _object_job(src: _Sources) -> Job:
    if src.clip is not None:
        return Job("object_types", "image", "clip_objects", "objects:coco-80-clip", src.clip,
                   src.pixels(src.clip, classes="coco-80", prompt="a photo of {}.",
                              output="softmax"), src.image_sha)
    if src.images:
        return Job("object_types", "image", "cnn", "objects:imagenet-1k", src.cnn,
                   src.pixels(src.cnn, classes="imagenet-1k", output="softmax"), src.image_sha)
    return Job("object_types", "caption", "caption_objects", "objects:coco-80",
               _caption_objects_encoder(), {"counts": src.config.object_counts}, src.caption_sha)


def _global_job(src: _Sources) -> Job:
    if src.clip is not None:
        return Job("image_global", "image", "clip_image", src.clip["spec"]["space"], src.clip,
                   src.pixels(src.clip), src.image_sha)
    space = src.sentence["spec"]["space"]
    if src.captions:
        return Job("image_global", "caption", "sentence", space, src.sentence, src.text(),
                   src.caption_sha)
    return Job("image_global", "imagenet_labels", "label_phrase", space, src.sentence,
               {**src.text(), "labeller": src.cnn, "topk": src.config.label_topk,
                "template": "a photo of a <label>, ..."}, src.image_sha)


def _text_job(src: _Sources) -> Job:
    tweets = store.text_inputs(src.dataset)
    if src.clip is not None:
        return Job("text", "tweet_text", "clip_text", src.clip["spec"]["space"], src.clip,
                   {"text": {"join": "space", "drop_urls": src.config.drop_urls,
                             "tokenizer": "open_clip"}}, tweets)
    return Job("text", "tweet_text", "sentence", src.sentence["spec"]["space"], src.sentence,
               src.text(), tweets)


def plan(config: ExtractConfig, dataset: Dataset, precision: str) -> list[Job]:
    """The view files this configuration produces, in the order they must be made."""
    src = _Sources(config, dataset)
    wanted = set(config.views or (VIEWS if src.images else VIEWS[:3]))
    if not src.images and not src.captions:
        wanted &= {"text"}
    jobs: list[Job] = []
    if "region_grid" in wanted:
        jobs.append(Job("region_grid", "image", "cnn", src.cnn["spec"]["space"], src.cnn,
                        src.pixels(src.cnn), src.image_sha))
    labels_bridge = src.images and not src.captions and src.clip is None
    if "object_types" in wanted or ("image_global" in wanted and labels_bridge):
        jobs.append(_object_job(src))
    if "image_global" in wanted:
        jobs.append(_global_job(src))
    if "text" in wanted:
        jobs.append(_text_job(src))
    ids_sha, key = ids_fingerprint(dataset.item_ids()), store.dataset_key(dataset)
    for job in jobs:
        job.config["precision"] = precision if job.producer != "caption_objects" else "n/a"
        job.fingerprint = view_fingerprint(      # the producer's recipe and what it read
            recipe(job.view, job.source, job.space, job.encoder, job.config),
            inputs_sha256=store.inputs_digest(job.inputs), ids_sha256=ids_sha,
            dtype="float16" if config.float16 else "float32", format_version=FORMAT_VERSION)
        job.path = fs.file_path(config.artifacts, key, job.view, job.fingerprint)
        if job.producer == "label_phrase":    # after its object_types job (planned before it)
            job.needs = next(j.path for j in jobs if j.view == "object_types")
    return jobs


def job_attrs(job: Job, dataset: Dataset, run: dict) -> dict:
    return {"view": job.view, "space": job.space, "source": job.source,
            "encoder": job.encoder["spec"], "weights_sha256": job.encoder["weights_sha256"],
            "config": {**job.config, "run": run}, "inputs": job.inputs,
            "environment": environment(), "dataset": dataset.name,
            "dataset_key": store.dataset_key(dataset),
            "fingerprint": job.fingerprint, "format_version": FORMAT_VERSION}


def run_extract(config: ExtractConfig, progress=no_progress) -> dict:
    """Extract every planned view (reusing complete files); write the manifest; return a summary.

    Under ``torchrun`` every rank computes its share of each view and rank 0 merges the shards
    (pipeline/feature_shards.py); the files are those one process writes."""
    start = time.perf_counter()
    with Distributed.from_env(device=config.device) as dist:
        dataset = load_dataset(config.data_dir, config.captions, config.image_dir)
        device = dist.device if dist.active else resolve_device(config.device)
        precision = resolve_precision(config.precision, device)
        if not dist.is_main:
            dist.barrier()          # rank 0 plans first: it hashes the images once, for all
        jobs = plan(config, dataset, precision)
        ids = dataset.item_ids()
        todo = [job for job in jobs if not _reuse(job, ids, config.overwrite)]
        if dist.is_main:
            dist.barrier()
        if todo:
            decode = config.decode if config.decode != "auto" else (
                "gpu" if device.startswith("cuda") else "pil")
            run = {"device": device, "precision": precision, "decode": decode,
                   "batch_size": config.batch_size, "workers": _workers(config),
                   "ranks": dist.world}
            run_jobs(todo, dataset, config, run, lambda job: job_attrs(job, dataset, run),
                     progress if dist.is_main else no_progress, dist)
        views = {job.view: _describe(job)
                 for job in sorted(jobs, key=lambda j: VIEWS.index(j.view))}
        manifest = fs.manifest_path(config.artifacts, store.dataset_key(dataset))
        if dist.is_main:
            manifest = fs.write_manifest(config.artifacts, dataset, {
                v: {k: d[k] for k in ("file", "fingerprint", "space", "source", "text_source",
                                      "shape")} for v, d in views.items()})
        dist.barrier()
    return {"dataset": dataset.name, "items": len(ids), "views": views, "manifest": str(manifest),
            "coverage": coverage(dataset), "seconds": round(time.perf_counter() - start, 2)}


def coverage(dataset: Dataset) -> dict:
    """Captions and images against the tweets: how many tweets have none, and how many captions
    name an image no tweet has (counted, never ignored silently)."""
    ids, out = set(dataset.item_ids()), {}
    if dataset.captions is not None:
        unused = sorted(set(dataset.captions) - ids)
        out["captions"] = {"missing": len(ids - set(dataset.captions)), "unused": len(unused),
                           "unused_examples": unused[:5]}
    if dataset.images is not None:
        out["images"] = {"missing": len(ids - set(dataset.images))}
    return out


def _workers(config: ExtractConfig) -> int:
    return config.workers if config.workers is not None else min(8, os.cpu_count() or 1)


def _reuse(job: Job, ids: list[str], overwrite: bool) -> bool:
    job.reused = store.reusable(job.path, job.fingerprint, overwrite, stage="extract",
                                item_ids=ids)
    return job.reused


def _describe(job: Job) -> dict:
    """Counts of valid / invalid rows (by reason) of a finished view file."""
    import h5py

    with h5py.File(job.path, "r") as f:
        valid = f["valid"][()].astype(bool)
        reasons = [r.decode() if isinstance(r, bytes) else r for r in f["reason"][()]]
        shape = list(f["features"].shape)
    invalid: dict[str, int] = {}
    for ok, reason in zip(valid, reasons):
        if not ok:
            key = reason.split(":")[0] or "invalid"
            invalid[key] = invalid.get(key, 0) + 1
    return {"file": job.path.name, "path": str(job.path), "fingerprint": job.fingerprint,
            "space": job.space, "source": job.source,
            "text_source": job.inputs.get("captions", {}).get("source"), "shape": shape, "reused": job.reused,
            "valid": int(valid.sum()), "invalid": dict(sorted(invalid.items())),
            "notes": job.notes}


def summary_lines(summary: dict) -> list[str]:
    """The summary as lines of text (what the CLI prints)."""
    lines = [f"{summary['dataset']}: {summary['items']} items, {summary['seconds']} s"]
    for view, d in summary["views"].items():
        invalid = ", ".join(f"{k} {n}" for k, n in d["invalid"].items()) or "none"
        state = "reused" if d["reused"] else "written"
        lines.append(f"  {view:<13} {state:<8} {d['space']} ({d['source']}) shape "
                     f"{'x'.join(map(str, d['shape']))}: valid {d['valid']}, invalid: {invalid}")
        lines.append(f"  {'':<13} {d['path']}")
    for source, counts in summary.get("coverage", {}).items():
        line = f"{source}: {counts['missing']} tweets have none"
        if counts.get("unused"):
            line += (f"; {counts['unused']} name images no tweet has (e.g. "
                     f"{', '.join(counts['unused_examples'])}): not used")
        lines.append(line)
    lines.append(f"manifest: {summary['manifest']}")
    return lines

