"""Tiles/s read from a whole slide vs the same tiles decoded from JPEG files, side by side in one run.

    python benchmarks/slide_read.py                          # a 8192x6144 slide of BCCD smears, tiles of 1024
    python benchmarks/slide_read.py --size 16384x12288 --tile 2048 --rounds 5 --json slide_read.json

The slide is a mosaic of real BCCD smears written as a pyramidal tiled TIFF with JPEG tiles of 256 (as a
scanner writes them, quality 90); its tiles are planned by the engine (`slides.expand_slides`, every tile,
no overlap) and the same windows are written as JPEG files of the same quality. Each round times, in turn:
the slide read by each installed reader (`slides.read_tile_batches`, one thread and all threads) and the
files decoded by the engine's decoder (`decode.decode_batches`, DALI on the CPU). Tables give medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

from activessf_engine.config import InputConfig
from activessf_engine.filter.decode import decode_batches, make_decoder
from activessf_engine.filter.slide_readers import list_slide_readers
from activessf_engine.filter.slides import expand_slides, read_tile_batches
from activessf_engine.filter.sources import Source, find_sources

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = [REPO.parent / "shared" / "data" / "bccd" / "JPEGImages", REPO / "tests" / "data" / "bccd"]
QUALITY = 90


def mosaic(images: Path, width: int, height: int) -> np.ndarray:
    """BCCD smears laid edge to edge (cycling through the folder) to fill width x height."""
    paths = [s.path for s in find_sources(images, (".jpg",))]
    if not paths:
        sys.exit(f"no .jpg images under {images}")
    canvas = np.empty((height, width, 3), np.uint8)
    k = 0
    for y in range(0, height, 480):
        for x in range(0, width, 640):
            tile = np.asarray(Image.open(paths[k % len(paths)]).convert("RGB"))
            h, w = min(480, height - y), min(640, width - x)
            canvas[y : y + h, x : x + w] = tile[:h, :w]
            k += 1
    return canvas


def write_slide(path: Path, image: np.ndarray, levels: int = 4) -> None:
    """A pyramidal TIFF, levels in the main IFD chain (read by tifffile and OpenSlide), JPEG tiles of 256."""
    options = {
        "tile": (256, 256),
        "compression": "jpeg",
        "compressionargs": {"level": QUALITY},
        "photometric": "rgb",
        "metadata": None,
    }
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        plane = image
        for k in range(levels):
            per_cm = 1e4 / (0.25 * 2**k)
            tw.write(
                plane, subfiletype=1 if k else 0, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", **options
            )
            plane = plane[::2, ::2]


def time_slide(tiles: list[Source], config: InputConfig) -> float:
    start = time.perf_counter()
    count = sum(len(batch) for batch in read_tile_batches(tiles, config, torch.device("cpu")))
    return count / (time.perf_counter() - start)


def time_files(paths: list[Path], config: InputConfig, decoder) -> float:
    start = time.perf_counter()
    count = sum(len(batch) for batch in decode_batches(paths, config, "cpu", decoder))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=next((p for p in DEFAULT_IMAGES if p.exists()), None))
    parser.add_argument("--size", default="8192x6144", help="slide level 0, WxH")
    parser.add_argument("--tile", type=int, default=1024, help="slide tile side (input.slide_tile)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = mosaic(args.images, width, height)
        slide = folder / "slide" / "smear.tif"
        slide.parent.mkdir()
        write_slide(slide, image)
        plan = InputConfig(slide_tile=args.tile, slide_overlap=0, min_tissue=0, batch_size=args.batch_size)
        tiles, _ = expand_slides([Source(slide.name, slide)], plan)
        files = []
        for tile in tiles:
            x0, y0, x1, y1 = tile.tile.window
            files.append(folder / f"{x0:06d}_{y0:06d}.jpg")
            Image.fromarray(image[y0:y1, x0:x1]).save(files[-1], quality=QUALITY)
        del image
        megapixels = sum((t.tile.window[2] - t.tile.window[0]) * (t.tile.window[3] - t.tile.window[1]) for t in tiles)
        megapixels /= 1e6

        runs: dict[str, list[float]] = {}
        decoder = make_decoder(args.batch_size, 0, "cpu")
        readers = [r for r in ("tifffile", "openslide") if r in list_slide_readers()]
        for _ in range(args.rounds):
            for reader in readers:
                for threads in sorted({1, cores}):
                    config = InputConfig(batch_size=args.batch_size, threads=threads)
                    read = [replace(t, tile=replace(t.tile, reader=reader)) for t in tiles]
                    runs.setdefault(f"slide, {reader}, {threads} thread(s)", []).append(time_slide(read, config))
            config = InputConfig(batch_size=args.batch_size)
            runs.setdefault(f"JPEG files, {decoder.name}, {cores} thread(s)", []).append(
                time_files(files, config, decoder)
            )

    table = {name: statistics.median(values) for name, values in runs.items()}
    print(f"{len(tiles)} tiles of {args.tile}x{args.tile} from a {width}x{height} slide (JPEG q{QUALITY} tiles of 256)")
    print(f"{'source':<44} {'tiles/s':>9} {'MP/s':>8}")
    for name, rate in table.items():
        print(f"{name:<44} {rate:>9.2f} {rate * megapixels / len(tiles):>8.1f}")
    if args.json:
        result = {
            "slide_size": [width, height],
            "tile": args.tile,
            "tiles": len(tiles),
            "rounds": args.rounds,
            "tiles_per_second": {k: round(v, 3) for k, v in table.items()},
            "all_runs": runs,
            "machine": {"cores": cores, "platform": platform.platform(), "python": platform.python_version()},
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
