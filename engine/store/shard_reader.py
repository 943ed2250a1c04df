"""ROIs read straight from a part's shard files: the store's read path.

A part's `rois` array is Zarr v3 with the `sharding_indexed` codec: each shard file holds the
compressed chunks (one ROI each) and an index of (offset, nbytes) uint64 pairs, one per chunk,
followed by its crc32c (the Zarr v3 sharding spec). zarr-python reads a chunk through its async codec
pipeline, which costs far more than decoding the chunk: through a DataLoader, one ROI at a time, it
delivered 195 ROIs/s here against 4,131 for this reader on the same lz4 store (benchmarks/README.md,
"Read throughput"). This reader does what zarr does for the layouts the engine writes, and nothing
else: it reads each shard's index once (checking its crc32c), then one `pread` and one numcodecs decode
per ROI, into the layout asked for. `ShardReader.open` returns None for any other layout, and the store
reads those through zarr.

An index whose crc32c is valid can still point a chunk at another ROI's bytes or mark it empty (an edited
or crafted file): given the part's `roi_crc32` column, the reader checks every ROI it returns against it
and raises `RoiChecksumError` naming the part and the row (cost: benchmarks/README.md, "Read throughput").
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from numcodecs import Zstd, blosc

EMPTY = np.uint64(2**64 - 1)  # an index entry of a chunk never written: it reads as the fill value
INDEX_ENTRY = 16  # bytes per chunk in a shard index: offset and nbytes, little-endian uint64
INDEX_CRC = 4  # the crc32c after the index entries

Decoder = Callable[[memoryview, np.ndarray], None]  # decodes a chunk's bytes into a ROI-shaped array


_ZSTD = Zstd()


def _decode_zstd(data: memoryview, out: np.ndarray) -> None:
    _ZSTD.decode(data, out=out)  # a zstd frame carries all that decoding needs; the level only mattered to the writer


def _decode_blosc(data: memoryview, out: np.ndarray) -> None:
    blosc.decompress(data, out)  # a blosc frame's header names its codec and shuffle


DECODERS: dict[str, Decoder] = {"zstd": _decode_zstd, "blosc": _decode_blosc}  # by Zarr v3 codec name


CHANNELS_FIRST = (0, 3, 1, 2)  # a transpose codec's order that stores each (1, S, S, 3) ROI as (1, 3, S, S)


class RoiChecksumError(ValueError):
    """A ROI read back differs from its crc32 in the part's `roi_crc32` column."""


def roi_crc32(pixels: np.ndarray) -> int:
    """crc32 of one ROI's (S, S, 3) pixel bytes, as the `roi_crc32` column holds it."""
    return zlib.crc32(np.ascontiguousarray(pixels))


def check_roi(pixels: np.ndarray, expected: np.ndarray, row: int, part: str) -> None:
    """Raise RoiChecksumError unless the (S, S, 3) ROI at `row` of `part` has the crc32 `expected[row]`."""
    actual, stored = roi_crc32(pixels), int(expected[row])
    if actual != stored:
        raise RoiChecksumError(
            f"part {part}, row {row}: the ROI read differs from its crc32 in roi_crc32 (read {actual:08x}, "
            f"stored {stored:08x}): its shard is damaged or its index was edited. `activessf-engine verify --deep` "
            "lists every such ROI; `verify --repair` sets the part aside for the filter to redo."
        )


@dataclass(frozen=True)
class ShardLayout:
    """What a part's `rois` metadata says about its shard files, when it is the layout this reader reads."""

    shape: tuple[int, ...]  # (n, S, S, 3)
    shard_rows: int  # ROIs per shard file
    fill_value: int
    index_at_end: bool
    separator: str  # of the chunk keys: c/0/0/0/0 or c.0.0.0.0
    channels_first: bool  # chunks hold (3, S, S) planes (a transpose codec), not (S, S, 3) pixels
    decode: Decoder | None  # None: chunks are stored uncompressed

    @classmethod
    def parse(cls, meta: dict[str, Any]) -> ShardLayout | None:
        """The layout of a zarr.json's array metadata; None if it is not one the engine writes."""
        codecs = meta.get("codecs", [])
        if meta.get("data_type") != "uint8" or len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        shape, config = tuple(meta["shape"]), codecs[0]["configuration"]
        key_encoding = meta.get("chunk_key_encoding", {})
        grid = meta.get("chunk_grid", {})
        if key_encoding.get("name") != "default" or grid.get("name") != "regular" or len(shape) != 4:
            return None
        shard_shape = tuple(grid["configuration"]["chunk_shape"])
        if shard_shape[1:] != shape[1:] or tuple(config["chunk_shape"]) != (1, *shape[1:]):
            return None  # the engine's chunks are one whole ROI, its shards whole ROIs
        index_codecs = config.get("index_codecs", [])
        if [c.get("name") for c in index_codecs] != ["bytes", "crc32c"]:
            return None
        if index_codecs[0].get("configuration", {}).get("endian", "little") != "little":
            return None
        inner = list(config.get("codecs", []))
        order = tuple(range(4))
        if inner and inner[0].get("name") == "transpose":
            order = tuple(inner.pop(0).get("configuration", {}).get("order", ()))
        if order not in (tuple(range(4)), CHANNELS_FIRST) or not inner or inner[0].get("name") != "bytes":
            return None
        if len(inner) > 2 or (len(inner) == 2 and inner[1].get("name") not in DECODERS):
            return None
        return cls(
            shape=shape,
            shard_rows=int(shard_shape[0]),
            fill_value=int(meta.get("fill_value") or 0),
            index_at_end=config.get("index_location", "end") == "end",
            separator=key_encoding.get("configuration", {}).get("separator", "/"),
            channels_first=order == CHANNELS_FIRST,
            decode=DECODERS[inner[1]["name"]] if len(inner) == 2 else None,
        )

    def roi_shape(self, channels_first: bool) -> tuple[int, int, int]:
        size, _, channels = self.shape[1:]
        return (channels, size, size) if channels_first else (size, size, channels)


def _open_if_written(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


@dataclass
class ShardReader:
    """Reads ROIs of one part's `rois` array from its shard files; each process keeps its own index cache.

    With `checksums` (the part's `roi_crc32` column) every ROI read is checked against its crc32."""

    folder: Path  # the array's folder (holding zarr.json and c/): <store>/parts/<part>/rois
    layout: ShardLayout
    checksums: np.ndarray | None = None  # (n,) crc32 of each ROI's (S, S, 3) bytes; None: not checked
    _indexes: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, folder: str | Path, checksums: np.ndarray | None = None) -> ShardReader | None:
        """A reader of the array in `folder`, or None if its layout is not one this reader knows."""
        folder = Path(folder)
        layout = ShardLayout.parse(json.loads((folder / "zarr.json").read_text()))
        return cls(folder, layout, checksums) if layout is not None else None

    @property
    def part(self) -> str:
        """The part this array belongs to, as errors name it."""
        return self.folder.parent.name

    def __len__(self) -> int:
        return self.layout.shape[0]

    def shard_path(self, shard: int) -> Path:
        return self.folder / self.layout.separator.join(("c", str(shard), "0", "0", "0"))

    def read(self, rows: np.ndarray | list[int], channels_first: bool = False) -> np.ndarray:
        """The ROIs at `rows` (in the order given), (len(rows), S, S, 3) uint8, or (len(rows), 3, S, S) with
        `channels_first`. A ROI stored in the other layout is transposed on the way (0.06 ms per 224 px ROI)."""
        out = np.empty((len(rows), *self.layout.roi_shape(channels_first)), dtype=np.uint8)
        scratch = self._scratch(channels_first)
        for slot, (row, data) in enumerate(self._chunk_bytes(rows)):
            self._decode(row, data, out[slot], scratch, channels_first)
        return out

    def iter_rois(self, rows: np.ndarray | list[int], channels_first: bool = False) -> Iterator[np.ndarray]:
        """The ROIs at `rows` one by one, each its own array: a consumer that keeps some (a shuffle buffer)
        holds only those, where views of `read`'s array would hold all of them."""
        scratch = self._scratch(channels_first)
        for row, data in self._chunk_bytes(rows):
            roi = np.empty(self.layout.roi_shape(channels_first), dtype=np.uint8)
            self._decode(row, data, roi, scratch, channels_first)
            yield roi

    def _scratch(self, channels_first: bool) -> np.ndarray | None:
        """A ROI's buffer besides the output: where a ROI stored in the other layout is decoded before its
        transposed copy, or, read channels first as stored, where its (S, S, 3) pixels are laid out for the
        checksum. None when neither is needed."""
        if self.layout.channels_first != channels_first:
            return np.empty(self.layout.roi_shape(self.layout.channels_first), dtype=np.uint8)
        if channels_first and self.checksums is not None:
            return np.empty(self.layout.roi_shape(False), dtype=np.uint8)
        return None

    def _decode(
        self, row: int, data: bytes | None, out: np.ndarray, scratch: np.ndarray | None, channels_first: bool
    ) -> None:
        """Row `row`'s chunk into `out` (laid out as `channels_first` says), checked against its crc32."""
        as_stored = self.layout.channels_first == channels_first
        target = out if as_stored else scratch
        if data is None:
            target[...] = self.layout.fill_value
        elif self.layout.decode is None:
            target[...] = np.frombuffer(data, np.uint8).reshape(target.shape)
        else:
            self.layout.decode(memoryview(data), target)
        if not as_stored:
            np.copyto(out, scratch.transpose((1, 2, 0) if self.layout.channels_first else (2, 0, 1)))
        if self.checksums is None:
            return
        if channels_first and as_stored:  # the (S, S, 3) pixels the checksum covers, laid out plane by plane
            for channel in range(3):  # (5x faster than copying a transposed view)
                scratch[..., channel] = out[channel]
        check_roi(scratch if channels_first else out, self.checksums, row, self.part)

    def _chunk_bytes(self, rows: np.ndarray | list[int]) -> Iterator[tuple[int, bytes | None]]:
        """(row, the stored bytes of its chunk) for each row, in the order given; None for a chunk never
        written (a shard never written holds none), which reads as the fill value, as zarr reads it."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside [0, {len(self)}) of {self.folder}")
        fd, open_shard, path = None, None, self.folder
        try:
            for row in rows.tolist():
                shard, chunk = divmod(row, self.layout.shard_rows)
                if shard != open_shard:
                    if fd is not None:
                        os.close(fd)
                    open_shard, path = shard, self.shard_path(shard)
                    fd = _open_if_written(path)
                if fd is None:
                    yield row, None
                    continue
                offset, nbytes = self._index(shard, fd, path)[chunk]
                if offset == EMPTY:
                    yield row, None
                    continue
                data = os.pread(fd, int(nbytes), int(offset))
                if len(data) != nbytes:
                    raise ValueError(f"{path}: chunk {chunk} is cut short ({len(data)} of {nbytes} bytes)")
                yield row, data
        finally:
            if fd is not None:
                os.close(fd)

    def _index(self, shard: int, fd: int, path: Path) -> np.ndarray:
        """The shard's (chunks, 2) table of (offset, nbytes), read once and checked against its crc32c."""
        index = self._indexes.get(shard)
        if index is None:
            chunks = self.layout.shard_rows  # the index covers the shard's whole shape, the last shard's too
            size = chunks * INDEX_ENTRY + INDEX_CRC
            at = os.fstat(fd).st_size - size if self.layout.index_at_end else 0
            raw = os.pread(fd, size, max(at, 0))
            if at < 0 or len(raw) != size:
                raise ValueError(f"{path}: too short for its shard index ({len(raw)} of {size} bytes)")
            if google_crc32c.value(raw[:-INDEX_CRC]) != int.from_bytes(raw[-INDEX_CRC:], "little"):
                raise ValueError(f"{path}: its shard index differs from its crc32c (damaged file)")
            index = np.frombuffer(raw[:-INDEX_CRC], dtype="<u8").reshape(chunks, 2)
            self._indexes[shard] = index
        return index
