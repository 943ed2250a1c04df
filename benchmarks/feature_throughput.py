"""Throughput of the two per-candidate costs of Active Sample Selection: feature extraction and
nearest-prototype assignment, over a sweep of batch sizes and compute dtypes.

What is measured, for every (dtype, batch size) of the sweep:

- ``host``: `features.iter_extract` over uint8 ROIs held in host memory (the engine's path once a store
  has been read: pinning, the copy to the device, normalization and the forward pass), in ROIs/s.
- ``device`` (CUDA only): the model's forward pass alone on normalized tensors already on the GPU, in
  ROIs/s: the ceiling that ``host`` approaches.
- ``compiled`` (``--compile``): the ``device`` measurement with ``torch.compile(model)``, for the first
  dtype and the largest batch size only; its compile time (the first call) is reported apart.

Then nearest-prototype assignment (Eq. 7): `select.nearest_prototype` of ``--assign-count`` random
2048-d features against ``--clusters`` centres on ``--device``, best of ``--repeats``.

The weights do not change the cost, so the default is an untrained resnet50 (``--weights random``). The
first batch of every measurement is a warm-up (cuDNN autotuning, allocator) and is not timed.

    python benchmarks/feature_throughput.py                                   # CPU, batch 64, float32
    python benchmarks/feature_throughput.py --device cuda --batch-sizes 64,256,1024 \\
        --dtypes bfloat16,float32 --compile --json out.json

Prints one table row per measurement; ``--json`` writes them with the settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activessf_engine.config import FeatureConfig
from activessf_engine.select.features import Backbone, iter_extract, load_backbone, prepare_batch
from activessf_engine.select.nearest import nearest_prototype


def device_name(device: torch.device) -> str:
    """A human-readable name of the device: the GPU's name, or the CPU's with the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} torch threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_host_path(backbone: Backbone, rois: np.ndarray, batch_size: int) -> float:
    """ROIs/s of `iter_extract` over host uint8 ROIs, the first batch excluded (warm-up)."""
    batches = [rois[i : i + batch_size] for i in range(0, len(rois), batch_size)]
    if len(batches) < 2:
        raise ValueError(f"{len(rois)} ROIs give fewer than 2 batches of {batch_size}; nothing left to time")
    start = None
    for index, _ in enumerate(iter_extract(backbone, batches)):
        if index == 0:  # iter_extract returns host arrays, so the warm-up batch is finished here
            start = time.perf_counter()
    return (len(rois) - len(batches[0])) / (time.perf_counter() - start)


def time_forward(backbone: Backbone, model: torch.nn.Module, pixels: torch.Tensor, rounds: int) -> tuple[float, float]:
    """(seconds of the first call, ROIs/s of the next `rounds` calls) of `model` on prepared `pixels`."""
    half = backbone.dtype == torch.bfloat16
    with torch.inference_mode(), torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=half):
        start = time.perf_counter()
        model(pixels)
        _sync(backbone.device)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(rounds):
            model(pixels)
        _sync(backbone.device)
    return first, rounds * len(pixels) / (time.perf_counter() - start)


def bench_features(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    count = max(args.count, 3 * max(batch_sizes))
    rois = rng.integers(0, 256, size=(count, args.roi_size, args.roi_size, 3), dtype=np.uint8)
    rows = []
    for dtype in args.dtypes.split(","):
        config = FeatureConfig(model=args.model, weights=args.weights, dtype=dtype)
        backbone = load_backbone(config, device)
        for batch_size in batch_sizes:
            row = {
                "dtype": dtype,
                "batch_size": batch_size,
                "host_rois_per_s": time_host_path(backbone, rois, batch_size),
            }
            if device.type == "cuda":
                pixels = prepare_batch(backbone, rois[:batch_size])
                row["device_rois_per_s"] = time_forward(backbone, backbone.model, pixels, args.rounds)[1]
            rows.append(row)
            print(_format_row(row), flush=True)
        if args.compile and device.type == "cuda" and dtype == args.dtypes.split(",")[0]:
            batch_size = max(batch_sizes)
            pixels = prepare_batch(backbone, rois[:batch_size])
            compiled = torch.compile(backbone.model)
            compile_s, rate = time_forward(backbone, compiled, pixels, args.rounds)
            row = {"dtype": dtype, "batch_size": batch_size, "compiled_rois_per_s": rate, "compile_seconds": compile_s}
            rows.append(row)
            print(_format_row(row), flush=True)
        del backbone
    return rows


def _format_row(row: dict[str, Any]) -> str:
    parts = [f"{row['dtype']:<9} batch {row['batch_size']:>5}"]
    for key, label in (
        ("host_rois_per_s", "host"),
        ("device_rois_per_s", "device"),
        ("compiled_rois_per_s", "compiled"),
    ):
        if key in row:
            parts.append(f"{label} {row[key]:>8.1f} ROIs/s")
    if "compile_seconds" in row:
        parts.append(f"(compile {row['compile_seconds']:.1f} s)")
    return "  ".join(parts)


def bench_assignment(
    device: torch.device, count: int, clusters: int, dim: int, repeats: int, seed: int
) -> dict[str, Any]:
    """ROIs/s of `nearest_prototype` (best of `repeats` after one warm-up run)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(count, dim, generator=generator).abs_().to(device)  # pooled ReLU output is >= 0
    centres = torch.randn(clusters, dim, generator=generator).abs_().to(device)
    nearest_prototype(features, centres)  # warm-up (CUDA context, kernels, allocator)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        nearest_prototype(features, centres)
        _sync(device)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"features": count, "clusters": clusters, "dim": dim, "seconds_best": best, "rois_per_second": count / best}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="timm model name (default resnet50)")
    parser.add_argument("--weights", default="random", help="random (default), cache, or a local file: same cost")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-sizes", default="64", help="comma-separated, e.g. 64,256,1024")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA; first dtype only)")
    parser.add_argument("--count", type=int, default=256, help="synthetic ROIs (at least 3 batches are made)")
    parser.add_argument("--rounds", type=int, default=20, help="timed forward passes of the device measurement")
    parser.add_argument("--roi-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--assign-count", type=int, default=100_000, help="features for the assignment test")
    parser.add_argument("--clusters", type=int, default=11, help="prototype centres K (default 11)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (resnet50: 2048)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-features", action="store_true", help="only time the assignment")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU; run with --device cpu")
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "model": args.model,
        "roi_size": args.roi_size,
        "channels_last": True,
    }
    print(f"device: {result['device_name']} [{device}], torch {torch.__version__}, {args.model}, channels-last")
    if not args.skip_features:
        result["features"] = bench_features(args, device)
    assign = bench_assignment(device, args.assign_count, args.clusters, args.dim, args.repeats, args.seed)
    result["assignment"] = assign
    print(
        f"nearest prototype   {assign['features']} x {assign['dim']}-d vs K={assign['clusters']}: "
        f"{assign['seconds_best']:.4f} s = {assign['rois_per_second']:.0f} ROIs/s"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
