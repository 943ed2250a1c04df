"""The ROI store: a Zarr v3 group of parts, each part committed whole.

Layout::

    store/zarr.json               group; attributes: engine version, kind, config, plan of parts
    store/parts/p000017/          one part: the ROIs of a fixed group of sources
        rois       (n, S, S, 3) uint8, one chunk per ROI, sharding codec (rois_per_shard per shard); each
                   chunk holds its ROI channels first (3, S, S), a transpose codec, compressed with lz4 or zstd
        box        (n, 4) int32    region box in source pixels, x0 y0 x1 y1 (x1, y1 exclusive)
        crop_box   (n, 4) int32    the window actually cut: a square around the box, inside the tile
        pad        (n, 4) int16    padding of the ROI, left top right bottom, in ROI pixels
        area       (n,) int64      region pixels
        fill_rate  (n,) float32
        source     (n,) int32      index into the part's `sources` attribute
        level0_box (n, 4) int64    region box in level-0 pixels of its slide (of a tile file: `box`)
        ...        later stages add columns (cluster, distance, ...)
    store/features/<key>/p000017   cached feature vectors of a part (n, D) float32

One writer owns one part (and so its shards: concurrent writes into one shard lose data). A part is
written under a temporary name and renamed into place, so it is either committed whole or absent;
an interrupted run resumes by redoing the parts that are absent. The plan (which sources make up
which part) is fixed when the store is created, so part numbers mean the same thing on every run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, TransposeCodec, ZstdCodec

from activessf_engine import __version__
from activessf_engine.config import StoreConfig
from activessf_engine.lock import LOCK_NAME, StoreLock
from activessf_engine.shard_reader import CHANNELS_FIRST, ShardReader

log = logging.getLogger(__name__)

# 2: every part holds a crc32 per ROI (`roi_crc32`) and of each column (attribute `checksums`).
# 3: ROIs are cut from a square window moved inside the tile, and each records its padding (`pad`);
#    each records its box in level-0 pixels of its slide (`level0_box`; the box itself for tile files).
FORMAT_VERSION = 3
CHECKSUM_COLUMN = "roi_crc32"
ROOT_PARTIAL = ".zarr.json.partial"  # the root metadata being written, before it is renamed to zarr.json
PART_NAME = re.compile(r"^p(\d{6})$")
# The per-ROI columns every store has: dtype and shape of one row.
ROI_COLUMNS: dict[str, tuple[type, tuple[int, ...]]] = {
    "box": (np.int32, (4,)),
    "crop_box": (np.int32, (4,)),
    "area": (np.int64, ()),
    "fill_rate": (np.float32, ()),
    "source": (np.int32, ()),
    "level0_box": (np.int64, (4,)),
    "pad": (np.int16, (4,)),  # padding of the ROI, left top right bottom in ROI pixels (0 where the tile sufficed)
}
COLUMNS_SINCE = {"level0_box": 3, "pad": 3}  # columns added by a later store format: the format that added them


def roi_column_names(meta: Mapping[str, Any]) -> list[str]:
    """The per-ROI columns a store of this root metadata's format holds (older stores lack later columns)."""
    version = int(meta.get("format", 1))
    return [name for name in ROI_COLUMNS if version >= COLUMNS_SINCE.get(name, 0)]


LZ4_LEVEL = 9  # Blosc's lz4 level: on 256 PBC cells (channels first) ratio 1.25 at 0.37 ms per ROI; 5: 1.19 at 0.32

SPARSE_ROWS = 8  # a one-ROI read costs about as much as 8 ROIs of a whole-part read (see RoiStore.part_rois)


# zarr's process-wide I/O settings that the engine measured best (benchmarks/README.md, "Store I/O"): on
# 512 BCCD crops in one part, writes 679 -> 1,012 ROIs/s and whole-part reads 1,443 -> 2,593 ROIs/s on two
# cores, against zarr's defaults (batch 1, concurrency 10). The CLI sets them at start; a library user
# calls `configure_zarr` once, or leaves zarr's defaults.
ZARR_IO_SETTINGS = {"codec_pipeline.batch_size": 64, "async.concurrency": 64}


def configure_zarr() -> None:
    """Apply `ZARR_IO_SETTINGS` to zarr's configuration for this process (arrays opened afterwards use them)."""
    zarr.config.set(ZARR_IO_SETTINGS)


def part_name(index: int) -> str:
    return f"p{index:06d}"


@dataclass
class PartData:
    """Everything one part holds before it is committed."""

    rois: np.ndarray  # (n, S, S, 3) uint8
    columns: dict[str, np.ndarray]  # per-ROI columns, first dimension n
    sources: list[dict[str, Any]]  # the sources table of this part (path, id, size, status, error, rois)

    def __post_init__(self) -> None:
        n = len(self.rois)
        for name, col in self.columns.items():
            if len(col) != n:
                raise ValueError(f"column {name!r} has {len(col)} rows, rois has {n}")


def _atomic_rename(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)  # atomic on POSIX for a directory onto an absent path


def _write_group(path: Path, data: PartData, attrs: dict[str, Any], layout: StoreConfig) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    n, size = data.rois.shape[0], data.rois.shape[1] if data.rois.ndim == 4 else 0
    shard_rows = max(1, min(n, layout.rois_per_shard))
    rois = group.create_array(
        "rois",
        shape=data.rois.shape,
        chunks=(1, *data.rois.shape[1:]),
        shards=(shard_rows, *data.rois.shape[1:]),
        dtype="uint8",
        filters=[TransposeCodec(order=CHANNELS_FIRST)],  # kept as a trainer reads them (shard_reader)
        compressors=roi_compressor(layout),
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


def roi_compressor(layout: StoreConfig) -> BloscCodec | ZstdCodec:
    """The codec of a part's ROI chunks (both are read by `shard_reader` and by any Zarr v3 reader)."""
    if layout.codec == "zstd":
        return ZstdCodec(level=layout.compression_level)
    return BloscCodec(cname="lz4", clevel=LZ4_LEVEL, shuffle="noshuffle", typesize=1)


def roi_checksums(rois: np.ndarray) -> np.ndarray:
    """crc32 of each ROI's pixel bytes, (n,) uint32: what `verify --deep` compares every ROI with."""
    return np.array([zlib.crc32(np.ascontiguousarray(roi)) for roi in rois], dtype=np.uint32)


def column_checksum(values: np.ndarray) -> int:
    """crc32 of a column's bytes (dtype and shape are checked apart)."""
    return zlib.crc32(np.ascontiguousarray(values))


class StoreWriter:
    """Creates a store or reopens one to resume it, holding its lock until `close`; commits parts.

    Use as a context manager, or call `close`; a writer that is garbage-collected releases the lock too.
    """

    def __init__(self, root: str | Path, layout: StoreConfig | None = None) -> None:
        self.root = Path(root)
        self.layout = layout or StoreConfig()
        self._lock: StoreLock | None = None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def create(
        cls,
        root: str | Path,
        kind: str,
        attrs: dict[str, Any],
        plan: list[list[str]],
        *,
        layout: StoreConfig | None = None,
        overwrite: bool = False,
        same_output: Callable[[dict[str, Any]], list[str]] | None = None,
    ) -> StoreWriter:
        """Create a store, or reopen an existing one of the same kind and plan to resume it, under its lock.

        New sources may be appended to an existing plan as new parts; a plan that lost or moved
        sources is refused (the parts already written would no longer mean the same thing), and so is a
        resume for which `same_output(existing metadata)` lists differences. `overwrite` replaces only
        an activessf-engine store; a folder with anything else in it is never deleted.
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise FileExistsError(f"{root} is a file, not a store; choose another --out")
        is_store = _is_store(root)
        # the lock, and root metadata a killed creation left unrenamed, are all a store's folder holds at first
        if root.exists() and not is_store and any(p.name not in (LOCK_NAME, ROOT_PARTIAL) for p in root.iterdir()):
            raise FileExistsError(
                f"{root} exists and is not an activessf-engine store; choose another --out "
                "(--overwrite replaces only stores, never other folders)"
            )
        writer = cls(root, layout)
        writer._lock = StoreLock(root)
        writer._lock.acquire()
        writer._finalizer = weakref.finalize(writer, writer._lock.release)
        try:
            if overwrite and is_store:
                _clear(root)
            if (root / "zarr.json").exists():
                writer._reopen(kind, plan, same_output)
            else:
                meta = {"format": FORMAT_VERSION, "engine_version": __version__, "kind": kind, **attrs, "plan": plan}
                writer._write_root(meta)
                zarr.open_group(str(root / "parts"), mode="w", zarr_format=3)
        except BaseException:
            writer.close()
            raise
        return writer

    def _reopen(
        self, kind: str, plan: list[list[str]], same_output: Callable[[dict[str, Any]], list[str]] | None
    ) -> None:
        meta = read_attrs(self.root)
        if meta.get("kind") != kind:
            raise ValueError(f"{self.root} holds a {meta.get('kind')!r} store, not {kind!r}; choose another --out")
        old = meta.get("plan", [])
        if plan[: len(old)] != old:
            raise ValueError(
                f"{self.root} was started with other inputs (its plan of {len(old)} parts differs); "
                "use a new --out, or --overwrite to start again"
            )
        differences = same_output(meta) if same_output else []
        if differences:
            raise ValueError(
                f"{self.root} was made with other settings, so its parts would not match new ones: "
                + "; ".join(differences)
                + ". Use the same settings to resume, another --out, or --overwrite to start again"
            )
        damaged = damaged_parts(self.root)
        if damaged:
            raise ValueError(
                f"{self.root} has {len(damaged)} damaged part folder(s) ({', '.join(damaged[:5])}): run "
                f"`activessf-engine verify --repair {self.root}` to set them aside, then run again to redo them"
            )
        meta["plan"] = plan
        self._write_root(meta)
        self.clean_temporary()

    def close(self) -> None:
        """Release the store's lock (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_root(self, meta: dict[str, Any]) -> None:
        """The root group's zarr.json with `meta`, written whole under a temporary name and renamed into place.

        zarr would create the group first and set its attributes in a second write (and rewrite the file in
        place): a kill between or during them left a folder that was no longer recognised as a store, so a
        resume refused it. The group metadata of the Zarr v3 spec is this one small JSON document.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        document = {"zarr_format": 3, "node_type": "group", "attributes": {"activessf_engine": meta}}
        partial = self.root / ROOT_PARTIAL
        partial.write_text(json.dumps(document, indent=2, default=str))
        os.replace(partial, self.root / "zarr.json")

    def record_run(self, summary: dict[str, Any]) -> None:
        """Append a run's summary to the store's attributes (`runs`: every run that wrote into it, in order)."""
        meta = read_attrs(self.root)
        meta["runs"] = [*meta.get("runs", []), summary]
        self._write_root(meta)

    def clean_temporary(self) -> list[Path]:
        """Remove what an interrupted writer left half-written; returns what was removed.

        Each folder is first renamed away, then deleted: a writer still at work (a Dask task whose worker
        was given up for lost) can then either rename its finished part into place before, or find its
        folder gone, but never commit a folder that is half deleted.
        """
        removed = []
        for folder in (self.root / "parts", self.root / "features"):
            for trash in list(folder.rglob(".trash-*")) if folder.exists() else ():  # a clean-up cut short
                shutil.rmtree(trash, ignore_errors=True)
            for tmp in list(folder.rglob(".tmp-*")) if folder.exists() else ():
                doomed = tmp.with_name(".trash-" + tmp.name.removeprefix(".tmp-"))
                try:
                    os.replace(tmp, doomed)
                except OSError:  # renamed into place by its writer meanwhile, or gone
                    continue
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(tmp)
        return removed

    def committed_parts(self) -> set[int]:
        return set(committed_parts(self.root))

    def commit_part(self, index: int, data: PartData, attrs: Mapping[str, Any] | None = None) -> None:
        """Write one part under a temporary name, then rename it into place (all or nothing).

        A part found committed before the write is refused (the caller asked twice). One committed by another
        writer of the same run while this one wrote it (a Dask task run again after its worker was lost, which
        had got that far after all) is kept, and this copy dropped: under one lock and one config both copies
        hold the same ROIs.
        """
        final = self.root / "parts" / part_name(index)
        if final.exists():
            raise FileExistsError(f"part {part_name(index)} of {self.root} is already committed")
        tmp = self.root / "parts" / f".tmp-{part_name(index)}-{uuid.uuid4().hex[:8]}"
        try:
            _write_group(tmp, data, {"part": index, **(attrs or {})}, self.layout)
            try:
                _atomic_rename(tmp, final)
            except OSError:
                if not (final / "zarr.json").exists():
                    raise
                log.info("part %s of %s was committed by another writer meanwhile; keeping it", index, self.root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _is_store(root: Path) -> bool:
    try:
        read_attrs(root)
    except (FileNotFoundError, ValueError, OSError):
        return False
    return True


def _clear(root: Path) -> None:
    """Remove everything in a store folder but its lock (which the caller holds)."""
    for entry in root.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def damaged_parts(root: str | Path) -> list[str]:
    """Part folders without their zarr.json: never made by a commit (which renames whole parts into
    place), so made by damage; they block a resume until `verify --repair` sets them aside."""
    parts = Path(root) / "parts"
    return sorted(
        e.name
        for e in (parts.iterdir() if parts.exists() else ())
        if PART_NAME.match(e.name) and not (e / "zarr.json").exists()
    )


def read_attrs(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "zarr.json"
    try:
        meta = json.loads(path.read_text())["attributes"]["activessf_engine"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{root} is not an activessf-engine store (no zarr.json)") from None
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root}/zarr.json is not an activessf-engine store's metadata: {exc}") from None
    return meta


def committed_parts(root: str | Path) -> list[int]:
    parts = Path(root) / "parts"
    found = []
    for entry in parts.iterdir() if parts.exists() else ():
        match = PART_NAME.match(entry.name)
        if match and (entry / "zarr.json").exists():
            found.append(int(match.group(1)))
    return sorted(found)


class RoiStore:
    """Read access to a store: every committed part, in part order, as one table of ROIs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
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
            self._readers[part] = ShardReader.open(self.root / "parts" / part_name(part) / "rois")
        return self._readers[part]

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


def features_key(model: str, fingerprint: str, roi_size: int, dtype: str = "float32") -> str:
    """Cache key of a store's features: model, weights, ROI size and, unless float32, the compute dtype
    (bfloat16 features differ from float32 ones in the third digit)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    return f"{safe}-{fingerprint[:16]}-{roi_size}" + ("" if dtype == "float32" else f"-{dtype}")


class FeatureCache:
    """Feature vectors of a store's ROIs, one array per part, keyed by model, weights and ROI size."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.folder = Path(root) / "features" / key

    def has(self, part: int) -> bool:
        return (self.folder / part_name(part) / "zarr.json").exists()

    def load(self, part: int) -> np.ndarray:
        return np.asarray(zarr.open_array(str(self.folder / part_name(part)), mode="r")[:])

    def save(self, part: int, features: np.ndarray) -> None:
        """Written under a temporary name and renamed, like a part."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / part_name(part)
        tmp = self.folder / f".tmp-{part_name(part)}-{uuid.uuid4().hex[:8]}"
        arr = zarr.create_array(
            str(tmp), shape=features.shape, chunks=(max(1, len(features)), features.shape[1]), dtype="float32"
        )
        if len(features):
            arr[:] = features.astype(np.float32)
        if final.exists():  # another writer got there first; its features are the same
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _atomic_rename(tmp, final)
