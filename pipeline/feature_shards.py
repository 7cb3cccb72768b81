"""One feature file written by several ranks: a shard per rank, merged by rank 0.

Under ``torchrun`` (pipeline/distributed.py) rank r of w computes the contiguous rows
``Distributed.share(n)`` of every view and writes them to its own shard next to the final file::

    <view>-<fp12>.h5.shard<r>-of-<w>.tmp    while it is being written (a ``done`` mask, resumable)
    <view>-<fp12>.h5.shard<r>-of-<w>        once complete (never computed again)

A shard is a feature file (pipeline/features.py) of the rank's item ids, with the job's
fingerprint, so a killed rank resumes its own ``.tmp`` exactly as one process resumes its file,
and a finished shard is kept. After a barrier rank 0 copies the shards, in rank order, block by
block, into the final file through an ordinary ``FeatureWriter`` (itself resumable: a merge cut
short continues), renames it and deletes the shards. Rows are copied as stored, so the merged file
holds what the ranks computed: the same item order, fingerprint, ``valid`` masks and reasons as one
process, vectors equal to one process's within float tolerance (batches differ).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .distributed import share_bounds
from .features import FeatureWriter
from .store import decode_attrs

COPY_BYTES = 64 << 20       # rows copied per step of the merge


def shard_path(path, rank: int, world: int) -> Path:
    """The finished shard of rank ``rank`` of ``world`` for the final file ``path``."""
    path = Path(path)
    return path.with_name(f"{path.name}.shard{rank}-of-{world}")


def _finished(path: Path, fingerprint: str, item_ids: list[str]) -> bool:
    """A complete shard of this fingerprint and these ids sits at ``path``."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as h5:
            attrs, ids = decode_attrs(h5.attrs), list(h5["item_id"].asstr()[()])
    except (OSError, KeyError):
        return False
    return bool(attrs.get("complete")) and attrs.get("fingerprint") == fingerprint \
        and ids == item_ids


class ShardWriter(FeatureWriter):
    """``FeatureWriter`` of one rank's share of the rows, in the numbering of the whole file:
    ``pending()`` gives whole-file rows of this share, ``write`` takes them. A finished shard of
    the same fingerprint is kept: nothing is pending and ``finish`` only returns its path."""

    def __init__(self, path, item_ids, attrs: dict, dtype=np.float32, with_sha: bool = False, *,
                 rank: int, world: int, overwrite: bool = False):
        self.lo, hi = share_bounds(len(item_ids), rank, world)
        self.final = shard_path(path, rank, world)
        mine = list(item_ids)[self.lo:hi]
        if overwrite:
            for old in (self.final, self.final.with_name(self.final.name + ".tmp")):
                old.unlink(missing_ok=True)
        self.kept = _finished(self.final, attrs["fingerprint"], mine)
        if self.kept:
            self.path, self.file, self.raw, self.dtype = self.final, None, None, np.dtype(dtype)
            self.notes = [f"{self.final.name}: finished shard kept ({len(mine)} rows)"]
            return
        super().__init__(self.final, mine, {**attrs, "shard": [rank, world, self.lo, hi]},
                         dtype, with_sha)

    def pending(self) -> np.ndarray:
        if self.kept:
            return np.zeros(0, np.int64)
        return super().pending() + self.lo

    def write(self, rows, features, valid, reason, sha=None) -> None:
        super().write(np.asarray(rows, np.int64) - self.lo, features, valid, reason, sha)

    def finish(self) -> Path:
        return self.final if self.kept else super().finish()


def merge_shards(path, item_ids, attrs: dict, world: int, dtype=np.float32,
                 with_sha: bool = False) -> Path:
    """Copy the ``world`` finished shards of ``path`` into ``path`` (rank 0, after a barrier);
    the shards are deleted once the final file is renamed into place."""
    shards = [shard_path(path, rank, world) for rank in range(world)]
    writer = FeatureWriter(path, item_ids, attrs, dtype, with_sha)
    try:
        todo = set(writer.pending().tolist())
        for rank, shard in enumerate(shards):
            lo, hi = share_bounds(len(item_ids), rank, world)
            if hi > lo and todo & set(range(lo, hi)):
                _copy(shard, lo, writer)
        final = writer.finish()
    finally:
        writer.close()
    for shard in shards:
        shard.unlink(missing_ok=True)
    return final


def _copy(shard: Path, lo: int, writer: FeatureWriter) -> None:
    with h5py.File(shard, "r") as h5:
        features = h5["features"]
        row_bytes = max(1, int(np.prod(features.shape[1:])) * features.dtype.itemsize)
        step = max(1, COPY_BYTES // row_bytes)
        sha = h5["content_sha256"] if "content_sha256" in h5 else None
        for start in range(0, len(features), step):
            part = slice(start, min(len(features), start + step))
            writer.write(np.arange(part.start, part.stop) + lo, features[part],
                         h5["valid"][part], list(h5["reason"].asstr()[part]),
                         None if sha is None else list(sha.asstr()[part]))
