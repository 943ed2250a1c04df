"""Active Sample Selection at scale: `select` end to end on a store of ``--rois`` candidate ROIs.

    python benchmarks/select_throughput.py --rois 2000                          # CPU, small
    python benchmarks/select_throughput.py --device cuda --rois 100000 --json out.json

Steps, each timed:

1. **ROIs.** The bundled BCCD tiles (or ``--images``) go through the filter; the ROIs it keeps are
   tiled to ``--distinct`` ROIs with a random flip, quarter turn and brightness shift each.
2. **Store.** They are committed as parts of ``--part-rois`` ROIs through `StoreWriter` (the engine's
   writer, zstd), several parts at once; the parts are then repeated (hard links) up to ``--rois``.
   Reading the committed parts back, with one thread and with ``--writers`` threads, gives the store's
   read rate.
3. **Prototypes.** Features of ``--labeled`` of these ROIs with made-up labels; `fit_prototypes`
   (K = 11) with scikit-learn, and with cuML where it runs: seconds of each on the same features.
4. **select.** `select.run_select` on the store: reading every ROI, features, nearest prototype
   (Eq. 7-9) and writing the selected store, end to end, with the seconds of each phase.
5. **bf16 vs fp32.** On ``--agreement`` ROIs: features in both dtypes, the nearest prototype of each,
   and the number of ROIs whose nearest prototype differs.

The weights (``--weights``, default an untrained resnet50) do not change the cost; they do change what
the bf16/fp32 comparison means, which the output states.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activessf_engine.config import EngineConfig, replace_section, to_dict
from activessf_engine.device import resolve_device
from activessf_engine.filter.run import run_filter
from activessf_engine.select.features import extract, load_backbone
from activessf_engine.select.nearest import nearest_prototype
from activessf_engine.select.prototypes import fit_prototypes
from activessf_engine.select.run import run_select
from activessf_engine.store.layout import ROI_COLUMNS, configure_zarr, part_name
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.writer import PartData, StoreWriter

REPO = Path(__file__).resolve().parents[1]


def varied_copies(base: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` ROIs drawn from `base` (n, S, S, 3), each flipped, turned and brightened at random."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), count)
    out = base[picks].copy()
    for i in range(count):
        roi = np.rot90(out[i], k=int(rng.integers(0, 4)))
        if rng.integers(0, 2):
            roi = roi[:, ::-1]
        shift = int(rng.integers(-12, 13))
        out[i] = np.clip(roi.astype(np.int16) + shift, 0, 255).astype(np.uint8)
    return out


def build_store(root: Path, rois: np.ndarray, part_rois: int, total: int, config: EngineConfig, writers: int) -> float:
    """Commit `rois` as parts of `part_rois` into a new candidates store, then repeat those parts (hard
    links) until it holds `total` ROIs; returns the seconds of the commits."""
    parts = [rois[i : i + part_rois] for i in range(0, len(rois), part_rois)]
    copies = -(-total // len(rois))
    plan = [[f"tile_{k:05d}.jpg"] for k in range(len(parts) * copies)]
    writer = StoreWriter.create(root, "candidates", {"config": to_dict(config)}, plan, layout=config.store)

    def commit(k: int) -> None:
        n = len(parts[k])
        columns = {name: np.zeros((n, *shape), dtype) for name, (dtype, shape) in ROI_COLUMNS.items()}
        columns["box"][:] = (0, 0, rois.shape[2], rois.shape[1])
        sources = [{"path": plan[k][0], "status": "ok", "error": None, "rois": n}]
        writer.commit_part(k, PartData(parts[k], columns, sources))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=writers) as pool:
        list(pool.map(commit, range(len(parts))))
    seconds = time.perf_counter() - start
    for k in range(len(parts), len(plan)):
        shutil.copytree(
            root / "parts" / part_name(k % len(parts)), root / "parts" / part_name(k), copy_function=os.link
        )
    return seconds


def read_rates(root: Path, parts: int, threads: int) -> dict[str, float]:
    """ROIs/s of reading the first `parts` parts whole, with one thread and with `threads`."""
    store = RoiStore(root)
    chosen = store.parts[:parts]
    rois = int(store.offsets[len(chosen)])
    rates = {}
    for workers in (1, threads):
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(store.part_rois, chosen))
        rates[f"read_rois_per_s_{workers}_threads"] = rois / (time.perf_counter() - start)
    return rates


def time_prototypes(features: np.ndarray, labels: np.ndarray, config: EngineConfig, backbone) -> dict[str, Any]:
    """Seconds of fit_prototypes with each K-means backend that runs here."""
    out: dict[str, Any] = {"labeled": len(features), "dim": features.shape[1], "clusters": config.prototypes.clusters}
    for backend in ("sklearn", "cuml"):
        prototype_config = dataclasses.replace(config.prototypes, backend=backend)
        try:
            start = time.perf_counter()
            fitted = fit_prototypes(
                features,
                labels,
                ["a", "b", "c"],
                prototype_config,
                model=backbone.name,
                fingerprint=backbone.fingerprint,
            )
            out[f"{backend}_seconds"] = time.perf_counter() - start
            out["prototypes"] = fitted  # the last that ran; removed before the JSON is written
        except RuntimeError as error:  # cuML absent or unusable
            out[f"{backend}_seconds"] = None
            out[f"{backend}_error"] = str(error)
    return out


def main(argv: list[str] | None = None) -> int:
    configure_zarr()  # as the CLI does
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=REPO / "tests" / "data" / "bccd")
    parser.add_argument("--rois", type=int, default=2000, help="candidate ROIs in the store")
    parser.add_argument("--distinct", type=int, default=2000, help="distinct ROIs committed (then repeated)")
    parser.add_argument("--part-rois", type=int, default=1000, help="ROIs per part of the store")
    parser.add_argument("--labeled", type=int, default=2000, help="ROIs taken as the labeled set")
    parser.add_argument("--agreement", type=int, default=4096, help="ROIs of the bf16 / fp32 comparison")
    parser.add_argument("--batch-size", type=int, default=256, help="feature batch size")
    parser.add_argument("--writers", type=int, default=8, help="parts committed at once while building the store")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--work", type=Path, help="folder for the stores (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    choice = resolve_device(args.device)
    config = replace_section(
        EngineConfig(), "features", model=args.model, weights=args.weights, batch_size=args.batch_size
    )
    config = replace_section(config, "filter", min_fill=0.4)  # more distinct cells from the few bundled tiles
    result: dict[str, Any] = {"device": choice.describe(), "rois": args.rois, "batch_size": args.batch_size}
    if choice.kind == "cuda":
        result["device_name"] = torch.cuda.get_device_name(choice.torch_device)
    with tempfile.TemporaryDirectory(prefix="activessf-select-", dir=args.work) as tmp:
        work = Path(tmp)
        run_filter(args.images, work / "seed", config, device=choice)
        base = np.concatenate([RoiStore(work / "seed").part_rois(p) for p in RoiStore(work / "seed").parts])
        rois = varied_copies(base, min(args.distinct, args.rois), args.seed)
        result["distinct_filter_rois"] = len(base)
        seconds = build_store(work / "candidates", rois, args.part_rois, args.rois, config, args.writers)
        result["store_write_rois_per_s"] = len(rois) / seconds
        result["store_rois"] = len(RoiStore(work / "candidates"))
        result.update(read_rates(work / "candidates", -(-len(rois) // args.part_rois), args.writers))
        print(
            f"store: {result['store_rois']} ROIs ({len(rois)} distinct, written at "
            f"{result['store_write_rois_per_s']:.0f} ROIs/s); read "
            + ", ".join(f"{k} {v:.0f}" for k, v in result.items() if k.startswith("read_"))
        )

        backbone = load_backbone(config.features, choice)
        labeled = rois[: args.labeled]
        labels = np.random.default_rng(args.seed).integers(0, 3, len(labeled))
        protos = time_prototypes(extract(backbone, labeled, args.batch_size), labels, config, backbone)
        prototypes = protos.pop("prototypes")
        prototypes.save(work / "prototypes")
        result["prototypes"] = protos
        print(f"prototypes: sklearn {protos['sklearn_seconds']:.2f} s, cuml {protos['cuml_seconds']}")

        start = time.perf_counter()
        summary = run_select(work / "candidates", work / "prototypes", work / "selected", config, device=choice)
        result["select_seconds"] = time.perf_counter() - start
        keys = ("candidates", "selected", "features_computed", "features_per_second", "seconds")
        result["select_summary"] = {k: summary[k] for k in keys}
        print(
            f"select: {summary['candidates']} candidates, {summary['selected']} kept, "
            f"{result['select_seconds']:.1f} s end to end; phases {summary['seconds']}; "
            f"features from the store {summary['features_per_second']} ROIs/s"
        )

        sample = rois[: args.agreement]
        by_dtype = {}
        for dtype in ("float32", "bfloat16"):
            dtype_backbone = load_backbone(dataclasses.replace(config.features, dtype=dtype), choice)
            by_dtype[dtype] = extract(dtype_backbone, sample, args.batch_size)
        nearest = {dtype: nearest_prototype(f, prototypes.centres)[0] for dtype, f in by_dtype.items()}
        differ = int((nearest["float32"] != nearest["bfloat16"]).sum())
        rel = float(np.linalg.norm(by_dtype["bfloat16"] - by_dtype["float32"]) / np.linalg.norm(by_dtype["float32"]))
        result["bf16_vs_fp32"] = {"rois": len(sample), "nearest_differs": differ, "relative_error": rel}
        print(f"bf16 vs fp32: nearest prototype differs for {differ} of {len(sample)} ROIs (rel. error {rel:.2e})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
