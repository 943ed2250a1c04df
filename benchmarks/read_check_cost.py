"""What checking every ROI against its crc32 costs a reader: ms per ROI with and without the check.

    python benchmarks/read_check_cost.py [--rois 1024] [--rounds 7]

A store of 224x224 crops of the sample BCCD tiles (lz4, channels first, shards of 256, as `filter` writes
it) read in the main process, once per round by each of: random order one ROI at a time channels first
(`RoiDataset`'s read), shard order channels first (`ShardedRoiDataset`'s), and whole parts as (S, S, 3)
(`select`'s feature read); each with `RoiStore(check_rois=True)` (the default) and `False`. Rounds interleave
the readers; the table gives the median ms per ROI, the check's added ms per ROI and how much slower it is.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from activessf_engine.config import StoreConfig
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.writer import PartData, StoreWriter

TILES = Path(__file__).resolve().parents[1] / "engine" / "sample_data" / "tiles" / "bccd"
SIZE = 224


def crops(count: int) -> np.ndarray:
    """`count` 224x224 crops of the sample tiles (a grid on each tile, repeated as needed)."""
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(TILES.glob("*.jpg"))]
    grid = [t[y : y + SIZE, x : x + SIZE] for t in tiles for y in (0, 128, 256) for x in (0, 208, 416)]
    return np.stack([grid[i % len(grid)] for i in range(count)])


def build(root: Path, rois: np.ndarray, part_rois: int = 512) -> None:
    parts = [rois[i : i + part_rois] for i in range(0, len(rois), part_rois)]
    plan = [[f"tile{k}.png"] for k in range(len(parts))]
    with StoreWriter.create(root, "candidates", {}, plan, layout=StoreConfig(rois_per_shard=256)) as writer:
        for k, part in enumerate(parts):
            n = len(part)
            columns = {"source": np.zeros(n, np.int32), "box": np.zeros((n, 4), np.int32)}
            writer.commit_part(k, PartData(part, columns, [{"path": plan[k][0], "rois": n}]))


def readers(store: RoiStore) -> dict[str, Callable[[], int]]:
    order = np.random.default_rng(0).permutation(len(store))

    def random_order() -> int:
        for i in order:
            store.roi(int(i), channels_first=True)
        return len(order)

    def shard_order() -> int:
        count = 0
        for part, n in zip(store.parts, np.diff(store.offsets), strict=True):
            count += sum(1 for _ in store.iter_part_rois(part, np.arange(n), channels_first=True))
        return count

    def whole_parts() -> int:
        return sum(len(store.part_rois(part)) for part in store.parts)

    return {
        "random order, (3, S, S)": random_order,
        "shard order, (3, S, S)": shard_order,
        "whole parts, (S, S, 3)": whole_parts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rois", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "store"
        build(root, crops(args.rois))
        runs = {check: readers(RoiStore(root, check_rois=check)) for check in (False, True)}
        times: dict[tuple[str, bool], list[float]] = {}
        for round_ in range(args.rounds + 1):
            for check, named in runs.items():
                for name, read in named.items():
                    start = time.perf_counter()
                    n = read()
                    if round_:  # the first round warms the page cache and the index caches
                        times.setdefault((name, check), []).append((time.perf_counter() - start) * 1e3 / n)
    print(f"{args.rois} ROIs of {SIZE}x{SIZE}, lz4; median of {args.rounds} rounds, ms per ROI, one core")
    print("| read | unchecked | checked | added | slower by |\n| --- | --- | --- | --- | --- |")
    for name in runs[False]:
        plain, checked = (statistics.median(times[(name, c)]) for c in (False, True))
        print(f"| {name} | {plain:.3f} | {checked:.3f} | {checked - plain:.3f} | {checked / plain - 1:.0%} |")


if __name__ == "__main__":
    main()
