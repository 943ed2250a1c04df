"""Writing a store: created or reopened under its lock, each part written whole and renamed into place."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import weakref
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from activessf_engine import __version__
from activessf_engine.config import StoreConfig
from activessf_engine.device import available_cores
from activessf_engine.store.layout import (
    CHECKSUM_COLUMN,
    FORMAT_VERSION,
    ROOT_PARTIAL,
    committed_parts,
    damaged_parts,
    is_store,
    part_name,
    read_attrs,
)
from activessf_engine.store.lock import LOCK_NAME, StoreLock
from activessf_engine.store.overwrite import check_overwrite, store_artefact
from activessf_engine.store.shard_writer import roi_codec, write_column, write_group, write_rois

log = logging.getLogger(__name__)


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
    """A part's files: its ROIs (sharded), its columns and the group's zarr.json (`shard_writer`)."""
    n, size = data.rois.shape[0], data.rois.shape[1] if data.rois.ndim == 4 else 0
    shard_rows = max(1, min(n, layout.rois_per_shard))
    threads = layout.write_threads or available_cores()
    write_rois(path / "rois", data.rois, shard_rows, roi_codec(layout), threads)
    columns = {**data.columns, CHECKSUM_COLUMN: roi_checksums(data.rois)}
    for name, col in columns.items():
        write_column(path / name, col)
    checksums = {name: column_checksum(col) for name, col in columns.items()}
    write_group(path, {**attrs, "rois": n, "roi_size": size, "sources": data.sources, "checksums": checksums})


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
        inputs: Iterable[str | Path] = (),
    ) -> StoreWriter:
        """Create a store, or reopen an existing one of the same kind and plan to resume it, under its lock.

        New sources may be appended to an existing plan as new parts; a plan that lost or moved
        sources is refused (the parts already written would no longer mean the same thing), and so is a
        resume for which `same_output(existing metadata)` lists differences. `overwrite` replaces only a
        store of the same `kind` that holds nothing but what the engine wrote, and none of `inputs` (the
        command's inputs: `overwrite.check_overwrite`); a folder with anything else in it is never deleted.
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise FileExistsError(f"{root} is a file, not a store; choose another --out")
        existing = is_store(root)
        if not existing and (root / "zarr.json").is_file():
            read_attrs(root)  # raises, naming the damaged (or foreign) root metadata and the fix
        # the lock, and root metadata a killed creation left unrenamed, are all a store's folder holds at first
        if root.exists() and not existing and any(p.name not in (LOCK_NAME, ROOT_PARTIAL) for p in root.iterdir()):
            raise FileExistsError(
                f"{root} exists and is not an activessf-engine store; choose another --out "
                "(--overwrite replaces only stores, never other folders)"
            )
        writer = cls(root, layout)
        writer._lock = StoreLock(root)
        writer._lock.acquire()
        writer._finalizer = weakref.finalize(writer, writer._lock.release)
        try:
            if overwrite and existing:
                check_overwrite(root, store_artefact(kind), inputs)
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


def _clear(root: Path) -> None:
    """Remove everything in a store folder but its lock (which the caller holds)."""
    for entry in root.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
