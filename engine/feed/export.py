"""Export a store's ROIs as files, for trainers that read only files.

`imagefolder`: ``OUT/train/<class>/<roi>.png``, the layout torchvision's ImageFolder (and so the official
MAE ``main_pretrain.py``, which reads ``--data_path``/train) expects; the class is the ROI's prototype
cluster in a selected store or in the selection a query names (`selected_by`), ``rois`` otherwise.
`webdataset`: ``OUT/rois-000000.tar`` ..., each sample ``<roi>.png`` (or ``.jpg``) with ``<roi>.json`` (its
metadata, numbers as numbers) and, where there are clusters, ``<roi>.cls``. Tars are written with the
standard library's tarfile: the format is plain POSIX tar with files grouped by key, so the `webdataset`
package is needed only to read them. Both write ``OUT/metadata.csv`` (the manifest's columns plus the file
of each ROI) and ``OUT/export.json`` (what was exported from where).

The export is written into a temporary folder beside OUT, under a lock, and renamed into place when complete,
so an interrupted export leaves no half-filled OUT, and the next export to OUT removes what a killed one left.
`overwrite` replaces only a previous export that holds nothing but its own files (`store.check_overwrite`).
"""

from __future__ import annotations

import csv
import functools
import glob
import io
import json
import logging
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from activessf_engine.device import available_cores
from activessf_engine.feed.formats import EXPORT_FORMATS, IMAGE_FORMATS, ExportFormat, ImageFormat
from activessf_engine.feed.query import RoiQuery, query_rows, roi_clusters
from activessf_engine.feed.shard_order import store_shards
from activessf_engine.progress import Progress, make_progress
from activessf_engine.store import (
    Artefact,
    RoiStore,
    StoreLock,
    StoreLockedError,
    check_overwrite,
    manifest_header,
    manifest_rows,
    spreadsheet_safe,
)

log = logging.getLogger(__name__)

MARKER = "export.json"  # written last; marks a folder as an export that `overwrite` may replace
SUFFIX = {"png": ".png", "jpeg": ".jpg"}


def encode(roi: np.ndarray, image_format: ImageFormat, quality: int) -> bytes:
    """One (S, S, 3) uint8 ROI as PNG (lossless) or JPEG bytes."""
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(roi).save(buffer, format="PNG")
    else:
        Image.fromarray(roi).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _check(
    out: Path, export_format: str, image_format: str, quality: int, overwrite: bool, store_root: str | Path
) -> None:
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {export_format!r}; choose one of {list(EXPORT_FORMATS)}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {image_format!r}; choose one of {list(IMAGE_FORMATS)}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must lie in [1, 100], got {quality}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out, or --overwrite to replace a previous export")
    if overwrite:
        check_overwrite(out, EXPORT, [store_root])


def _is_export(folder: Path) -> bool:
    """Whether `folder` holds the record an export writes last (`MARKER`, JSON naming its store and format)."""
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") in EXPORT_FORMATS and "store" in record


EXPORT = Artefact(
    "previous export",
    _is_export,
    re.compile(rf"{re.escape(MARKER)}|metadata\.csv|rois-\d{{6}}\.tar|train/(?:rois|cluster_\d+)/\d{{8}}\.(?:png|jpg)"),
)


def _temporary_folders(out: Path) -> list[Path]:
    """The temporary folders of exports to `out`: where each is written before it is renamed to `out`."""
    return sorted(out.parent.glob(f".{glob.escape(out.name)}.tmp-*"))


def _remove_abandoned(out: Path) -> None:
    """Delete the temporary folders that killed exports to `out` left (each held a lock that outlived its
    process); those of an export still at work are left alone."""
    for tmp in _temporary_folders(out):
        lock = StoreLock(tmp)
        if not lock.path.exists():
            continue  # not made by an export, or one finishing right now: not ours to judge
        try:
            lock.acquire()
        except StoreLockedError:
            continue
        log.info("removing %s, left by an export that was interrupted", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _encoded(
    store: RoiStore, indices: np.ndarray, image_format: ImageFormat, quality: int, threads: int
) -> Iterator[tuple[int, bytes]]:
    """(global index, encoded bytes) of each ROI, in store order: read shard by shard, encoded in threads
    (Pillow releases the GIL while it encodes)."""
    encode_one = functools.partial(encode, image_format=image_format, quality=quality)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="export-encode") as pool:
        for segment in store_shards(store, indices):
            encoded = pool.map(encode_one, store.part_rois(segment.part, segment.rows))
            yield from zip(segment.indices.tolist(), encoded, strict=True)


def _class_name(clusters: np.ndarray | None, index: int) -> str:
    return "rois" if clusters is None else f"cluster_{int(clusters[index]):02d}"


class _FolderWriter:
    """ImageFolder layout: one file per ROI under train/<class>/."""

    def __init__(self, root: Path, suffix: str, clusters: np.ndarray | None) -> None:
        self.root, self.suffix, self.clusters = root, suffix, clusters

    def add(self, index: int, data: bytes, meta: dict[str, Any]) -> str:
        name = f"train/{_class_name(self.clusters, index)}/{index:08d}{self.suffix}"
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_bytes(data)
        return name

    def close(self) -> None:
        return None


class _TarWriter:
    """WebDataset layout: tars of `per_tar` samples, each sample its image, .json and (with clusters) .cls."""

    def __init__(self, root: Path, suffix: str, clusters: np.ndarray | None, per_tar: int) -> None:
        self.root, self.suffix, self.clusters, self.per_tar = root, suffix, clusters, per_tar
        self.count = 0
        self.tar: tarfile.TarFile | None = None

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), 0  # the same store exports to the same bytes
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, index: int, data: bytes, meta: dict[str, Any]) -> str:
        if self.count % self.per_tar == 0:
            self.close()
            path = self.root / f"rois-{self.count // self.per_tar:06d}.tar"
            self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed by close())
        self.count += 1
        key = f"{index:08d}"
        self._member(key + self.suffix, data)
        self._member(key + ".json", json.dumps(meta).encode())
        if self.clusters is not None:
            self._member(key + ".cls", str(int(self.clusters[index])).encode())
        return f"{Path(self.tar.name).name}:{key}{self.suffix}"

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def export_store(
    store_root: str | Path,
    out: str | Path,
    *,
    export_format: ExportFormat = "imagefolder",
    image_format: ImageFormat = "png",
    quality: int = 95,
    query: RoiQuery | None = None,
    samples_per_tar: int = 1000,
    threads: int = 0,
    overwrite: bool = False,
    progress: bool | Progress = False,
) -> dict[str, Any]:
    """Write the ROIs of a store that `query` keeps as files under `out`; returns a summary.

    `quality` applies to JPEG; `samples_per_tar` to webdataset; `threads` encoders (0: one per core)."""
    out = Path(out)
    _check(out, export_format, image_format, quality, overwrite, store_root)
    if samples_per_tar < 1:
        raise ValueError(f"samples_per_tar must be >= 1, got {samples_per_tar}")
    store = RoiStore(store_root)
    indices = query_rows(store, query)
    clusters = roi_clusters(store, query)  # labels of a selected store, or of the selection named by the query
    header = manifest_header(store)
    _remove_abandoned(out)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    lock = StoreLock(tmp)  # tells a later export that this folder is in use, until this process ends
    lock.acquire()
    bar = make_progress(progress, total=len(indices), unit="roi", desc="export")
    if export_format == "imagefolder":
        writer: _FolderWriter | _TarWriter = _FolderWriter(tmp, SUFFIX[image_format], clusters)
    else:
        writer = _TarWriter(tmp, SUFFIX[image_format], clusters, samples_per_tar)
    try:
        with open(tmp / "metadata.csv", "w", newline="") as fh:
            table = csv.writer(fh)
            table.writerow([*header, "file"])
            encoded = _encoded(store, indices, image_format, quality, threads or available_cores())
            for (index, data), row in zip(encoded, manifest_rows(store, indices), strict=True):
                table.writerow(spreadsheet_safe([*row, writer.add(index, data, dict(zip(header, row, strict=True)))]))
                bar.update(1)
        writer.close()
        summary = {
            "store": str(store_root),
            "out": str(out),
            "format": export_format,
            "image_format": image_format,
            "quality": quality if image_format == "jpeg" else None,
            "rois": len(indices),
            "store_rois": len(store),
            "query": None if query is None else json.loads(json.dumps(asdict(query), default=str)),
        }
        (tmp / MARKER).write_text(json.dumps(summary, indent=2))
        lock.release()
        if out.exists():
            shutil.rmtree(out)  # a previous export (checked above): replaced only now that this one is complete
        os.replace(tmp, out)
    finally:
        writer.close()
        bar.close()
        lock.release()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary
