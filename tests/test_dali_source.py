"""The DALI external source over a store, run in DALI's CPU-only pipeline (device_id=None)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_store

from activessf_engine.feed.dali_source import RoiSource, roi_pipeline
from activessf_engine.feed.query import RoiQuery
from activessf_engine.store.reader import RoiStore

pytest.importorskip("nvidia.dali")

MEAN, STD = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)


def _epoch(pipe) -> tuple[list[int], list[np.ndarray]]:
    indices, images = [], []
    while True:
        try:
            batch_images, batch_indices = pipe.run()
        except StopIteration:
            pipe.reset()
            return indices, images
        for k in range(len(batch_indices)):
            indices.append(int(np.asarray(batch_indices[k])[0]))
            images.append(np.asarray(batch_images[k]))


def test_cpu_pipeline_reads_every_roi_once_per_epoch(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "store", (7, 0, 9, 5))
    rois = RoiStore(store)
    pipe = roi_pipeline(
        RoiSource(store, batch_size=4, buffer_size=3), device_id=None, num_threads=1, mean=MEAN, std=STD
    )
    orders = []
    for _ in range(2):
        indices, images = _epoch(pipe)
        assert sorted(indices) == list(range(len(rois)))
        for index, image in zip(indices, images, strict=True):
            assert image.shape == (3, 16, 16) and image.dtype == np.float32
            restored = (image.transpose(1, 2, 0) * STD + MEAN).round().astype(np.uint8)
            stored = rois.roi(index)
            assert np.array_equal(restored, stored) or np.array_equal(restored, stored[:, ::-1])  # random flip
        orders.append(indices)
    assert orders[0] != orders[1]  # a new shuffle each epoch


def test_sources_split_between_dali_shards_and_apply_a_query(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "store", (7, 0, 9, 5))
    query = RoiQuery(sources=("pat0/*",))
    seen = []
    for shard in range(2):
        source = RoiSource(store, batch_size=5, query=query, shard_id=shard, num_shards=2)
        batches = list(source)
        assert all(len(images) <= 5 for images, _ in batches)
        mine = [int(i[0]) for _, indices in batches for i in indices]
        assert len(mine) == len(source)
        seen += mine
    paths = RoiStore(store).columns()["source_path"].astype(str)
    assert sorted(seen) == [i for i, p in enumerate(paths) if p.startswith("pat0/")]
