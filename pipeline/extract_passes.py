"""The work loops of ``extract``: one pass over the images per image model, one over texts per job.

Image passes read (and, off the GPU route, decode) in DataLoader workers, decode and resize on a
thread of their own (pipeline/images.py ``DecodeAhead``), run the model in batches and write every
view of that model from the same forward pass. On CUDA these overlap: the decode of batch i + 1
(its own stream), the forward pass of batch i, the copy of batch i - 1 to the host (a copy
stream) and the HDF5 write of earlier batches (the writer thread). Every batch is written and
marked done before the progress bar moves, so an interrupted run resumes from the last finished
batch, and the batches of a resumed run are the same as a fresh run's (same rows, same results).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .distributed import Distributed
from .feature_shards import ShardWriter, merge_shards
from .features import FeatureWriter, read_features
from .image_encoders import imagenet_classes
from .images import DecodeAhead, DecodeSpec, image_batches
from .loaders import load_encoder
from .objects import imagenet_phrase
from .producers import ImageViews, Item, text_producer
from .progress import no_progress

IMAGE_PRODUCERS = {"cnn": "cnn", "clip_image": "clip", "clip_objects": "clip"}


def run_jobs(jobs, dataset, config, run: dict, attrs_of, progress=no_progress,
             dist=None) -> None:
    """Produce every job's file (resuming ``.tmp`` files); models load only when needed.

    With ``dist`` (a ``Distributed`` group of several ranks) each rank computes its share of the
    rows into shards (pipeline/feature_shards.py); after each stage (the image passes, then the
    texts: the label bridge reads the merged object_types) rank 0 merges them into the file."""
    dist = dist or Distributed()
    dtype = np.float16 if config.float16 else np.float32
    encoders: dict[str, object] = {}

    def encoder(name: str):
        if name not in encoders:
            encoders[name] = load_encoder(name, run["device"], run["precision"])
        return encoders[name]

    writers = {}
    try:
        for job in jobs:
            writers[job.view] = _writer(job, dataset, attrs_of(job), dtype, config, dist)
            job.notes.extend(writers[job.view].notes)
        for model in ("cnn", "clip"):
            group = [j for j in jobs if IMAGE_PRODUCERS.get(j.producer) == model]
            if group:
                name = config.image_encoder if model == "cnn" else config.clip_name
                _image_pass(group, writers, encoder(name), dataset, config, run, progress)
                for job in group:
                    writers.pop(job.view).finish()
        _merge([j for j in jobs if j.producer in IMAGE_PRODUCERS], dataset, attrs_of, dtype,
               dist)
        for job in jobs:        # after the image passes: the label bridge reads object_types
            if job.producer not in IMAGE_PRODUCERS:
                _text_job(job, writers[job.view], dataset, config, encoder, progress)
                writers.pop(job.view).finish()
        _merge([j for j in jobs if j.producer not in IMAGE_PRODUCERS], dataset, attrs_of, dtype,
               dist)
    finally:
        for writer in writers.values():
            writer.close()


def _with_sha(job) -> bool:
    return job.source in ("image", "imagenet_labels")


def _writer(job, dataset, attrs: dict, dtype, config, dist):
    """The whole file's writer for one process; this rank's shard writer in a group."""
    if not dist.active:
        return FeatureWriter(job.path, dataset.item_ids(), attrs, dtype, with_sha=_with_sha(job))
    return ShardWriter(job.path, dataset.item_ids(), attrs, dtype, _with_sha(job),
                       rank=dist.rank, world=dist.world, overwrite=config.overwrite)


def _merge(jobs, dataset, attrs_of, dtype, dist) -> None:
    """In a group: once every rank has finished its shards, rank 0 merges each job's file."""
    if not dist.active or not jobs:
        return
    dist.barrier()
    if dist.is_main:
        for job in jobs:
            merge_shards(job.path, dataset.item_ids(), attrs_of(job), dist.world, dtype,
                         _with_sha(job))
    dist.barrier()


# ---- images -----------------------------------------------------------------------------------

class _Done:
    """A computed batch on its way to the host. On CUDA the copy runs on ``copier`` (a stream of
    its own, so the next forward pass does not wait for it) into pinned memory; ``write`` waits
    for it on the writer thread."""

    def __init__(self, batch: dict, rows_ok: list[int], failed: dict, outputs: dict, dtype,
                 copier=None):
        self.batch, self.rows_ok, self.failed = batch, rows_ok, failed
        cast = torch.float16 if dtype == np.float16 else torch.float32
        outputs = {k: v.to(cast) for k, v in outputs.items()}
        self.event = None
        if not outputs or not next(iter(outputs.values())).is_cuda:
            self.host = {k: v.cpu() for k, v in outputs.items()}
            return
        copier.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(copier):
            self.host = {k: v.to("cpu", non_blocking=True) for k, v in outputs.items()}
            for value in outputs.values():
                value.record_stream(copier)
            self.event = copier.record_event()

    def write(self, views, writers, bar, shapes) -> None:
        if self.event is not None:
            self.event.synchronize()
        rows = self.batch["rows"]
        position = {row: k for k, row in enumerate(self.rows_ok)}
        take = [k for k, row in enumerate(rows) if row in position]
        valid = [row in position for row in rows]
        reason = ["" if row in position else self.failed.get(row, "not decoded") for row in rows]
        for view in views:
            host = self.host.get(view)
            if host is not None and len(take) == len(rows):
                full = host.numpy()
            else:
                tail = tuple(host.shape[1:]) if host is not None else shapes()[view]
                full = np.zeros((len(rows), *tail), dtype=writers[view].dtype)
                if host is not None:
                    full[take] = host.numpy()
            writers[view].write(rows, full, valid, reason, sha=self.batch["sha"])
        bar.update(len(rows))


class _Shapes:
    """Each view's row shape, for a batch with no decodable image before any was written: the
    model runs once on a blank image (only to learn the shapes; nothing of it is stored)."""

    def __init__(self, forward, size: int, device: str):
        self.forward, self.size, self.device, self.known = forward, size, device, None

    def __call__(self) -> dict[str, tuple[int, ...]]:
        if self.known is None:
            blank = torch.zeros((1, 3, self.size, self.size), dtype=torch.uint8,
                                device=self.device)
            self.known = {k: tuple(v.shape[1:]) for k, v in self.forward(blank).items()}
        return self.known


def _image_pass(jobs, writers, encoder, dataset, config, run, progress) -> None:
    views = [job.view for job in jobs]
    ids = dataset.item_ids()
    paths = [dataset.images.get(item_id) for item_id in ids]
    pending = sorted(set().union(*(writers[v].pending().tolist() for v in views)))
    spec = DecodeSpec.from_preprocess(encoder.spec.preprocess)
    on_cuda = run["device"].startswith("cuda")
    loader = image_batches(pending, [paths[r] for r in pending], spec, run["decode"],
                           config.batch_size, run["workers"], pin_memory=on_cuda)
    config = next((job.config for job in jobs if job.view == "object_types"), {})
    forward = ImageViews(encoder, views, config).compute_batch     # the views' producer
    shapes = _Shapes(forward, spec.size, run["device"])
    dtype = writers[views[0]].dtype
    copier = torch.cuda.Stream(torch.device(run["device"])) if on_cuda else None
    with progress(total=len(pending), desc=f"images: {', '.join(views)}") as bar, \
            _InOrder() as background, DecodeAhead(loader, spec, run["device"]) as batches:
        for batch, images, rows_ok, failed in batches:
            done = _Done(batch, rows_ok, failed, forward(images) if rows_ok else {}, dtype,
                         copier)
            background.submit(done.write, views, writers, bar, shapes)


class _InOrder:
    """Runs writes on one background thread, in order, at most ``depth`` waiting (the writes let
    the GIL go, so the GPU keeps being fed); nothing runs after the first failure,
    and leaving the block waits for what was started."""

    def __init__(self, depth: int = 2):
        self.depth, self.error, self.futures = depth, None, deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hdf5-writer")

    def _run(self, fn, *args):
        if self.error is None:
            try:
                fn(*args)
            except BaseException as err:
                self.error = err
                raise

    def submit(self, fn, *args) -> None:
        self.futures.append(self.pool.submit(self._run, fn, *args))
        while len(self.futures) > self.depth:
            self.futures.popleft().result()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        try:
            while self.futures and kind is None:
                self.futures.popleft().result()
        finally:
            self.pool.shutdown(wait=True)
        return False


# ---- texts ------------------------------------------------------------------------------------

def _text_producer(job, config, encoder):
    """The job's producer (pipeline/producers.py), with the job's text model."""
    if job.producer == "caption_objects":
        return text_producer("caption", "object_types", job.config)
    model = encoder(config.clip_name if job.producer == "clip_text" else config.text_encoder)
    return text_producer("tweet_text" if job.view == "text" else "caption", job.view,
                         job.config, model)


def _text_items(job, dataset):
    """(items, reason forced per row or None, sha per row or None) of a text job."""
    if job.view == "text":
        return [Item(tokens=t.tokens) for t in dataset.tweets()], None, None
    if job.producer == "label_phrase":
        objects = read_features(job.needs)
        top = np.argsort(-objects.features, axis=1)[:, :job.config["topk"]]
        classes = imagenet_classes()
        items = [Item(caption=None if failed else imagenet_phrase([classes[c] for c in row]))
                 for row, failed in zip(top, objects.reason)]
        return items, objects.reason, objects.content_sha256
    captions = dataset.captions or {}
    return [Item(caption=captions.get(i)) for i in dataset.item_ids()], None, None




def _text_job(job, writer, dataset, config, encoder, progress) -> None:
    pending = writer.pending()
    if len(pending) == 0:
        return
    producer = _text_producer(job, config, encoder)
    items, forced, sha = _text_items(job, dataset)
    with progress(total=len(pending), desc=job.view) as bar:
        for start in range(0, len(pending), config.text_batch_size):
            rows = pending[start:start + config.text_batch_size]
            got = producer.compute([items[r] for r in rows])
            reasons = got.reasons if forced is None else [   # the label bridge: the image's
                forced[r] or reason for r, reason in zip(rows, got.reasons)]   # failure, if any
            out, valid = got.vectors, np.array([not r for r in reasons], dtype=bool)
            writer.write(rows, out, valid, reasons,
                         sha=None if sha is None else [sha[r] for r in rows])
            bar.update(len(rows))
