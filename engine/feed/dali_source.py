"""A DALI external source over a ROI store, and a pipeline that feeds it to DALI's augmentations.

Many SSL codebases augment on the GPU with DALI. `RoiSource` hands DALI batches of ROIs read in shard
order (the `ShardedRoiDataset` plan: shuffled shards, a buffer shuffle, each ROI once per epoch across
`num_shards`), and `roi_pipeline` declares a pipeline around it. `device_id=None` is DALI's CPU-only
pipeline; with a device id the augmentations run on that GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from activessf_engine.feed.datasets import ShardedRoiDataset
from activessf_engine.feed.query import RoiQuery


class RoiSource:
    """An iterable of batches for ``fn.external_source(source=..., batch=True, num_outputs=2, cycle="raise")``.

    Each iteration is one epoch: lists of (S, S, 3) uint8 ROIs and of their (1,) int64 store indices, in
    batches of `batch_size` (the last one smaller). The epoch advances with every new iteration (a
    pipeline `reset()`), or is set with `set_epoch`. `shard_id` / `num_shards` follow DALI's readers.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        *,
        query: RoiQuery | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 1024,
        shard_id: int = 0,
        num_shards: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.dataset = ShardedRoiDataset(
            root,
            query=query,
            shuffle=shuffle,
            seed=seed,
            buffer_size=buffer_size,
            num_replicas=num_shards,
            rank=shard_id,
        )
        self._next_epoch = 0

    def __len__(self) -> int:
        """ROIs per epoch of this shard."""
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def __iter__(self) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
        self.dataset.set_epoch(self._next_epoch)
        self._next_epoch += 1
        images: list[np.ndarray] = []
        indices: list[np.ndarray] = []
        for index, roi in self.dataset.iter_rois():
            images.append(roi)
            indices.append(np.array([index], dtype=np.int64))
            if len(images) == self.batch_size:
                yield images, indices
                images, indices = [], []
        if images:
            yield images, indices


def roi_pipeline(
    source: RoiSource,
    *,
    device_id: int | None = None,
    num_threads: int = 2,
    mean: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255),
    std: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255),
    seed: int = 0,
):
    """A built DALI pipeline: ROIs from `source`, a random horizontal flip, normalized to float CHW.

    Outputs (images (B, 3, S, S) float32, indices (B, 1) int64). `device_id=None` runs on the CPU only;
    an int runs the augmentations on that GPU (ROIs are copied there once per batch). Run it until
    StopIteration (the end of an epoch), then `reset()` for the next epoch. Replace the augmentations with
    your trainer's by writing your own `@pipeline_def` around `fn.external_source(source=RoiSource(...))`.
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=source.batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def pipeline():
        images, indices = fn.external_source(
            source=source,
            num_outputs=2,
            batch=True,
            cycle="raise",
            layout=["HWC", ""],
            dtype=[types.UINT8, types.INT64],
        )
        if device_id is not None:
            images = images.gpu()
        images = fn.crop_mirror_normalize(
            images, mirror=fn.random.coin_flip(), mean=list(mean), std=list(std), dtype=types.FLOAT, output_layout="CHW"
        )
        return images, indices

    built = pipeline()
    built.build()
    return built
