"""The shard writer writes the files zarr-python writes for the same part, byte for byte, and zarr reads them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import bccd_crops

from activessf_engine.config import StoreConfig
from activessf_engine.store import ROI_COLUMNS, PartData
from activessf_engine.store.shard_reader import ShardReader
from activessf_engine.store.writer import _write_group

ROOT = Path(__file__).resolve().parents[1]


def zarr_writer():
    """`write_with_zarr` of benchmarks/write_cost.py: the part written through zarr-python, the path replaced."""
    spec = importlib.util.spec_from_file_location("write_cost", ROOT / "benchmarks" / "write_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_with_zarr


def part(n: int, seed: int = 0) -> PartData:
    """`n` real crops (64 px, some all zero: not stored) with columns of every dtype, some all zero."""
    rng = np.random.default_rng(seed)
    crops = bccd_crops()[rng.integers(0, 54, n)][:, ::3, ::3].copy() if n else np.zeros((0, 75, 75, 3), np.uint8)
    crops[2::5] = 0  # chunks holding only the fill value, as zarr leaves them out
    columns = {name: rng.normal(0, 100, (n, *shape)).astype(dtype) for name, (dtype, shape) in ROI_COLUMNS.items()}
    columns["pad"][:] = 0  # a column of zeros: zarr writes no chunk for it
    if n:
        columns["fill_rate"][0] = -0.0  # zarr compares a float column with its fill value bit for bit
    return PartData(crops, columns, [{"path": "a.jpg", "rois": n, "error": None}, {"path": "b.jpg", "width": 1.5}])


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
@pytest.mark.parametrize(
    ("n", "rois_per_shard", "threads"),
    [(23, 5, 1), (23, 5, 3), (10, 5, 2), (10, 256, 1), (1, 4, 1), (5, 1, 2), (0, 256, 1)],
    ids=["partial-last-shard", "partial-3-threads", "whole-shards", "one-shard", "one-roi", "shard-per-roi", "empty"],
)
def test_writes_what_zarr_writes(tmp_path, codec, n, rois_per_shard, threads) -> None:
    data = part(n)
    layout = StoreConfig(codec=codec, rois_per_shard=rois_per_shard, write_threads=threads)
    attrs = {"part": 3, "note": "ü", "ratio": 0.25}
    _write_group(tmp_path / "ours", data, attrs, layout)
    zarr_writer()(tmp_path / "zarr", data, attrs, layout)

    ours, theirs = files(tmp_path / "ours"), files(tmp_path / "zarr")
    assert sorted(ours) == sorted(theirs)  # the same files: chunks and shards of zeros left out alike
    for name in theirs:
        if name.endswith("zarr.json"):  # the metadata as zarr writes it, text and all
            assert json.loads(ours[name]) == json.loads(theirs[name]), name
        assert ours[name] == theirs[name], name

    group = zarr.open_group(str(tmp_path / "ours"), mode="r")
    assert np.array_equal(group["rois"][:], data.rois)  # zarr reads it back, bit for bit
    for name, col in data.columns.items():
        got = group[name][:]
        assert got.dtype == col.dtype and got.tobytes() == col.tobytes(), name
    reader = ShardReader.open(tmp_path / "ours" / "rois")
    assert reader is not None and np.array_equal(reader.read(np.arange(n)), data.rois)
