"""Cost and cleanliness of cropping, before and after the clean-crops change, side by side in one run.

    python benchmarks/crop_cost.py                                   # 6 BCCD tiles + 300 PBC images
    python benchmarks/crop_cost.py --pbc-count 1745 --json crops.json

Two measures, each with the code of `--baseline` (a git commit from before the layout change; its
engine/crops.py is loaded from git) and with the working tree's, alternating rounds so drift hits both:
- isolated: the regions of every tile are found once, then `cut_rois` (windows, resize, padding) is timed
  on the same tiles and boxes, one torch thread (as the filter runs it);
- in the filter: `run_filter` into a fresh store with one or the other `cut_rois`, its "crops" stage time
  (the stage then competes with the decoder's threads, as in a real run).
It also counts ROIs with padding ("bars") and the share of padded pixels.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from activessf_engine.config import EngineConfig
from activessf_engine.filter import crops
from activessf_engine.filter import part as filter_part_module
from activessf_engine.filter.decode import decode_files
from activessf_engine.filter.regions import find_regions
from activessf_engine.filter.run import run_filter
from activessf_engine.filter.sources import find_sources

REPO = Path(__file__).resolve().parents[1]
BASELINE = "951b822"  # the last commit before clean crops
BCCD = REPO / "tests" / "data" / "bccd"
PBC = REPO.parent / "shared" / "data" / "pbc-longtail" / "unlabeled"


def baseline_module(commit: str) -> ModuleType:
    """engine/crops.py as it was at `commit`, imported under another name."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:engine/crops.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "crops_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("crops_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiles_and_boxes(folder: Path, count: int, config: EngineConfig) -> list[tuple[torch.Tensor, np.ndarray]]:
    paths = [s.path for s in find_sources(folder, (".jpg", ".jpeg", ".png"))][:count]
    if not paths:
        sys.exit(f"no images under {folder}")
    tiles = [img.image for img in decode_files(paths, config.input) if img.image is not None]
    regions = [found.boxes for tile in tiles for found in find_regions([tile], config.filter)]
    return list(zip(tiles, regions, strict=True))


def time_crops(cut, work, config: EngineConfig) -> float:
    start = time.perf_counter()
    for tile, boxes in work:
        cut(tile, boxes, config.crop)
    return time.perf_counter() - start


def filter_crops_seconds(cut, folder: Path, count: int, config: EngineConfig) -> tuple[float, float]:
    """("crops" stage seconds, wall seconds) of a filter run whose parts are cut with `cut`."""
    paths = [s.path for s in find_sources(folder, (".jpg", ".jpeg", ".png"))][:count]
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "inputs.txt"
        listing.write_text("\n".join(str(p) for p in paths))
        real = filter_part_module.cut_rois
        filter_part_module.cut_rois = cut
        try:
            summary = run_filter(listing, Path(tmp) / "store", config)
        finally:
            filter_part_module.cut_rois = real
    return summary.stage_seconds["crops"], summary.wall_seconds


def with_no_padding_column(old: ModuleType):
    """The baseline's cut_rois, returning the padding column today's parts expect (zeros: not recorded then)."""

    def cut(tile, boxes, crop):
        rois, windows = old.cut_rois(tile, boxes, crop)
        return rois, windows, np.zeros((len(boxes), 4), np.int64)

    return cut


def bars(cut, work, config: EngineConfig, new: bool) -> tuple[int, float]:
    """ROIs with padding, and the share of all ROI pixels that are padding."""
    padded, pixels = 0, 0
    size = config.crop.size
    for tile, boxes in work:
        result = cut(tile, boxes, config.crop)
        if new:
            pad = result[2]
            heights, widths = size - pad[:, 1] - pad[:, 3], size - pad[:, 0] - pad[:, 2]
        else:  # the old windows were boxes clipped to the tile, resized with their aspect ratio kept
            w, h = result[1][:, 2] - result[1][:, 0], result[1][:, 3] - result[1][:, 1]
            scale = size / np.maximum(w, h)
            widths, heights = np.maximum(1, np.round(w * scale)), np.maximum(1, np.round(h * scale))
        padded += int(((widths < size) | (heights < size)).sum())
        pixels += int((size * size - widths * heights).sum())
    total = sum(len(b) for _, b in work) * size * size
    return padded, pixels / total if total else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="git commit of the crops to compare with")
    parser.add_argument("--pbc", type=Path, default=PBC, help="folder of PBC images")
    parser.add_argument("--pbc-count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--filter-rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = EngineConfig()
    old = baseline_module(args.baseline)
    sets = {"BCCD tiles, 640x480": (BCCD, 6), "PBC unlabeled, 360x363": (args.pbc, args.pbc_count)}
    results = []
    for name, (folder, count) in sets.items():
        work = tiles_and_boxes(folder, count, config)
        rois = sum(len(b) for _, b in work)
        before, after = [], []
        for _ in range(args.rounds):
            before.append(time_crops(old.cut_rois, work, config))
            after.append(time_crops(crops.cut_rois, work, config))
        in_filter = {"before": [], "after": []}
        for _ in range(args.filter_rounds):
            in_filter["before"].append(filter_crops_seconds(with_no_padding_column(old), folder, count, config))
            in_filter["after"].append(filter_crops_seconds(crops.cut_rois, folder, count, config))
        old_padded, old_share = bars(old.cut_rois, work, config, new=False)
        new_padded, new_share = bars(crops.cut_rois, work, config, new=True)
        results.append(
            {
                "set": name,
                "tiles": len(work),
                "rois": rois,
                "before_s": statistics.median(before),
                "after_s": statistics.median(after),
                "filter_before_crops_s": statistics.median(c for c, _ in in_filter["before"]),
                "filter_after_crops_s": statistics.median(c for c, _ in in_filter["after"]),
                "filter_before_wall_s": statistics.median(w for _, w in in_filter["before"]),
                "filter_after_wall_s": statistics.median(w for _, w in in_filter["after"]),
                "before_padded_rois": old_padded,
                "after_padded_rois": new_padded,
                "before_padded_pixels": old_share,
                "after_padded_pixels": new_share,
            }
        )
    print(f"crop stage (cut_rois), median of {args.rounds} rounds, 1 torch thread; baseline {args.baseline}")
    print(
        f"{'set':34} {'tiles':>6} {'ROIs':>6} {'before s':>9} {'after s':>8} {'speedup':>8} "
        f"{'padded ROIs before/after':>25} {'pad px before/after':>20}"
    )
    for r in results:
        print(
            f"{r['set']:34} {r['tiles']:6d} {r['rois']:6d} {r['before_s']:9.3f} {r['after_s']:8.3f} "
            f"{r['before_s'] / r['after_s']:7.2f}x {r['before_padded_rois']:12d} / {r['after_padded_rois']:<10d} "
            f"{100 * r['before_padded_pixels']:8.2f}% / {100 * r['after_padded_pixels']:.2f}%"
        )
    print(f"\nin the filter (run_filter, default config), median of {args.filter_rounds} runs")
    print(f"{'set':34} {'crops before s':>15} {'crops after s':>14} {'wall before s':>14} {'wall after s':>13}")
    for r in results:
        print(
            f"{r['set']:34} {r['filter_before_crops_s']:15.3f} {r['filter_after_crops_s']:14.3f} "
            f"{r['filter_before_wall_s']:14.2f} {r['filter_after_wall_s']:13.2f}"
        )
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
