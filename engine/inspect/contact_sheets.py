"""Contact sheets: ROIs of a store drawn as labelled rows of thumbnails (PNG), for a person to look at.

A candidates store gives one sheet of rows by source (a spread of sources, a few ROIs each). A selected
store adds one sheet of rows by cluster: the ROIs kept (green frame) beside candidates of the same cluster
that selection left out (red frame), read from the candidates store and its decisions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from PIL import Image, ImageDraw, ImageFont

from activessf_engine.store import RoiStore

log = logging.getLogger(__name__)

THUMB = 96  # thumbnail side in pixels
GAP = 4  # pixels between thumbnails
LABEL_HEIGHT = 18  # the text line above each row
KEPT, LEFT_OUT, PLAIN = (40, 160, 60), (200, 40, 40), (255, 255, 255)  # frame colours


@dataclass
class SheetRow:
    """One row of a sheet: a label, then groups of ROIs, each group framed in one colour."""

    label: str
    groups: list[tuple[np.ndarray, tuple[int, int, int]]]  # ((n, S, S, 3) uint8 ROIs, frame colour)


def draw_sheet(rows: list[SheetRow], title: str) -> Image.Image:
    """A sheet of labelled rows of thumbnails on a light background."""
    font = ImageFont.load_default(size=13)
    slots = max((sum(len(r) for r, _ in row.groups) + len(row.groups) - 1 for row in rows), default=1)
    width = max(GAP + slots * (THUMB + GAP), 480)
    height = LABEL_HEIGHT + GAP + len(rows) * (LABEL_HEIGHT + THUMB + 2 * GAP) + GAP
    sheet = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 2), title, fill=(0, 0, 0), font=font)
    y = LABEL_HEIGHT + GAP
    for row in rows:
        draw.text((GAP, y), row.label, fill=(30, 30, 30), font=font)
        y += LABEL_HEIGHT
        x = GAP
        for rois, colour in row.groups:
            for roi in rois:
                sheet.paste(Image.fromarray(roi).resize((THUMB, THUMB), Image.Resampling.BILINEAR), (x, y))
                draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), outline=colour, width=3)
                x += THUMB + GAP
            x += THUMB // 2  # a gap between the groups of a row
        y += THUMB + 2 * GAP
    return sheet


def _spread(items: int, count: int) -> np.ndarray:
    """`count` indices spread evenly over range(items) (all of them if there are fewer)."""
    if items <= count:
        return np.arange(items)
    return np.unique(np.linspace(0, items - 1, count).round().astype(np.int64))


def _read(store: RoiStore, indices: np.ndarray) -> np.ndarray:
    size = int(store.meta["config"]["crop"]["size"])
    return np.stack([store.roi(int(i)) for i in indices]) if len(indices) else np.zeros((0, size, size, 3), np.uint8)


def _more(shown: int, total: int, what: str = "") -> str:
    """ ", +N more" where a row shows `shown` of `total` ROIs."""
    return f", +{total - shown} more{what}" if total > shown else ""


def source_rows(store: RoiStore, rows: int = 12, per_row: int = 8) -> tuple[list[SheetRow], int]:
    """Rows of ROIs by source: `rows` sources with ROIs, spread over the store's order, `per_row` ROIs each;
    and how many sources have ROIs."""
    paths = store.columns()["source_path"]
    names, first = np.unique(paths, return_index=True) if len(paths) else (np.array([]), np.array([], np.int64))
    order = np.argsort(first)
    picked = []
    for k in _spread(len(order), rows):
        name = names[order[k]]
        mine = np.flatnonzero(paths == name)
        rois = _read(store, mine[_spread(len(mine), per_row)])
        picked.append(
            SheetRow(f"{name}: {len(mine)} ROI(s){_more(len(rois), len(mine), ' not shown')}", [(rois, PLAIN)])
        )
    return picked, len(names)


@dataclass
class StoredDecisions:
    """The per-candidate decisions a `select` run stored beside its selected store."""

    cluster: np.ndarray
    distance: np.ndarray
    threshold: np.ndarray
    selected: np.ndarray

    @classmethod
    def load(cls, selected_root: str | Path) -> StoredDecisions:
        group = zarr.open_group(str(Path(selected_root) / "decisions"), mode="r")
        return cls(*(np.asarray(group[name][:]) for name in ("cluster", "distance", "threshold", "selected")))


def candidates_of(selected: RoiStore) -> RoiStore | None:
    """The candidates store a selected store was made from, if it is still where it was (else None, logged)."""
    path = selected.meta.get("candidates")
    try:
        return RoiStore(path) if path else None
    except (FileNotFoundError, ValueError) as exc:
        log.warning(
            "the candidates store of %s cannot be read (%s): its rejected ROIs are not shown", selected.root, exc
        )
        return None


def cluster_rows(
    candidates: RoiStore, decisions: StoredDecisions, clusters: list[dict], per_side: int = 6
) -> list[SheetRow]:
    """One row per cluster with candidates: those kept (nearest first) beside those left out (nearest first).
    `clusters` is the selected store's summary table (dominant class, n_i, threshold)."""
    rows = []
    for info in clusters:
        mine = np.flatnonzero(decisions.cluster == info["cluster"])
        if not len(mine):
            continue
        mine = mine[np.argsort(decisions.distance[mine], kind="stable")]
        kept, left = mine[decisions.selected[mine]], mine[~decisions.selected[mine]]
        shown_kept, shown_left = kept[:per_side], left[:per_side]
        label = (
            f"cluster {info['cluster']} ({info['dominant_class']}, n_i={info['n']}, "
            f"threshold {info.get('threshold', 0):.2f}): kept {len(kept)} of {len(mine)}"
            f"{_more(len(shown_kept), len(kept), ' kept')}  |  left out, nearest first"
            f"{_more(len(shown_left), len(left), ' left out')}"
        )
        groups = [(_read(candidates, shown_kept), KEPT), (_read(candidates, shown_left), LEFT_OUT)]
        rows.append(SheetRow(label, groups))
    return rows


@dataclass
class ContactSheets:
    """The sheets written, and how many sources the by-source sheet shows of those with ROIs."""

    paths: list[Path]
    sources_shown: int
    sources_with_rois: int


def write_contact_sheets(
    store_path: str | Path, out_dir: str | Path, rows: int = 12, per_row: int = 8
) -> ContactSheets:
    """Contact sheets of the store at `store_path` as PNG files in `out_dir`."""
    store = RoiStore(store_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    title = f"{store.root.name}: {len(store)} ROIs of a {store.kind} store"
    by_source = out / "sheet-sources.png"
    sources, with_rois = source_rows(store, rows, per_row)
    draw_sheet(sources, f"{title}, by source: {len(sources)} of the {with_rois} sources with ROIs").save(by_source)
    written.append(by_source)
    candidates = candidates_of(store) if store.kind == "selected" else None
    if candidates is not None:
        sheet = cluster_rows(
            candidates, StoredDecisions.load(store.root), read_summary(store)["clusters"], per_row // 2 + 1
        )
        by_cluster = out / "sheet-clusters.png"
        draw_sheet(sheet, f"{title}, by cluster: kept (green) and left out (red)").save(by_cluster)
        written.append(by_cluster)
    return ContactSheets(written, len(sources), with_rois)


def read_summary(store: RoiStore) -> dict:
    """The summary a `select` run wrote into its selected store's attributes."""
    summary = dict(zarr.open_group(str(store.root), mode="r").attrs).get("summary")
    if summary is None:
        raise ValueError(f"{store.root} holds no select summary: was it made by `activessf-engine select`?")
    return summary
