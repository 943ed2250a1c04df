"""Check a store and say what is wrong with it, part by part and ROI by ROI; set damaged parts aside.

Every check reads what it needs and turns any failure into a finding: a damaged store never crashes
`verify`. Since store format 2 each part carries a crc32 of every column (attribute ``checksums``) and of
every ROI's pixels (column ``roi_crc32``): a flipped byte, an edited value, a truncated column or a
deleted shard (which reads back as zeros) shows up as a mismatch naming the part and the ROIs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from activessf_engine.store.layout import (
    CHECKSUM_COLUMN,
    ROI_COLUMNS,
    damaged_parts,
    part_name,
    read_attrs,
    roi_column_names,
)
from activessf_engine.store.lock import StoreLock
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.writer import column_checksum, roi_checksums

QUARANTINE = "quarantine"  # where `repair_store` moves damaged parts, inside the store
SHOWN = 10  # ROIs named per finding


def verify_store(root: str | Path, deep: bool = False) -> list[str]:
    """Problems found in the store at `root` (empty when it is sound).

    Checks the metadata, that every part of the plan is committed and no part folder is damaged, that
    each part's arrays agree in length with its ROI count and its sources table, every column against
    its checksum, that boxes lie inside their sources and fill rates in [0, 1], and leftovers of
    interrupted writes. `deep` also reads every ROI and compares it with its checksum.
    """
    return [problem for _, problem in _findings(root, deep)]


def repair_store(root: str | Path) -> tuple[list[str], list[str]]:
    """`verify --deep`, then every part with a finding (and every damaged part folder) moved to
    ``<store>/quarantine/``, with its cached features dropped, so that resuming the filter redoes them; all
    under the store's lock. Only candidate stores: a selected store is made again with `select --overwrite`.
    Returns the problems found and what was done.
    """
    root = Path(root)
    with StoreLock(root):
        findings = list(_findings(root, deep=True))
        names = sorted({part_name(part) for part, _ in findings if part is not None} | set(damaged_parts(root)))
        store_kind = read_attrs(root).get("kind") if findings or names else "candidates"
        if store_kind != "candidates":
            raise ValueError(f"{root} is a {store_kind!r} store: make it again with `select --overwrite`")
        stamp = time.strftime("%Y%m%dT%H%M%S")
        done = []
        for name in names:
            target = root / QUARANTINE / f"{name}-{stamp}"
            target.parent.mkdir(exist_ok=True)
            (root / "parts" / name).rename(target)
            for cached in (root / "features").glob(f"*/{name}"):
                shutil.rmtree(cached, ignore_errors=True)
            done.append(f"{name}: moved to {target.relative_to(root)}; run the filter again to redo it")
    return [problem for _, problem in findings], done


def _findings(root: str | Path, deep: bool) -> Iterator[tuple[int | None, str]]:
    """(part or None, problem) for everything wrong with the store."""
    try:
        store = RoiStore(root, check_rois=False)  # it compares every ROI itself, and names them all
    except Exception as exc:  # a store too damaged to open is a finding too
        yield None, f"{root}: cannot be opened: {exc}"
        return
    plan = store.meta.get("plan", [])
    missing = sorted(set(range(len(plan))) - set(store.parts))
    if missing:
        shown = ", ".join(part_name(p) for p in missing[:SHOWN]) + (" ..." if len(missing) > SHOWN else "")
        yield None, f"incomplete: {len(missing)} of {len(plan)} parts not committed ({shown}); run again to resume"
    extra = sorted(set(store.parts) - set(range(len(plan))))
    if extra:
        yield None, f"parts outside the plan: {', '.join(part_name(p) for p in extra)}"
    for name in damaged_parts(root):
        yield None, f"{name}: its zarr.json is missing or unreadable (damaged); `verify --repair` sets it aside"
    leftovers = list((Path(root) / "parts").glob(".tmp-*"))
    if leftovers:
        yield None, f"{len(leftovers)} half-written part(s) from an interrupted run (removed when it resumes)"
    store_format = int(store.meta.get("format", 1))
    for part in store.parts:
        try:
            problems = _verify_part(store, part, plan, deep, store_format)
        except Exception as exc:  # whatever else is broken in a part is reported, never raised
            problems = [f"{part_name(part)}: cannot be checked: {type(exc).__name__}: {exc}"]
        for problem in problems:
            yield part, problem


def _read_column(store: RoiStore, part: int, column: str) -> np.ndarray | str:
    try:
        return store.part_column(part, column)
    except KeyError:
        return f"{part_name(part)}: column {column!r} missing"
    except Exception as exc:
        return f"{part_name(part)}: column {column!r} unreadable: {type(exc).__name__}: {exc}"


def _verify_part(store: RoiStore, part: int, plan: list[list[str]], deep: bool, store_format: int) -> list[str]:
    name = part_name(part)
    checksummed = store_format >= 2
    attrs = store.part_attrs(part)
    sources = attrs.get("sources", [])
    n = int(attrs.get("rois", -1))
    try:
        rois = store.part_array(part, "rois")
    except KeyError:
        return [f"{name}: no rois array"]
    problems = []
    if rois.shape[0] != n:
        problems.append(f"{name}: rois has {rois.shape[0]} rows, the part says {n}")
    if part < len(plan) and [s["path"] for s in sources] != plan[part]:
        problems.append(f"{name}: its sources differ from the plan")
    listed = sum(int(s.get("rois", 0)) for s in sources)
    if store.kind == "candidates" and listed != n:
        problems.append(f"{name}: the sources table counts {listed} ROIs, not {n}")
    expected = attrs.get("checksums", {}) if checksummed else {}
    if checksummed and not expected:
        problems.append(f"{name}: no checksums in its attributes")
    columns: dict[str, np.ndarray] = {}
    for column in (*roi_column_names(store.meta), *(c for c in expected if c not in ROI_COLUMNS)):
        values = _read_column(store, part, column)
        if isinstance(values, str):
            problems.append(values)
        elif len(values) != n:
            problems.append(f"{name}: column {column!r} has {len(values)} rows, not {n}")
        elif column in expected and column_checksum(values) != expected[column]:
            problems.append(f"{name}: column {column!r} differs from its checksum (edited or damaged)")
        else:
            columns[column] = values
    if problems:
        return problems
    problems += _check_values(name, columns, sources)
    if deep and n:
        problems += _check_pixels(store, part, n, columns.get(CHECKSUM_COLUMN))
    return problems


def _check_values(name: str, columns: dict[str, np.ndarray], sources: list[dict]) -> list[str]:
    source_index = columns["source"]
    if len(source_index) and (source_index.min() < 0 or source_index.max() >= len(sources)):
        return [f"{name}: a ROI points to a source outside the part's table"]
    problems = []
    boxes = columns["box"].astype(np.int64)
    widths = np.array([sources[i]["width"] for i in source_index], dtype=np.int64)
    heights = np.array([sources[i]["height"] for i in source_index], dtype=np.int64)
    bad = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > widths) | (boxes[:, 3] > heights)
    bad |= (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        problems.append(f"{name}: {int(bad.sum())} box(es) outside their source image")
    fill = columns["fill_rate"]
    if ((fill < 0) | (fill > 1) | ~np.isfinite(fill)).any():
        problems.append(f"{name}: fill rates outside [0, 1]")
    return problems


def _check_pixels(store: RoiStore, part: int, n: int, expected: np.ndarray | None) -> list[str]:
    """Every ROI read and, where the part has them, compared with its checksum."""
    name = part_name(part)
    try:
        pixels, unreadable = dict(enumerate(store.part_rois(part))), []
    except Exception:  # a damaged chunk: find which, one ROI at a time
        pixels, unreadable = _read_one_by_one(store, part, n)
    problems = []
    if unreadable:
        problems.append(f"{name}: {len(unreadable)} ROI(s) unreadable (damaged chunks): rows {_rows(unreadable)}")
    if expected is not None and pixels:
        rows = sorted(pixels)
        actual = roi_checksums(np.stack([pixels[r] for r in rows]))
        differ = [r for r, a in zip(rows, actual, strict=True) if a != expected[r]]
        if differ:
            problems.append(
                f"{name}: {len(differ)} ROI(s) differ from their checksums (damaged pixels or a missing shard): "
                f"rows {_rows(differ)}"
            )
    return problems


def _read_one_by_one(store: RoiStore, part: int, n: int) -> tuple[dict[int, np.ndarray], list[int]]:
    pixels, unreadable = {}, []
    for row in range(n):
        try:
            pixels[row] = store.part_rois(part, np.array([row]))[0]
        except Exception:
            unreadable.append(row)
    return pixels, unreadable


def _rows(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:SHOWN])) + (f" ... ({len(rows)} in all)" if len(rows) > SHOWN else "")
