"""Crops per ROI: each window resized by itself (the CPU's path) against all windows of a tile in one batched
resize (`crops.resize_all`, CUDA's path), on this machine's CPU, in one run.

    python benchmarks/crop_batch.py --images /work/shared/data/bccd --count 30

The regions of each tile are found once; then rounds alternate the two paths over the same tiles and boxes
(one torch thread, as the filter runs them), the first round untimed; the median ms per ROI of each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from activessf_engine.config import EngineConfig
from activessf_engine.filter.crops import crop_box, cut_rois, resize_all
from activessf_engine.filter.decode import decode_files
from activessf_engine.filter.regions import find_regions
from activessf_engine.filter.sources import find_sources

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=REPO / "tests" / "data" / "bccd")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = EngineConfig()
    paths = [s.path for s in find_sources(args.images, (".jpg", ".jpeg", ".png"))][: args.count]
    tiles = [img.image for img in decode_files(paths, config.input) if img.image is not None]
    boxes = [found.boxes for tile in tiles for found in find_regions([tile], config.filter)]
    windows = [
        np.array([crop_box(tuple(map(int, b)), t.shape[1], t.shape[0], config.crop.margin) for b in bs]).reshape(-1, 4)
        for t, bs in zip(tiles, boxes, strict=True)
    ]
    work = [(t, b, w) for t, b, w in zip(tiles, boxes, windows, strict=True) if len(b)]
    rois = sum(len(b) for _, b, _ in work)
    paths_ = {
        "per window": lambda: [cut_rois(t, b, config.crop) for t, b, _ in work],
        "batched": lambda: [resize_all(t, w, config.crop) for t, _, w in work],
    }
    seconds: dict[str, list[float]] = {name: [] for name in paths_}
    for round_ in range(args.rounds + 1):
        for name, run in paths_.items():
            start = time.perf_counter()
            run()
            if round_:
                seconds[name].append(time.perf_counter() - start)
    print(f"{len(work)} tiles, {rois} ROIs of {config.crop.size} px, median of {args.rounds} rounds, 1 torch thread")
    for name, times in seconds.items():
        print(f"{name:11} {statistics.median(times) * 1000 / rois:8.3f} ms per ROI")


if __name__ == "__main__":
    main()
