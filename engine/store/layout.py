"""The ROI store on disk: a Zarr v3 group of parts, each part committed whole; its format, names and root metadata.

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
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

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


def is_store(root: Path) -> bool:
    try:
        read_attrs(root)
    except (FileNotFoundError, ValueError, OSError):
        return False
    return True


def _part_folders(root: str | Path) -> list[tuple[int, Path]]:
    parts = Path(root) / "parts"
    entries = parts.iterdir() if parts.exists() else ()
    return sorted((int(match.group(1)), e) for e in entries if (match := PART_NAME.match(e.name)))


def _readable_group(folder: Path) -> bool:
    """Whether `folder/zarr.json` is a Zarr v3 group's metadata (present, JSON, a group with attributes)."""
    try:
        meta = json.loads((folder / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("node_type") == "group" and isinstance(meta.get("attributes"), dict)


def damaged_parts(root: str | Path) -> list[str]:
    """Part folders whose zarr.json is missing or unreadable: never made by a commit (which renames whole,
    written parts into place), so made by damage; they block a resume until `verify --repair` sets them aside."""
    return [folder.name for _, folder in _part_folders(root) if not _readable_group(folder)]


def read_attrs(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "zarr.json"
    try:
        meta = json.loads(path.read_bytes())["attributes"]["activessf_engine"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{root} is not an activessf-engine store (no zarr.json)") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} is not an activessf-engine store's root metadata ({type(exc).__name__}: {exc}). If {root} is a "
            f"store whose zarr.json was damaged, its parts are intact: restore {path} from a backup, or move "
            f"{root} aside and run again with another --out"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not an activessf-engine store's root metadata (its attributes are not a table)")
    return meta


def committed_parts(root: str | Path) -> list[int]:
    """The parts whose folder holds readable group metadata (a part is renamed into place whole)."""
    return [index for index, folder in _part_folders(root) if _readable_group(folder)]
