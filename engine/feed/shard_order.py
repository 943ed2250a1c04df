"""Shard order: which ROIs each replica and each loader worker reads in an epoch, and reading them shard by shard.

A shard (`store.rois_per_shard` ROIs of one part) is one file; reading it whole costs one open and one
index read for all its ROIs, against one of each per ROI in random order. An epoch's plan shuffles the
order of the shards, splits the ROIs so that every one is read exactly once across replicas (the
`DistributedSampler` contract), hands whole shard segments to loader workers round-robin, and a buffer
shuffle mixes ROIs of neighbouring shards. Every process computes the same plan from (seed, epoch).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from activessf_engine.store import RoiStore


@dataclass(frozen=True)
class Segment:
    """ROIs of one shard that one worker reads: their rows in the part and their global indices."""

    part: int
    start: int  # first row of the shard in its part
    stop: int  # one past its last row
    rows: np.ndarray  # rows of the part to read, within [start, stop)
    indices: np.ndarray  # global ROI indices of those rows


def store_shards(store: RoiStore, indices: np.ndarray) -> list[Segment]:
    """The shards that hold the ROIs `indices` (sorted global indices), in store order, each with its ROIs."""
    segments = []
    for k, (part, first) in enumerate(store.iter_parts()):
        lo, hi = np.searchsorted(indices, [first, int(store.offsets[k + 1])])
        if lo == hi:
            continue
        array = store.part_array(part, "rois")
        shard = int(array.shards[0] if array.shards else array.chunks[0])
        rows = indices[lo:hi] - first
        for start in np.unique(rows // shard) * shard:
            inside = rows[(rows >= start) & (rows < start + shard)]
            stop = min(int(start) + shard, array.shape[0])
            segments.append(Segment(part, int(start), stop, inside, inside + first))
    return segments


def replica_bounds(total: int, replicas: int, rank: int, drop_last: bool) -> tuple[int, int]:
    """The slice of an epoch's `total` ROIs that replica `rank` reads: contiguous, disjoint, covering all.

    Lengths differ by at most one; with `drop_last`, every replica reads `total // replicas` and the
    remainder is left out of this epoch (unlike DistributedSampler, no ROI is ever repeated to even them)."""
    if not 0 <= rank < replicas:
        raise ValueError(f"rank must lie in [0, {replicas}), got {rank}")
    if drop_last:
        each = total // replicas
        return rank * each, (rank + 1) * each
    return total * rank // replicas, total * (rank + 1) // replicas


def epoch_segments(
    shards: list[Segment],
    *,
    epoch: int,
    seed: int,
    shuffle: bool,
    replicas: int = 1,
    rank: int = 0,
    workers: int = 1,
    worker: int = 0,
    drop_last: bool = False,
) -> list[Segment]:
    """The segments that worker `worker` of replica `rank` reads in `epoch`, in reading order."""
    order = np.random.default_rng([seed, epoch]).permutation(len(shards)) if shuffle else np.arange(len(shards))
    sizes = np.array([len(shards[i].rows) for i in order], dtype=np.int64)
    ends = np.cumsum(sizes)
    begin, end = replica_bounds(int(ends[-1]) if len(ends) else 0, replicas, rank, drop_last)
    mine = []
    for position, shard_id in enumerate(order):
        lo, hi = max(begin, int(ends[position] - sizes[position])), min(end, int(ends[position]))
        if lo < hi:
            shard, offset = shards[shard_id], int(ends[position] - sizes[position])
            cut = slice(lo - offset, hi - offset)
            mine.append(Segment(shard.part, shard.start, shard.stop, shard.rows[cut], shard.indices[cut]))
    return mine[worker::workers]


def iter_segments(
    store: RoiStore, segments: list[Segment], channels_first: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """(global index, ROI) for every ROI of the segments, shard by shard: (S, S, 3) uint8, or (3, S, S)
    with `channels_first`; each ROI its own array, so a shuffle buffer holds only the ROIs in it."""
    for segment in segments:
        rois = store.iter_part_rois(segment.part, segment.rows, channels_first)
        yield from zip(segment.indices.tolist(), rois, strict=True)


def buffer_shuffle(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Items in a random order drawn from a buffer of `size` (1: the order given)."""
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            pick = rng.randrange(len(buffer))
            buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer
