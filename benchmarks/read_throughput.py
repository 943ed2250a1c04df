"""ROIs/s a trainer's DataLoader gets from a store, against the same ROIs as PNG and JPEG files, in one run.

    python benchmarks/read_throughput.py                       # the 1,500 PBC images as ROIs, 4 times over
    python benchmarks/read_throughput.py --store run/selected --json read.json

Readers, each at 0 and 2 DataLoader workers, batch 64, uint8 (3, S, S) tensors, no augmentation:
- store, random order: `RoiDataset` with `shuffle=True` (one chunk read per ROI), for a store of each
  codec (lz4, the default, and zstd level 1) holding the same ROIs;
- store, shard order: `ShardedRoiDataset` (shuffled shards read whole, buffer shuffle), each codec;
- zarr-python, random order: the lz4 store's ROIs read one by one by zarr's own indexing (what
  `RoiDataset` did before `shard_reader`);
- no reading: one tensor handed out again and again, the DataLoader's own ceiling;
- PNG / JPEG folder (`activessf-engine export --format imagefolder`), random order and file order, each
  file read and decoded with torchvision.io (libpng / libjpeg-turbo), as a file-reading trainer would.
Rounds of one epoch per reader interleave the readers (a change of the machine's load hits them all); the
first round is untimed (files in the page cache, so all read from memory), the table gives the median
ROIs/s of the `--epochs` others, each through a fresh DataLoader (its workers' start included).
Before the table, each codec's ratio and compress/decompress ms per ROI on one shard's ROIs.
Targets (issue 12): store random >= JPEG random; store shard order >= 2x JPEG random.
"""

from __future__ import annotations

import argparse
import functools
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
from numcodecs import Blosc, Zstd
from select_throughput import build_store  # beside this script
from torch.utils.data import DataLoader, Dataset
from torchvision.io import decode_image, read_file

from activessf_engine.config import EngineConfig, StoreConfig, replace_section
from activessf_engine.feed.datasets import RoiDataset, ShardedRoiDataset
from activessf_engine.feed.export import export_store
from activessf_engine.filter.crops import cut_rois
from activessf_engine.filter.decode import decode_files
from activessf_engine.filter.sources import find_sources
from activessf_engine.store.layout import configure_zarr
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.shard_writer import LZ4_LEVEL

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


class NoReading(Dataset):
    """One (3, S, S) uint8 tensor `n` times: what the DataLoader itself costs (batching, and with workers
    the shared-memory hand-over), the ceiling of every reader."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.roi = n, torch.zeros((3, size, size), dtype=torch.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.roi


class ZarrRois(Dataset):
    """A store's ROIs read one by one through zarr-python's indexing, as (3, S, S) uint8 tensors."""

    def __init__(self, root: Path) -> None:
        self.store = RoiStore(root)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> torch.Tensor:
        part, row = self.store.locate(index)
        roi = np.asarray(self.store.part_array(part, "rois")[row])
        return torch.from_numpy(np.ascontiguousarray(roi.transpose(2, 0, 1)))


def cell_rois(folder: Path, count: int) -> np.ndarray:
    """Real cell images as ROIs: each PBC image (one cell, 360x363) cut like a ROI (a square window, resized
    to 224). (The filter itself keeps only about one ROI per 15 of these images: too few to time reading.)"""
    paths = [s.path for s in find_sources(folder, (".jpg", ".jpeg", ".png"))][:count]
    if not paths:
        sys.exit(f"no images under {folder}")
    config = replace_section(EngineConfig(), "crop", margin=0.0)
    rois = []
    for image in decode_files(paths, config.input):
        if image.image is not None:
            box = np.array([[0, 0, image.width, image.height]])
            rois.append(cut_rois(image.image, box, config.crop)[0][0])
    return np.stack(rois)


def codec_costs(rois: np.ndarray) -> dict[str, dict[str, float]]:
    """Per codec of `store.codec`, on these ROIs stored as the store keeps them (channels first, one chunk
    each): compression ratio and ms per ROI to compress and to decompress, best of 3, one thread."""
    planes = np.ascontiguousarray(rois.transpose(0, 3, 1, 2))
    costs = {}
    codecs = {
        "lz4": Blosc(cname="lz4", clevel=LZ4_LEVEL, shuffle=Blosc.NOSHUFFLE),  # as shard_writer.roi_codec
        "zstd": Zstd(level=StoreConfig().compression_level),
    }
    for codec, encode in codecs.items():
        encode_s, decode_s, encoded = [], [], []
        for _ in range(3):
            start = time.perf_counter()
            encoded = [encode.encode(roi) for roi in planes]
            encode_s.append(time.perf_counter() - start)
            out = np.empty_like(planes[0])
            start = time.perf_counter()
            for data in encoded:
                encode.decode(data, out=out)
            decode_s.append(time.perf_counter() - start)
        costs[codec] = {
            "ratio": planes.nbytes / sum(len(data) for data in encoded),
            "compress_ms": min(encode_s) / len(planes) * 1e3,
            "decompress_ms": min(decode_s) / len(planes) * 1e3,
        }
    return costs


def make_store(rois: np.ndarray, repeat: int, codec: str, out: Path) -> Path:
    """A candidates store of `rois` repeated `repeat` times, committed in parts and shards of the default
    sizes as `filter` writes them, its ROI chunks compressed with `codec`."""
    config = replace_section(EngineConfig(), "store", codec=codec)
    build_store(out, rois, config.store.rois_per_shard, len(rois) * repeat, config, writers=1)
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
    parser.add_argument(
        "--repeat",
        type=int,
        default=4,
        help="the PBC ROIs this many times over, so that an epoch outlasts the start of its loader and shuffle buffer",
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per reader (after one warm-up)")
    parser.add_argument("--workdir", type=Path, help="where the store and exports go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    configure_zarr()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="read-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    codecs: dict[str, dict[str, float]] = {}
    if args.store:
        stores = {"given": args.store}
    else:
        rois = cell_rois(args.pbc, args.pbc_count)
        stores = {codec: make_store(rois, args.repeat, codec, work / f"store-{codec}") for codec in ("lz4", "zstd")}
        codecs = codec_costs(rois[: StoreConfig().rois_per_shard])
        print("codec  ratio  compress ms/ROI  decompress ms/ROI  (one shard's ROIs, channels first, one thread)")
        for codec, cost in codecs.items():
            print(f"{codec:6} {cost['ratio']:5.2f} {cost['compress_ms']:16.3f} {cost['decompress_ms']:18.3f}")
    store = next(iter(stores.values()))
    n = len(RoiStore(store))
    folders = {}
    for image_format in ("png", "jpeg"):
        folders[image_format] = work / image_format
        export_store(store, folders[image_format], image_format=image_format, overwrite=True)
    readers = {}
    for codec, root in stores.items():
        readers[f"store {codec}, random order"] = (functools.partial(RoiDataset, root), True)
        readers[f"store {codec}, shard order"] = (functools.partial(ShardedRoiDataset, root), False)
    readers |= {
        "zarr-python, random order": (lambda: ZarrRois(store), True),
        "no reading (loader's ceiling)": (lambda: NoReading(n, RoiStore(store).roi(0).shape[0]), False),
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
        **{f"store {k}": sum(f.stat().st_size for f in Path(v).rglob("*") if f.is_file()) for k, v in stores.items()},
        **{k: sum(f.stat().st_size for f in (v / "train").rglob("*") if f.is_file()) for k, v in folders.items()},
    }
    rate = {(r["reader"], r["workers"]): r["rois_per_second"] for r in results}
    print(f"\n{n} ROIs of {RoiStore(store).roi(0).shape}, batch {BATCH}, median of {args.epochs} interleaved epochs")
    print(f"{'reader':30} {'0 workers':>10} {'2 workers':>10}   (ROIs/s; x = vs JPEG random, same workers)")
    for name in readers:
        cells = [
            f"{rate[(name, w)]:6.0f} {rate[(name, w)] / rate[('JPEG files, random order', w)]:4.1f}x" for w in (0, 2)
        ]
        print(f"{name:30} {cells[0]:>12} {cells[1]:>12}")
    print("bytes on disk: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
    if args.json:
        meta = {
            "rois": n,
            "batch": BATCH,
            "epochs": args.epochs,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        record = {"meta": meta, "bytes": sizes, "codecs": codecs, "results": results}
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
