"""Check a store and say what is wrong with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from activessf_engine.store import ROI_COLUMNS, RoiStore, part_name


def verify_store(root: str | Path, deep: bool = False) -> list[str]:
    """Problems found in the store at `root` (empty when it is sound).

    Checks the metadata, that every part of the plan is committed, that each part's arrays agree in
    length with its ROI count and its sources table, that boxes lie inside their sources and fill
    rates in [0, 1], and leftovers of interrupted writes. `deep` also reads every ROI chunk.
    """
    problems: list[str] = []
    try:
        store = RoiStore(root)
    except (FileNotFoundError, ValueError) as exc:
        return [str(exc)]
    plan = store.meta.get("plan", [])
    missing = sorted(set(range(len(plan))) - set(store.parts))
    if missing:
        shown = ", ".join(part_name(p) for p in missing[:10]) + (" ..." if len(missing) > 10 else "")
        problems.append(f"incomplete: {len(missing)} of {len(plan)} parts not committed ({shown}); run again to resume")
    extra = sorted(set(store.parts) - set(range(len(plan))))
    if extra:
        problems.append(f"parts outside the plan: {', '.join(part_name(p) for p in extra)}")
    leftovers = list((Path(root) / "parts").glob(".tmp-*"))
    if leftovers:
        problems.append(f"{len(leftovers)} half-written part(s) from an interrupted run (removed when it resumes)")
    for part in store.parts:
        problems.extend(_verify_part(store, part, plan, deep))
    return problems


def _verify_part(store: RoiStore, part: int, plan: list[list[str]], deep: bool) -> list[str]:
    name = part_name(part)
    attrs = store.part_attrs(part)
    sources = attrs.get("sources", [])
    n = int(attrs.get("rois", -1))
    problems = []
    try:
        rois = store.part_array(part, "rois")
    except KeyError:
        return [f"{name}: no rois array"]
    if rois.shape[0] != n:
        problems.append(f"{name}: rois has {rois.shape[0]} rows, the part says {n}")
    if part < len(plan) and [s["path"] for s in sources] != plan[part]:
        problems.append(f"{name}: its sources differ from the plan")
    listed = sum(int(s.get("rois", 0)) for s in sources)
    if store.kind == "candidates" and listed != n:
        problems.append(f"{name}: the sources table counts {listed} ROIs, not {n}")
    for column in ROI_COLUMNS:
        try:
            rows = store.part_array(part, column).shape[0]
        except KeyError:
            problems.append(f"{name}: column {column!r} missing")
            continue
        if rows != n:
            problems.append(f"{name}: column {column!r} has {rows} rows, not {n}")
    if problems:
        return problems
    source_index = store.part_column(part, "source")
    if n and (source_index.min() < 0 or source_index.max() >= len(sources)):
        return [f"{name}: a ROI points to a source outside the part's table"]
    boxes = store.part_column(part, "box").astype(np.int64)
    widths = np.array([sources[i]["width"] for i in source_index], dtype=np.int64)
    heights = np.array([sources[i]["height"] for i in source_index], dtype=np.int64)
    bad = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > widths) | (boxes[:, 3] > heights)
    bad |= (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        problems.append(f"{name}: {int(bad.sum())} box(es) outside their source image")
    fill = store.part_column(part, "fill_rate")
    if ((fill < 0) | (fill > 1) | ~np.isfinite(fill)).any():
        problems.append(f"{name}: fill rates outside [0, 1]")
    if deep:
        for row in range(n):
            try:
                np.asarray(rois[row])
            except Exception as exc:  # any read failure of a chunk is a finding, not a crash
                problems.append(f"{name}: ROI {row} unreadable: {type(exc).__name__}: {exc}")
                break
    return problems
