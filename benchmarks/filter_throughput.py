"""Decode-only vs full Cell Region Filtering throughput, side by side in one run, on the same images.

    python benchmarks/filter_throughput.py                       # 640x480 BCCD tiles, CPU
    python benchmarks/filter_throughput.py --size 2048x2048      # tiles made by resizing them
    python benchmarks/filter_throughput.py --device cuda --json out.json
    python benchmarks/filter_throughput.py --count 512 --processes 1,2   # filter worker processes
    python benchmarks/filter_throughput.py --config calibrated.toml      # the filter a config file sets

Each round times (a) decode-only: the engine's decoder over every file (probe + batched decode), and
(b) the full filter: `run_filter` into a fresh store (decode, filter, crops, Zarr writes), once per
count of filter worker processes asked for (`input.processes`; their start is part of the time). Rounds
alternate so drift hits all; the table gives medians, each filter's ratio to decode-only (target on the
CPU: >= 0.30 at 640x480) and to the first filter row, and the per-stage times per image of the first
(with several processes, the workers' times are summed: CPU-seconds, not wall).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from activessf_engine.config import InputConfig, load_config, replace_section
from activessf_engine.filter.decode import decode_files, make_decoder
from activessf_engine.filter.run import run_filter
from activessf_engine.filter.sources import find_sources
from activessf_engine.store.layout import configure_zarr

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = [REPO.parent / "shared" / "data" / "bccd" / "JPEGImages", REPO / "tests" / "data" / "bccd"]


def prepare_images(source: Path, count: int, size: str | None, folder: Path) -> list[Path]:
    """`count` JPEG tiles in `folder`: copies of the source images, or resized to WxH."""
    originals = [s.path for s in find_sources(source, (".jpg", ".jpeg", ".png"))]
    if not originals:
        sys.exit(f"no images under {source}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = originals[i % len(originals)]
        dst = folder / f"tile_{i:05d}.jpg"
        if size:
            width, height = (int(v) for v in size.lower().split("x"))
            with Image.open(src) as img:
                img.convert("RGB").resize((width, height), Image.BILINEAR).save(dst, quality=90)
        else:
            shutil.copyfile(src, dst)
        paths.append(dst)
    return paths


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def main() -> None:
    configure_zarr()  # as the CLI does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=next((p for p in DEFAULT_IMAGES if p.exists()), None))
    parser.add_argument("--count", type=int, default=128, help="tiles per round")
    parser.add_argument("--size", default=None, help="resize tiles to WxH (e.g. 2048x2048); default: as they are")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=InputConfig.batch_size)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--processes", default="1", help="filter worker processes, one filter row per count: 1,2")
    parser.add_argument("--config", type=Path, help="a TOML config to filter with (e.g. one `calibrate` wrote)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = replace_section(load_config(args.config), "input", batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="activessf-bench-") as tmp:
        tiles = Path(tmp) / "tiles"
        paths = prepare_images(args.images, args.count, args.size, tiles)
        with Image.open(paths[0]) as img:
            width, height = img.size
        megapixels = len(paths) * width * height / 1e6
        decoder = make_decoder(config.input.batch_size, config.input.threads, device)
        # warm-up: decoder, numba/CUDA kernels, allocator
        list(decode_files(paths[:8], config.input, device, decoder))
        run_filter(tiles, Path(tmp) / "warm", config, device=device)
        counts = [int(v) for v in args.processes.split(",")]
        decode_s, stages, decoders = [], [], {}
        filter_s: dict[int, list[float]] = {count: [] for count in counts}
        for r in range(args.rounds):
            start = time.perf_counter()
            decoded = list(decode_files(paths, config.input, device, decoder))
            if device.type == "cuda":
                torch.cuda.synchronize()
            decode_s.append(time.perf_counter() - start)
            assert all(d.image is not None for d in decoded), "benchmark tiles must decode"
            for count in counts:
                run_config = replace_section(config, "input", processes=count)
                summary = run_filter(tiles, Path(tmp) / f"store{r}-{count}", run_config, device=device)
                filter_s[count].append(summary.wall_seconds)
                if count == counts[0]:
                    stages.append(summary.stage_seconds)
                    decoders = summary.decoders

    n = len(paths)
    dec = statistics.median(decode_s)
    fil = {count: statistics.median(seconds) for count, seconds in filter_s.items()}
    stage_ms = {k: 1000 * statistics.median(s.get(k, 0.0) for s in stages) / n for k in stages[0]}
    rows = {
        f"filter_{count}p": {
            "processes": count,
            "seconds": seconds,
            "images_per_s": n / seconds,
            "megapixels_per_s": megapixels / seconds,
            "over_decode_only": dec / seconds,
            "over_first_filter": fil[counts[0]] / seconds,
        }
        for count, seconds in fil.items()
    }
    result = {
        "device": device_name(device),
        "decoder": decoder.name,
        "decoders_in_filter": decoders,
        "tile": f"{width}x{height}",
        "images": n,
        "batch_size": config.input.batch_size,
        "config": str(args.config or "defaults"),
        "rounds": args.rounds,
        "decode_only": {"seconds": dec, "images_per_s": n / dec, "megapixels_per_s": megapixels / dec},
        **rows,
        "filter_over_decode": dec / fil[counts[0]],
        "stage_ms_per_image": stage_ms,
        "all_rounds": {"decode_s": decode_s, "filter_s": filter_s},
    }
    print(f"device      {result['device']}")
    print(f"decoder     {result['decoder']}   tiles {n} x {result['tile']}   batch {result['batch_size']}")
    print(f"{'':<14}{'images/s':>10}{'MP/s':>10}{'/ decode':>10}{'/ first':>9}")
    print(f"{'decode_only':<14}{n / dec:>10.1f}{megapixels / dec:>10.2f}")
    for key, row in rows.items():
        print(
            f"{key:<14}{row['images_per_s']:>10.1f}{row['megapixels_per_s']:>10.2f}"
            f"{row['over_decode_only']:>10.3f}{row['over_first_filter']:>9.2f}"
        )
    print(f"stages of filter_{counts[0]}p (ms per image; decode overlaps the filter):")
    for stage, ms in stage_ms.items():
        print(f"  {stage:<14}{ms:>8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
