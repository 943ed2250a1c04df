"""The datasets over a store: random access, shard order (replicas, workers, epochs) and metadata queries."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import selected_store, synthetic_store

from activessf_engine.feed.datasets import RoiDataset, ShardedRoiDataset
from activessf_engine.feed.query import RoiQuery, query_rows
from activessf_engine.feed.shard_order import epoch_segments, store_shards
from activessf_engine.store.reader import RoiStore

COUNTS = (7, 0, 9, 5)  # 21 ROIs in 4 parts, one of them empty; shards of 4 ROIs


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return synthetic_store(tmp_path / "store", COUNTS)


def _collect(loader) -> dict[int, torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for images, meta in loader:
        for image, index in zip(images, meta["roi"].tolist(), strict=True):
            assert index not in seen, f"ROI {index} read twice"
            seen[index] = image
    return seen


def test_sharded_dataset_reads_every_roi_once_with_its_pixels(store: Path) -> None:
    dataset = ShardedRoiDataset(store, with_meta=True, buffer_size=5)
    rois = RoiStore(store)
    items = list(dataset)
    assert len(dataset) == len(items) == len(rois) == sum(COUNTS)
    order = [meta["roi"] for _, meta in items]
    assert sorted(order) == list(range(len(rois))) and order != sorted(order)
    for image, meta in items:
        assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
        assert np.array_equal(image.permute(1, 2, 0).numpy(), rois.roi(meta["roi"]))
        assert meta["source"] == str(rois.columns()["source_path"][meta["roi"]]) and meta["pad"] == [0, 0, 0, 0]


def test_shards_are_whole_and_shuffled_by_epoch(store: Path) -> None:
    rois = RoiStore(store)
    shards = store_shards(rois, np.arange(len(rois)))
    assert [(s.part, s.start, s.stop) for s in shards] == [
        (0, 0, 4),
        (0, 4, 7),
        (2, 0, 4),
        (2, 4, 8),
        (2, 8, 9),
        (3, 0, 4),
        (3, 4, 5),
    ]
    orders = [[s.start + 100 * s.part for s in epoch_segments(shards, epoch=e, seed=0, shuffle=True)] for e in range(3)]
    assert len({tuple(o) for o in orders}) == 3  # another shard order each epoch
    assert all(sorted(o) == sorted(orders[0]) for o in orders)
    unshuffled = epoch_segments(shards, epoch=5, seed=0, shuffle=False)
    assert [(s.part, s.start) for s in unshuffled] == [(s.part, s.start) for s in shards]


def test_two_replicas_with_two_workers_read_every_roi_once_per_epoch(store: Path) -> None:
    datasets = [ShardedRoiDataset(store, with_meta=True, num_replicas=2, rank=r, buffer_size=3) for r in (0, 1)]
    loaders = [torch.utils.data.DataLoader(d, batch_size=3, num_workers=2, persistent_workers=True) for d in datasets]
    epochs = []
    for epoch in range(2):
        seen: dict[int, torch.Tensor] = {}
        for dataset, loader in zip(datasets, loaders, strict=True):
            dataset.set_epoch(epoch)
            mine = _collect(loader)
            assert len(mine) == len(dataset) in (10, 11)
            assert not set(mine) & set(seen), "a ROI read by both replicas"
            seen.update(mine)
        assert sorted(seen) == list(range(sum(COUNTS)))
        rois = RoiStore(store)
        assert all(np.array_equal(seen[i].permute(1, 2, 0).numpy(), rois.roi(i)) for i in seen)
        epochs.append([sorted(_collect_ids(d)) for d in datasets])
    assert epochs[0] != epochs[1]  # persistent workers followed set_epoch: another split of the shards


def _collect_ids(dataset: ShardedRoiDataset) -> list[int]:
    return [meta["roi"] for _, meta in dataset]


def test_drop_last_gives_every_replica_the_same_count(store: Path) -> None:
    seen = Counter()
    for rank in range(4):
        dataset = ShardedRoiDataset(store, with_meta=True, num_replicas=4, rank=rank, drop_last=True)
        ids = _collect_ids(dataset)
        assert len(ids) == len(dataset) == sum(COUNTS) // 4
        seen.update(ids)
    assert max(seen.values()) == 1 and len(seen) == 4 * (sum(COUNTS) // 4)


def test_unshuffled_order_is_store_order(store: Path) -> None:
    assert _collect_ids(ShardedRoiDataset(store, with_meta=True, shuffle=False)) == list(range(sum(COUNTS)))


def test_queries_read_only_matching_rois(store: Path, tmp_path: Path) -> None:
    rois = RoiStore(store)
    paths = rois.columns()["source_path"].astype(str)
    held_out = query_rows(rois, RoiQuery(exclude_sources=("pat1/*",)))
    assert len(held_out) and all(not paths[i].startswith("pat1/") for i in held_out)
    assert len(held_out) + len(query_rows(rois, RoiQuery(sources=("pat1/*",)))) == len(rois)
    only_b = query_rows(rois, RoiQuery(sources=("*b.png",), exclude_sources=("pat0/*",)))
    assert len(only_b) and all(paths[i].endswith("b.png") and paths[i].startswith("pat1/") for i in only_b)

    selected = selected_store(tmp_path / "selected", np.arange(sum(COUNTS)) % 4 != 0)  # cluster i % 3
    kept = query_rows(rois, RoiQuery(selected_by=selected))
    assert kept.tolist() == [i for i in range(len(rois)) if i % 4]
    assert query_rows(rois, RoiQuery(selected_by=selected, clusters=(1,))).tolist() == [
        i for i in range(len(rois)) if i % 4 and i % 3 == 1
    ]
    sel = RoiStore(selected)
    in_cluster = query_rows(sel, RoiQuery(clusters=(0, 2)))
    assert len(in_cluster) and set(sel.columns()["cluster"][in_cluster].tolist()) == {0, 2}
    assert len(in_cluster) + len(query_rows(sel, RoiQuery(clusters=(1,)))) == len(sel)

    with pytest.raises(ValueError, match="without clusters"):
        query_rows(rois, RoiQuery(clusters=(1,)))
    with pytest.raises(ValueError, match="selected_by needs"):
        query_rows(rois, RoiQuery(selected_by=store))
    with pytest.raises(ValueError, match="glob patterns"):
        RoiQuery(sources="pat1/*")
    other = synthetic_store(tmp_path / "other", (3, 4))
    with pytest.raises(ValueError, match="selected from another store"):
        query_rows(RoiStore(other), RoiQuery(selected_by=selected))


def test_datasets_apply_a_query(store: Path, tmp_path: Path) -> None:
    query = RoiQuery(exclude_sources=("pat1/*",))
    expected = query_rows(RoiStore(store), query).tolist()
    mapped = RoiDataset(store, with_meta=True, query=query)
    assert len(mapped) == len(expected) and [mapped[i][1]["roi"] for i in range(len(mapped))] == expected
    assert np.array_equal(mapped[-1][0].permute(1, 2, 0).numpy(), RoiStore(store).roi(expected[-1]))
    with pytest.raises(IndexError):
        mapped[len(expected)]
    sharded = ShardedRoiDataset(store, with_meta=True, query=query)
    assert len(sharded) == len(expected) and sorted(_collect_ids(sharded)) == expected
