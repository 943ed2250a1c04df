"""PyTorch datasets over a ROI store, for any SSL trainer (MAE, ConvMAE, MoCo v3, ...).

`RoiDataset` gives random access (one chunk read per ROI). `ShardedRoiDataset` is the fast path for
training: it reads whole shards in a shuffled shard order with a buffer shuffle, splits each epoch
between replicas (every ROI exactly once per epoch) and DataLoader workers, and follows `set_epoch`
even with `persistent_workers`. Both take a `RoiQuery` to read only some ROIs, decided without reading
pixels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from activessf_engine.feed.query import RoiQuery, query_rows
from activessf_engine.feed.shard_order import (
    Segment,
    buffer_shuffle,
    epoch_segments,
    iter_segments,
    replica_bounds,
    store_shards,
)
from activessf_engine.store import RoiStore

META_COLUMNS = ("cluster", "distance")  # columns of a selected store added to an item's metadata


class _StoreItems:
    """The store opened lazily in each process, and how one ROI becomes a dataset item."""

    def __init__(
        self, root: str | Path, transform: Callable[[torch.Tensor], Any] | None, with_meta: bool, query: RoiQuery | None
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.with_meta = with_meta
        self.query = query
        self._store: RoiStore | None = None
        self.indices = query_rows(self.store, query)  # global ROI indices, sorted

    @property
    def store(self) -> RoiStore:
        if self._store is None:
            self._store = RoiStore(self.root)
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    def item(self, index: int, roi: np.ndarray) -> Any:
        """(3, S, S) uint8 tensor of a (3, S, S) ROI, transformed; with its metadata if asked."""
        image = torch.from_numpy(roi)
        if self.transform is not None:
            image = self.transform(image)
        if not self.with_meta:
            return image
        cols = self.store.columns()
        meta = {"roi": index, "source": str(cols["source_path"][index]), "box": cols["box"][index].tolist()}
        if "level0_box" in cols:  # where to find it again in a viewer: slide, level, box in level-0 pixels
            meta.update(slide=str(cols["slide"][index]), level=int(cols["level"][index]))
            meta["level0_box"] = cols["level0_box"][index].tolist()
        if "pad" in cols:
            meta["pad"] = cols["pad"][index].tolist()
        for name in META_COLUMNS:
            if name in cols:
                meta[name] = cols[name][index].item()
        return image, meta


class RoiDataset(_StoreItems, Dataset):
    """ROIs of a store (candidates or selected) as (3, S, S) uint8 tensors, with random access.

    The store is opened lazily in each process, so the dataset can be handed to DataLoader workers
    (fork or spawn). `transform` receives the uint8 tensor (torchvision v2 transforms accept it).
    With `with_meta`, items are (image, {"roi", "source", "box", "pad", "slide", "level", "level0_box",
    ...}) for provenance (slide fields in stores of slides); "roi" is the
    ROI's index in the store. `query` keeps only some ROIs (dataset index i is the i-th ROI it keeps).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[torch.Tensor], Any] | None = None,
        with_meta: bool = False,
        query: RoiQuery | None = None,
    ) -> None:
        super().__init__(root, transform, with_meta, query)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        roi_index = int(self.indices[index])  # IndexError for an index out of range, negative ones count back
        return self.item(roi_index, self.store.roi(roi_index, channels_first=True))


def _distributed_default(replicas: int | None, rank: int | None) -> tuple[int, int]:
    """(replicas, rank) as DistributedSampler takes them: from torch.distributed when not given."""
    initialized = dist.is_available() and dist.is_initialized()
    if replicas is None:
        replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if replicas < 1 or not 0 <= rank < replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {replicas} and {rank}")
    return replicas, rank


class ShardedRoiDataset(_StoreItems, IterableDataset):
    """ROIs of a store read shard by shard: the fast path for training.

    Each epoch the order of the shards is shuffled (seeded by `seed` and the epoch), each replica of a
    distributed run reads a disjoint share (every ROI exactly once per epoch across `num_replicas`; they
    default to torch.distributed's world size and rank), each DataLoader worker reads whole shards of that
    share, and ROIs are mixed in a buffer of `buffer_size`. Call `set_epoch` before each epoch, as with
    DistributedSampler; the epoch lives in shared memory, so `persistent_workers=True` follows it.
    `len()` is this replica's number of ROIs per epoch. Items are as `RoiDataset`'s.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[torch.Tensor], Any] | None = None,
        with_meta: bool = False,
        query: RoiQuery | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 1024,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__(root, transform, with_meta, query)
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.shuffle, self.seed, self.buffer_size, self.drop_last = shuffle, seed, buffer_size, drop_last
        self.num_replicas, self.rank = _distributed_default(num_replicas, rank)
        self.shards = store_shards(self.store, self.indices)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose shuffle the next iteration uses (seen by persistent workers too)."""
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        begin, end = replica_bounds(len(self.indices), self.num_replicas, self.rank, self.drop_last)
        return end - begin

    def segments(self, workers: int = 1, worker: int = 0) -> list[Segment]:
        """The shard segments that worker `worker` of `workers` reads this epoch, in order."""
        return epoch_segments(
            self.shards,
            epoch=self.epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            replicas=self.num_replicas,
            rank=self.rank,
            workers=workers,
            worker=worker,
            drop_last=self.drop_last,
        )

    def iter_rois(
        self, workers: int = 1, worker: int = 0, channels_first: bool = False
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(store index, (S, S, 3) uint8 ROI, or (3, S, S) with `channels_first`) for the ROIs worker `worker`
        of `workers` reads this epoch, untransformed: what `__iter__` and the DALI source
        (`dali_source.RoiSource`, which takes HWC images) build on."""
        rois = iter_segments(self.store, self.segments(workers, worker), channels_first)
        if self.shuffle:
            rois = buffer_shuffle(
                rois, self.buffer_size, random.Random(hash((self.seed, self.epoch, self.rank, worker)))
            )
        return rois

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        for index, roi in self.iter_rois(workers, worker, channels_first=True):
            yield self.item(index, roi)
