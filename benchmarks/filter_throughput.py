"""Decode-only vs full Cell Region Filtering throughput, side by side in one run, on the same images.

    python benchmarks/filter_throughput.py                       # 640x480 BCCD tiles, CPU
    python benchmarks/filter_throughput.py --size 2048x2048      # tiles made by resizing them
    python benchmarks/filter_throughput.py --device cuda --json out.json

Each round times (a) decode-only: the engine's decoder over every file (probe + batched decode), and
(b) the full filter: `run_filter` into a fresh store (decode, filter, crops, Zarr writes). Rounds
alternate a/b so drift hits both; the table gives medians, their ratio (target on the CPU: filter
>= 25% of decode-only), and the filter's per-stage times per image.
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

from activessf_engine.config import EngineConfig, InputConfig, replace_section
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
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = replace_section(EngineConfig(), "input", batch_size=args.batch_size)
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
        decode_s, filter_s, stages, decoders = [], [], [], {}
        for r in range(args.rounds):
            start = time.perf_counter()
            decoded = list(decode_files(paths, config.input, device, decoder))
            if device.type == "cuda":
                torch.cuda.synchronize()
            decode_s.append(time.perf_counter() - start)
            assert all(d.image is not None for d in decoded), "benchmark tiles must decode"
            summary = run_filter(tiles, Path(tmp) / f"store{r}", config, device=device)
            filter_s.append(summary.wall_seconds)
            stages.append(summary.stage_seconds)
            decoders = summary.decoders

    n = len(paths)
    dec, fil = statistics.median(decode_s), statistics.median(filter_s)
    stage_ms = {k: 1000 * statistics.median(s.get(k, 0.0) for s in stages) / n for k in stages[0]}
    result = {
        "device": device_name(device),
        "decoder": decoder.name,
        "decoders_in_filter": decoders,
        "tile": f"{width}x{height}",
        "images": n,
        "batch_size": config.input.batch_size,
        "rounds": args.rounds,
        "decode_only": {"seconds": dec, "images_per_s": n / dec, "megapixels_per_s": megapixels / dec},
        "filter": {"seconds": fil, "images_per_s": n / fil, "megapixels_per_s": megapixels / fil},
        "filter_over_decode": (n / fil) / (n / dec),
        "stage_ms_per_image": stage_ms,
        "all_rounds": {"decode_s": decode_s, "filter_s": filter_s},
    }
    print(f"device      {result['device']}")
    print(f"decoder     {result['decoder']}   tiles {n} x {result['tile']}   batch {result['batch_size']}")
    print(f"{'':<12}{'images/s':>10}{'MP/s':>10}")
    for key in ("decode_only", "filter"):
        row = result[key]
        print(f"{key:<12}{row['images_per_s']:>10.1f}{row['megapixels_per_s']:>10.2f}")
    print(f"ratio       filter / decode-only = {result['filter_over_decode']:.3f}")
    print("stages (ms per image, filter run; decode runs in a background thread, overlapped):")
    for stage, ms in stage_ms.items():
        print(f"  {stage:<14}{ms:>8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
