"""Read access to a store: every committed part, in part order, as one table of ROIs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from activessf_engine.store.layout import CHECKSUM_COLUMN, committed_parts, part_name, read_attrs
from activessf_engine.store.shard_reader import ShardReader, check_roi

SPARSE_ROWS = 8  # a one-ROI read costs about as much as 8 ROIs of a whole-part read (see RoiStore.part_rois)


class RoiStore:
    """Read access to a store: every committed part, in part order, as one table of ROIs.

    Every ROI read is checked against its crc32 where the part has them (column `roi_crc32`), so that a
    damaged shard or an edited shard index raises `RoiChecksumError` naming the part and row instead of
    returning another ROI's pixels or a black one. `check_rois=False` reads without the check (`verify`,
    which compares every ROI itself and reports them all).
    """

    def __init__(self, root: str | Path, check_rois: bool = True) -> None:
        self.root = Path(root)
        self.check_rois = check_rois
        self.meta = read_attrs(self.root)
        self.parts = committed_parts(self.root)
        self._groups = {p: zarr.open_group(str(self.root / "parts" / part_name(p)), mode="r") for p in self.parts}
        counts = [int(self._groups[p].attrs["rois"]) for p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._columns: dict[str, np.ndarray] | None = None
        self._readers: dict[int, ShardReader | None] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def complete(self) -> bool:
        return len(self.parts) == len(self.meta.get("plan", []))

    def part_attrs(self, part: int) -> dict[str, Any]:
        return dict(self._groups[part].attrs)

    def locate(self, index: int) -> tuple[int, int]:
        """(part, row within part) of global ROI `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"ROI {index} out of range for a store of {len(self)}")
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[k], index - int(self.offsets[k])

    def roi(self, index: int, channels_first: bool = False) -> np.ndarray:
        """One ROI, (S, S, 3) uint8 (or (3, S, S) with `channels_first`): reads one chunk of one shard."""
        part, row = self.locate(index)
        return self.part_rois(part, np.array([row]), channels_first)[0]

    def part_rois(self, part: int, rows: np.ndarray | None = None, channels_first: bool = False) -> np.ndarray:
        """The ROIs of one part, all or the given rows (in the order given), (n, S, S, 3) uint8, or
        (n, 3, S, S) with `channels_first` (what a torch model takes; the layout the store keeps).

        Read by `ShardReader` (one decode per ROI, whatever the rows) unless the part's layout is not the
        one it knows; then through zarr, never by zarr's orthogonal selection (measured on 512 BCCD crops:
        27 ROIs/s, against about 1,400 for the whole part and 250 for one ROI at a time): a few rows one by
        one, more than an eighth of the part by reading the whole part and indexing it.
        """
        reader = self._reader(part)
        if reader is not None:
            return reader.read(np.arange(len(reader)) if rows is None else rows, channels_first)
        rois = self._zarr_rois(part, rows)
        expected = self._checksums(part)
        if expected is not None:
            for roi, row in zip(rois, range(len(rois)) if rows is None else rows, strict=True):
                check_roi(roi, expected, int(row), part_name(part))
        return np.ascontiguousarray(rois.transpose(0, 3, 1, 2)) if channels_first else rois

    def iter_part_rois(self, part: int, rows: np.ndarray, channels_first: bool = False) -> Iterator[np.ndarray]:
        """The ROIs of `part` at `rows`, one array each (as `part_rois` lays them out): what a consumer that
        keeps some of them a while (a shuffle buffer) reads, so that it holds only those."""
        reader = self._reader(part)
        if reader is not None:
            return reader.iter_rois(rows, channels_first)
        return map(np.copy, self.part_rois(part, rows, channels_first))

    def _zarr_rois(self, part: int, rows: np.ndarray | None) -> np.ndarray:
        rois = self._groups[part]["rois"]
        if rows is None:
            return np.asarray(rois[:])
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) * SPARSE_ROWS < rois.shape[0]:
            return np.stack([np.asarray(rois[int(i)]) for i in rows]) if len(rows) else np.asarray(rois[:0])
        return np.asarray(rois[:])[rows]

    def _reader(self, part: int) -> ShardReader | None:
        if part not in self._readers:
            folder = self.root / "parts" / part_name(part) / "rois"
            self._readers[part] = ShardReader.open(folder, self._checksums(part))
        return self._readers[part]

    def _checksums(self, part: int) -> np.ndarray | None:
        """The part's crc32 of each ROI, when it has them and reads are checked."""
        group = self._groups[part]
        if not self.check_rois or CHECKSUM_COLUMN not in group.array_keys():
            return None
        return np.asarray(group[CHECKSUM_COLUMN][:])

    def part_array(self, part: int, name: str) -> zarr.Array:
        """One array of a part, unread (for checks that look at shapes and metadata)."""
        return self._groups[part][name]

    def part_column(self, part: int, name: str) -> np.ndarray:
        return np.asarray(self._groups[part][name][:])

    def iter_parts(self) -> Iterator[tuple[int, int]]:
        """(part, global index of its first ROI) for each committed part."""
        for k, part in enumerate(self.parts):
            yield part, int(self.offsets[k])

    def columns(self) -> dict[str, np.ndarray]:
        """Every per-ROI column over all parts, with `part`, `source_path`, `slide` and `level` added (from the
        sources tables: a tile file is its own slide, at level 0)."""
        if self._columns is None:
            names = [n for n in self._groups[self.parts[0]].array_keys() if n != "rois"] if self.parts else []
            cols: dict[str, list[np.ndarray]] = {n: [] for n in names}
            rows, part_ids = [], []
            for part in self.parts:
                group = self._groups[part]
                for n in names:
                    cols[n].append(np.asarray(group[n][:]))
                sources = group.attrs["sources"]
                rows.extend(sources[i] for i in np.asarray(group["source"][:]))
                part_ids.append(np.full(int(group.attrs["rois"]), part, dtype=np.int32))
            self._columns = {n: np.concatenate(v) if v else np.empty(0) for n, v in cols.items()}
            self._columns["part"] = np.concatenate(part_ids) if part_ids else np.empty(0, np.int32)
            self._columns["source_path"] = np.array([row["path"] for row in rows], dtype=object)
            self._columns["slide"] = np.array([row.get("slide", row["path"]) for row in rows], dtype=object)
            self._columns["level"] = np.array([row.get("level", 0) for row in rows], dtype=np.int32)
        return self._columns

    def sources(self) -> list[dict[str, Any]]:
        """The sources table of every committed part, in order."""
        return [s for part in self.parts for s in self._groups[part].attrs["sources"]]
