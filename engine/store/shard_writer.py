"""A part written straight to its files, in the Zarr v3 layout `shard_reader` reads, without zarr-python.

zarr-python writes each chunk through its async codec pipeline, which costs far more than compressing the
chunk (benchmarks/README.md, "Write cost"). This module writes the files zarr would write for the arrays
of a part, and only those: the `rois` array with the sharding codec (one ROI per chunk, stored channels
first, compressed with numcodecs lz4 or zstd on a pool of threads, since numcodecs releases the GIL), each
shard's index of (offset, nbytes) with its crc32c at the end; the columns as one zstd chunk each (zarr's
default codecs); and the zarr.json of each array and of the group, as zarr writes them. As zarr does, it
leaves out a chunk that holds only the fill value (0) and a shard file that would hold no chunk.
tests/test_shard_writer.py checks that zarr writes the same bytes into every file, and reads the same arrays.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from numcodecs import Blosc, Zstd
from numcodecs.abc import Codec

from activessf_engine.config import StoreConfig
from activessf_engine.store.shard_reader import CHANNELS_FIRST, EMPTY

LZ4_LEVEL = 9  # Blosc's lz4 level: on 256 PBC cells (channels first) ratio 1.25 at 0.37 ms per ROI; 5: 1.19 at 0.32
ROI_DIMENSIONS = ("roi", "y", "x", "channel")
JSON_INDENT = 2  # zarr's `json_indent`
LITTLE_ENDIAN = {"name": "bytes", "configuration": {"endian": "little"}}
FILL_VALUE = 0  # of every array the engine writes: chunks holding only zeros are not stored


@dataclass(frozen=True)
class ChunkCodec:
    """A compressor of chunk bytes and its entry in a zarr.json's codecs."""

    compressor: Codec
    metadata: dict[str, Any]


def zstd_codec(level: int) -> ChunkCodec:
    return ChunkCodec(
        Zstd(level=level, checksum=False), {"name": "zstd", "configuration": {"level": level, "checksum": False}}
    )


COLUMN_CODEC = zstd_codec(0)  # zarr 3's default compressor of numeric arrays, which the columns have always had


def roi_codec(layout: StoreConfig) -> ChunkCodec:
    """The codec of a part's ROI chunks (both are read by `shard_reader` and by any Zarr v3 reader)."""
    if layout.codec == "zstd":
        return zstd_codec(layout.compression_level)
    blosc = {"typesize": 1, "cname": "lz4", "clevel": LZ4_LEVEL, "shuffle": "noshuffle", "blocksize": 0}
    compressor = Blosc(cname="lz4", clevel=LZ4_LEVEL, shuffle=Blosc.NOSHUFFLE, blocksize=0, typesize=1)
    return ChunkCodec(compressor, {"name": "blosc", "configuration": blosc})


def array_metadata(
    shape: tuple[int, ...],
    dtype: np.dtype,
    grid_chunks: tuple[int, ...],
    codecs: list[dict[str, Any]],
    dimension_names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """An array's zarr.json document, with zarr's keys in zarr's order."""
    fill = 0.0 if dtype.kind == "f" else FILL_VALUE
    meta: dict[str, Any] = {
        "shape": list(shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(grid_chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": codecs,
        "attributes": {},
    }
    if dimension_names is not None:
        meta["dimension_names"] = list(dimension_names)
    return {**meta, "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def write_json(folder: Path, document: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zarr.json").write_text(json.dumps(document, indent=JSON_INDENT, allow_nan=True))


def write_group(folder: Path, attributes: dict[str, Any]) -> None:
    """A group's zarr.json holding `attributes`."""
    write_json(folder, {"attributes": attributes, "zarr_format": 3, "node_type": "group"})


def write_column(folder: Path, values: np.ndarray) -> None:
    """A per-ROI column as one chunk (zarr's default codecs, bytes little-endian then zstd)."""
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    chunks = (max(1, len(values)), *values.shape[1:])
    write_json(folder, array_metadata(values.shape, values.dtype, chunks, [LITTLE_ENDIAN, COLUMN_CODEC.metadata]))
    if values.size and values.view(np.uint8).any():
        path = folder.joinpath("c", *["0"] * values.ndim)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(COLUMN_CODEC.compressor.encode(values))


def write_rois(folder: Path, rois: np.ndarray, shard_rows: int, codec: ChunkCodec, threads: int = 1) -> None:
    """An (n, S, S, 3) uint8 array of ROIs, `shard_rows` per shard file, one ROI per chunk stored as (3, S, S);
    its chunks compressed on `threads` threads."""
    size = rois.shape[1:]
    sharding = {
        "name": "sharding_indexed",
        "configuration": {
            "chunk_shape": [1, *size],
            "codecs": [
                {"name": "transpose", "configuration": {"order": list(CHANNELS_FIRST)}},
                {"name": "bytes"},
                codec.metadata,
            ],
            "index_codecs": [LITTLE_ENDIAN, {"name": "crc32c"}],
            "index_location": "end",
        },
    }
    write_json(folder, array_metadata(rois.shape, rois.dtype, (shard_rows, *size), [sharding], ROI_DIMENSIONS))

    def encode(roi: np.ndarray) -> bytes | None:
        if not roi.any():
            return None
        return codec.compressor.encode(np.ascontiguousarray(roi.transpose(2, 0, 1)))

    if threads > 1 and len(rois) > 1:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="compress") as pool:
            _write_shards(folder, pool.map(encode, rois), len(rois), shard_rows)
    else:
        _write_shards(folder, map(encode, rois), len(rois), shard_rows)


def _write_shards(folder: Path, chunks: Iterator[bytes | None], count: int, shard_rows: int) -> None:
    """Each run of `shard_rows` chunks (in row order) as one shard file, `c/<shard>/0/0/0`."""
    for shard, start in enumerate(range(0, count, shard_rows)):
        stored = [next(chunks) for _ in range(min(shard_rows, count - start))]
        if any(chunk is not None for chunk in stored):
            path = folder / "c" / str(shard) / "0" / "0" / "0"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(shard_bytes(stored, shard_rows))


def shard_bytes(chunks: Iterable[bytes | None], shard_rows: int) -> bytes:
    """A shard file: its chunks end to end (None: not stored), then the index of (offset, nbytes) little-endian
    uint64 pairs of all `shard_rows` chunks (EMPTY for those not stored) and that index's crc32c."""
    index = np.full((shard_rows, 2), EMPTY, dtype="<u8")
    stored, offset = [], 0
    for row, chunk in enumerate(chunks):
        if chunk is not None:
            index[row] = offset, len(chunk)
            stored.append(chunk)
            offset += len(chunk)
    table = index.tobytes()
    return b"".join((*stored, table, google_crc32c.value(table).to_bytes(4, "little")))
