"""ROIs/s a trainer's DataLoader gets from a store, against the same ROIs as PNG and JPEG files, in one run.

    python benchmarks/read_throughput.py                       # the 1,500 PBC images as ROIs, in a temporary store
    python benchmarks/read_throughput.py --store run/selected --json read.json

Readers, each at 0 and 2 DataLoader workers, batch 64, uint8 (3, S, S) tensors, no augmentation:
- store, random order: `RoiDataset` with `shuffle=True` (one chunk read per ROI);
- store, shard order: `ShardedRoiDataset` (shuffled shards read whole, buffer shuffle);
- PNG / JPEG folder (`activessf-engine export --format imagefolder`), random order and file order, each
  file read and decoded with torchvision.io (libpng / libjpeg-turbo), as a file-reading trainer would.
Rounds of one epoch per reader interleave the readers (a change of the machine's load hits them all); the
first round is untimed (files in the page cache, so all read from memory), the table gives the median
ROIs/s of the `--epochs` others, each through a fresh DataLoader (its workers' start included).
Targets (issue 12): store random >= JPEG random; store shard order >= 2x JPEG random.
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
from pathlib import Path

import numpy as np
import torch
from select_throughput import build_store  # beside this script
from torch.utils.data import DataLoader, Dataset
from torchvision.io import decode_image, read_file

from activessf_engine.config import EngineConfig, replace_section
from activessf_engine.crops import cut_rois
from activessf_engine.data import RoiDataset, ShardedRoiDataset
from activessf_engine.decode import decode_files
from activessf_engine.export import export_store
from activessf_engine.sources import find_sources
from activessf_engine.store import RoiStore, configure_zarr

REPO = Path(__file__).resolve().parents[1]
PBC = REPO.parent / "shared" / "data" / "pbc-longtail" / "unlabeled"
BATCH = 64


class FileRois(Dataset):
    """The image files of an exported ImageFolder, decoded to (3, S, S) uint8 tensors."""

    def __init__(self, root: Path) -> None:
        self.paths = sorted(p for p in (root / "train").rglob("*") if p.is_file())

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return decode_image(read_file(str(self.paths[index])))


def make_store(folder: Path, count: int, out: Path) -> Path:
    """A candidates store of real cell images: each PBC image (one cell, 360x363) cut like a ROI (a square
    window, resized to 224) and committed in parts and shards of the default sizes, as `filter` writes them.
    (The filter itself keeps only about one ROI per 15 of these images: too few to time reading.)"""
    paths = [s.path for s in find_sources(folder, (".jpg", ".jpeg", ".png"))][:count]
    if not paths:
        sys.exit(f"no images under {folder}")
    config = EngineConfig()
    rois = []
    for image in decode_files(paths, config.input):
        if image.image is not None:
            box = np.array([[0, 0, image.width, image.height]])
            rois.append(cut_rois(image.image, box, replace_section(config, "crop", margin=0.0).crop)[0][0])
    build_store(out, np.stack(rois), config.store.rois_per_shard, len(rois), config, writers=1)
    return out


def epoch_rate(dataset: Dataset, shuffle: bool, workers: int, epoch: int) -> float:
    """ROIs/s of one epoch through a fresh DataLoader (its workers' start included)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=shuffle, num_workers=workers)
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="a ROI store; default: filter --pbc-count PBC images into one")
    parser.add_argument("--pbc", type=Path, default=PBC)
    parser.add_argument("--pbc-count", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per reader (after one warm-up)")
    parser.add_argument("--workdir", type=Path, help="where the store and exports go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    configure_zarr()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="read-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    store = args.store or make_store(args.pbc, args.pbc_count, work / "store")
    n = len(RoiStore(store))
    folders = {}
    for image_format in ("png", "jpeg"):
        folders[image_format] = work / image_format
        export_store(store, folders[image_format], image_format=image_format, overwrite=True)
    readers = {
        "store, random order": (lambda: RoiDataset(store), True),
        "store, shard order": (lambda: ShardedRoiDataset(store), False),
        "PNG files, random order": (lambda: FileRois(folders["png"]), True),
        "PNG files, file order": (lambda: FileRois(folders["png"]), False),
        "JPEG files, random order": (lambda: FileRois(folders["jpeg"]), True),
        "JPEG files, file order": (lambda: FileRois(folders["jpeg"]), False),
    }
    datasets = {name: make() for name, (make, _) in readers.items()}
    rates: dict[tuple[str, int], list[float]] = {(name, w): [] for name in readers for w in (0, 2)}
    for epoch in range(args.epochs + 1):  # rounds interleave the readers, so a change of load hits them all
        for (name, workers), measured in rates.items():
            rate = epoch_rate(datasets[name], readers[name][1], workers, epoch)
            if epoch:  # the first round warms up (page cache, imports)
                measured.append(rate)
            print(f"  round {epoch}: {name}, {workers} workers: {rate:.0f} ROIs/s", file=sys.stderr)
    results = [
        {"reader": name, "workers": w, "rois_per_second": statistics.median(v), "rounds": v}
        for (name, w), v in rates.items()
    ]
    sizes = {
        "store": sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file()),
        **{k: sum(f.stat().st_size for f in (v / "train").rglob("*") if f.is_file()) for k, v in folders.items()},
    }
    rate = {(r["reader"], r["workers"]): r["rois_per_second"] for r in results}
    print(f"\n{n} ROIs of {RoiStore(store).roi(0).shape}, batch {BATCH}, median of {args.epochs} interleaved epochs")
    print(f"{'reader':28} {'0 workers':>10} {'2 workers':>10}   (ROIs/s; x = vs JPEG random, same workers)")
    for name in readers:
        cells = [
            f"{rate[(name, w)]:6.0f} {rate[(name, w)] / rate[('JPEG files, random order', w)]:4.1f}x" for w in (0, 2)
        ]
        print(f"{name:28} {cells[0]:>12} {cells[1]:>12}")
    print("bytes on disk: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
    if args.json:
        meta = {
            "rois": n,
            "batch": BATCH,
            "epochs": args.epochs,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        args.json.write_text(json.dumps({"meta": meta, "bytes": sizes, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
