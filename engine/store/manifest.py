"""The per-ROI table of a store, one row per ROI, as `manifest` prints it and exports write it beside the images."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from activessf_engine.store.reader import RoiStore

# Table columns made from a store column with several values per ROI.
SPLIT_COLUMNS = {
    "box": ("x0", "y0", "x1", "y1"),
    "crop_box": ("crop_x0", "crop_y0", "crop_x1", "crop_y1"),
    "pad": ("pad_left", "pad_top", "pad_right", "pad_bottom"),
    "level0_box": ("l0_x0", "l0_y0", "l0_x1", "l0_y1"),  # in level-0 pixels of the slide
}
# after roi and source, in this order
LEADING = ("box", "area", "fill_rate", "crop_box", "part", "pad", "slide", "level", "level0_box")
LATER = ("cluster", "distance", "threshold", "candidate")  # added by `select`, in this order
UNLISTED = ("source", "source_path")  # the source's index in its part and its path: the table has the path
# A spreadsheet reads a cell that starts with one of these as a formula (CSV injection, OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _order(columns: dict[str, np.ndarray]) -> list[str]:
    leading = [c for c in LEADING if c in columns]
    later = [c for c in LATER if c in columns]
    rest = sorted(c for c in columns if c not in (*LEADING, *LATER, *UNLISTED))
    return [*leading, *later, *rest]


def manifest_header(store: RoiStore) -> list[str]:
    """The table's column names: roi, source, x0 y0 x1 y1, area, fill_rate, crop_*, part, pad_*, slide, level,
    l0_* (slide stores), then the rest."""
    names = _order(store.columns())
    return ["roi", "source", *(n for name in names for n in SPLIT_COLUMNS.get(name, (name,)))]


def _cell(value: Any, name: str) -> list[Any]:
    if name in SPLIT_COLUMNS:
        return value.tolist()
    if name == "fill_rate":
        return [round(float(value), 4)]  # a number (in exports' JSON too), to the filter's precision
    return [value.item() if isinstance(value, np.generic) else value]  # numpy scalars, or str of object columns


def manifest_rows(store: RoiStore, indices: np.ndarray | None = None) -> Iterator[list[Any]]:
    """One row per ROI (all, or the global indices given), in the order of `manifest_header`."""
    columns = store.columns()
    names = _order(columns)
    for i in range(len(store)) if indices is None else indices.tolist():
        yield [i, str(columns["source_path"][i]), *(v for name in names for v in _cell(columns[name][i], name))]


def spreadsheet_safe(row: list[Any]) -> list[Any]:
    """A row for a CSV file: text that a spreadsheet would run as a formula (a source named ``=cmd|...``) gets a
    leading ``'``, which spreadsheets show as text; numbers are left as they are."""
    return [f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v for v in row]
