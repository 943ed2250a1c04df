"""Cost of writing a part: the engine's shard writer against zarr-python writing the same arrays, in one run.

    python benchmarks/write_cost.py                          # 256 PBC cells as 224 px ROIs, lz4 and zstd
    python benchmarks/write_cost.py --count 512 --threads 2 --json write.json

Each round writes the same part (ROIs, the per-ROI columns, the group attributes) once with each writer,
into a fresh folder, alternating writers so a change of the machine's load hits both; the first round is
untimed. The table gives the median ms per ROI of the other rounds for each codec and writer, and the ratio;
"compress only" is the codec alone on the same chunks (one thread), the floor of any writer of these bytes.
`write_with_zarr` is what `store.writer` did before `shard_writer` (tests/test_shard_writer.py compares the
two writers' files byte for byte).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, TransposeCodec, ZstdCodec

from activessf_engine.config import CropConfig, InputConfig, StoreConfig
from activessf_engine.filter.crops import cut_rois
from activessf_engine.filter.decode import decode_files
from activessf_engine.filter.sources import find_sources
from activessf_engine.store import ROI_COLUMNS, PartData
from activessf_engine.store.layout import CHECKSUM_COLUMN, configure_zarr
from activessf_engine.store.shard_reader import CHANNELS_FIRST
from activessf_engine.store.shard_writer import LZ4_LEVEL, roi_codec
from activessf_engine.store.writer import _write_group, column_checksum, roi_checksums

REPO = Path(__file__).resolve().parents[1]
PBC = REPO.parent / "shared" / "data" / "pbc-longtail" / "unlabeled"


def zarr_compressor(layout: StoreConfig) -> BloscCodec | ZstdCodec:
    if layout.codec == "zstd":
        return ZstdCodec(level=layout.compression_level)
    return BloscCodec(cname="lz4", clevel=LZ4_LEVEL, shuffle="noshuffle", typesize=1)


def write_with_zarr(path: Path, data: PartData, attrs: dict[str, Any], layout: StoreConfig) -> None:
    """A part written through zarr-python, as `store.writer` wrote it before `shard_writer`."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    n, size = data.rois.shape[0], data.rois.shape[1] if data.rois.ndim == 4 else 0
    shard_rows = max(1, min(n, layout.rois_per_shard))
    rois = group.create_array(
        "rois",
        shape=data.rois.shape,
        chunks=(1, *data.rois.shape[1:]),
        shards=(shard_rows, *data.rois.shape[1:]),
        dtype="uint8",
        filters=[TransposeCodec(order=CHANNELS_FIRST)],
        compressors=zarr_compressor(layout),
        dimension_names=("roi", "y", "x", "channel"),
    )
    if n:
        rois[:] = data.rois
    columns = {**data.columns, CHECKSUM_COLUMN: roi_checksums(data.rois)}
    for name, col in columns.items():
        arr = group.create_array(name, shape=col.shape, chunks=(max(1, len(col)), *col.shape[1:]), dtype=col.dtype)
        if len(col):
            arr[:] = col
    checksums = {name: column_checksum(col) for name, col in columns.items()}
    group.attrs.update({**attrs, "rois": n, "roi_size": size, "sources": data.sources, "checksums": checksums})


def part_of_cells(folder: Path, count: int, size: int) -> PartData:
    """`count` cell images cut into ROIs as the filter cuts them, with columns of plausible values."""
    paths = [s.path for s in find_sources(folder, (".jpg", ".jpeg", ".png"))][:count]
    images = [img.image for img in decode_files(paths, InputConfig()) if img.image is not None]
    rois = np.concatenate(
        [
            cut_rois(img, np.array([[40, 40, img.shape[1] - 40, img.shape[0] - 40]]), CropConfig(size=size))[0]
            for img in images
        ]
    )
    rng = np.random.default_rng(0)
    n = len(rois)
    columns = {name: rng.integers(0, 1000, (n, *shape)).astype(dtype) for name, (dtype, shape) in ROI_COLUMNS.items()}
    return PartData(rois, columns, [{"path": str(p), "rois": 1} for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=PBC, help="a folder of cell images (PBC's)")
    parser.add_argument("--count", type=int, default=256, help="ROIs in the part")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="the shard writer's compression threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_zarr()  # zarr's I/O settings as the CLI sets them
    data = part_of_cells(args.images, args.count, args.size)
    chunks = [np.ascontiguousarray(roi.transpose(2, 0, 1)) for roi in data.rois]

    def compress_only(path: Path, data: PartData, attrs: dict[str, Any], layout: StoreConfig) -> None:
        path.mkdir()
        compressor = roi_codec(layout).compressor
        for chunk in chunks:
            compressor.encode(chunk)

    writers = {"zarr-python": write_with_zarr, "shard_writer": _write_group, "compress only": compress_only}
    seconds: dict[tuple[str, str], list[float]] = {}
    root = Path(tempfile.mkdtemp())
    try:
        for round_ in range(args.rounds + 1):
            for codec in ("lz4", "zstd"):
                layout = StoreConfig(codec=codec, write_threads=args.threads)
                for name, write in writers.items():
                    path = root / f"{codec}-{name}-{round_}"
                    start = time.perf_counter()
                    write(path, data, {"part": 0}, layout)
                    if round_:
                        seconds.setdefault((codec, name), []).append(time.perf_counter() - start)
                    shutil.rmtree(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n = len(data.rois)
    result: dict[str, Any] = {"rois": n, "size": args.size, "threads": args.threads, "host": platform.node()}
    print(f"{n} ROIs of {args.size} px in one part, {args.threads} compression thread(s), median of {args.rounds}")
    print(f"{'codec':6} {'zarr-python ms/ROI':>19} {'shard_writer ms/ROI':>20} {'ratio':>6} {'compress only':>14}")
    for codec in ("lz4", "zstd"):
        old, new, floor = (statistics.median(seconds[codec, w]) * 1000 / n for w in writers)
        result[codec] = {"zarr_ms_per_roi": old, "shard_writer_ms_per_roi": new, "compress_only_ms_per_roi": floor}
        print(f"{codec:6} {old:19.3f} {new:20.3f} {old / new:6.1f} {floor:14.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
