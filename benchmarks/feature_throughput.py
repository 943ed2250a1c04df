"""Throughput of the two per-candidate costs of Active Sample Selection: feature extraction and
nearest-prototype assignment.

What is measured:

1. Feature extraction: `features.load_backbone` (``--model``, ``--weights``, default an untrained
   resnet50: weights do not change the cost) and `features.iter_extract` over ``--count`` synthetic
   ROIs (uniform random uint8, ``--roi-size`` square, 3 channels) in batches of ``--batch-size``.
   The first batch is a warm-up and is excluded from the timing; the ROIs are already in memory,
   so decoding and store reads are not included (preparation, i.e. the host-to-device copy and
   normalisation, is). Reported as ROIs/s.
2. Nearest-prototype assignment (Eq. 7): `selection.nearest_prototype` of ``--assign-count``
   random float32 feature vectors of ``--dim`` dimensions against ``--clusters`` centres, on
   ``--device`` (the features are placed there first; the transfer is not timed). One warm-up run,
   then ``--repeats`` timed runs; the best is reported as ROIs/s.

Run (CPU, about a minute on 2 cores)::

    /work/venv/bin/python benchmarks/feature_throughput.py
    /work/venv/bin/python benchmarks/feature_throughput.py --device cuda --count 4096 --json out.json

Prints the device name, batch size and both throughputs; ``--json`` writes them with the settings.
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
from activessf_engine.features import iter_extract, load_backbone
from activessf_engine.selection import nearest_prototype


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


def bench_features(
    model: str, weights: str, device: torch.device, count: int, batch_size: int, roi_size: int, seed: int
) -> dict[str, Any]:
    """ROIs/s of `iter_extract` over `count` synthetic ROIs, the first batch excluded (warm-up)."""
    backbone = load_backbone(FeatureConfig(model=model, weights=weights, batch_size=batch_size), device)
    rng = np.random.default_rng(seed)
    rois = rng.integers(0, 256, size=(count, roi_size, roi_size, 3), dtype=np.uint8)
    batches = [rois[i : i + batch_size] for i in range(0, count, batch_size)]
    if len(batches) < 2:
        raise ValueError(f"--count {count} gives fewer than 2 batches of {batch_size}; nothing left to time")
    timed_rois = count - len(batches[0])
    start = None
    shape: list[int] = []
    for index, feats in enumerate(iter_extract(backbone, batches)):
        shape = list(feats.shape)
        if index == 0:  # the warm-up batch is finished: start the clock here
            _sync(device)
            start = time.perf_counter()
    _sync(device)
    seconds = time.perf_counter() - start if start is not None else float("nan")
    return {
        "model": backbone.name,
        "weights": backbone.weights,
        "feature_dim": backbone.feature_dim,
        "rois_timed": timed_rois,
        "warmup_rois": len(batches[0]),
        "batch_size": batch_size,
        "roi_size": roi_size,
        "seconds": round(seconds, 4),
        "rois_per_second": round(timed_rois / seconds, 2),
        "last_batch_shape": shape,
    }


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
    return {
        "features": count,
        "clusters": clusters,
        "dim": dim,
        "repeats": repeats,
        "seconds_best": round(best, 5),
        "seconds_all": [round(t, 5) for t in times],
        "rois_per_second": round(count / best, 1),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="timm model name (default resnet50)")
    parser.add_argument(
        "--weights", default="random", help="random (default), cache, or a local file; the cost is the same"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--count", type=int, default=256, help="synthetic ROIs, warm-up batch included")
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU; run with --device cpu")
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
    }
    print(f"device: {result['device_name']} [{device}], torch {torch.__version__}")
    if not args.skip_features:
        sizes = (args.count, args.batch_size, args.roi_size)
        feats = bench_features(args.model, args.weights, device, *sizes, args.seed)
        result["features"] = feats
        side = feats["roi_size"]
        print(
            f"feature extraction  {feats['model']} ({feats['weights']} weights), "
            f"batch {feats['batch_size']}, {side}x{side}: {feats['rois_timed']} ROIs in "
            f"{feats['seconds']:.2f} s = {feats['rois_per_second']:.1f} ROIs/s "
            f"(warm-up batch of {feats['warmup_rois']} excluded)"
        )
    assign = bench_assignment(device, args.assign_count, args.clusters, args.dim, args.repeats, args.seed)
    result["assignment"] = assign
    print(
        f"nearest prototype   {assign['features']} x {assign['dim']}-d vs K={assign['clusters']}: "
        f"{assign['seconds_best']:.3f} s (best of {assign['repeats']}) "
        f"= {assign['rois_per_second']:.0f} ROIs/s"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
