"""A realistic candidate pool: real blood cells of known class mixed with the junk a smear scan gives.

In PBC every image is one clean, centred cell, so a pool made of PBC alone holds nothing for selection to
throw away. On a real smear the filter's candidates also hold red-cell clumps, stain debris and
background. This module builds a pool with both, from real images only:

- cells: the engine's filter run on the PBC images (each ROI takes its image's class);
- junk: the filter run with relaxed colour bounds (`JUNK_FILTER`: any hue, saturation >= 60) on BCCD smear
  tiles; a ROI whose box meets no annotated white cell or platelet is junk, one that meets one is a BCCD
  cell of unknown type (kept in the pool, left out of the class tables);

and concatenates the two stores into one candidate store that `select` reads like any other.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from activessf_engine.config import EngineConfig, HsvRange, replace_section, to_dict
from activessf_engine.filter.run import run_filter
from activessf_engine.store.layout import ROI_COLUMNS
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.writer import PartData, StoreWriter

JUNK = "junk"
BCCD_CELL = "bccd-cell"  # a white cell or platelet of a BCCD smear: a real cell whose type is not annotated
CELL_ANNOTATIONS = ("WBC", "Platelets")
# A relaxed filter, as a user whose stain or scanner is off the paper's ranges might run: any hue with some
# saturation, a looser fill rate and a smaller box. On BCCD it takes red-cell clumps and debris besides cells.
JUNK_FILTER = {"purple": HsvRange(h=(0, 179), s=(60, 255), v=(0, 255)), "min_fill": 0.4, "min_box": 50}


def bccd_tiles(bccd: Path, splits: tuple[str, ...], limit: int) -> list[Path]:
    """The first `limit` tiles (by name) of the given ImageSets/Main splits that have an annotation file."""
    names = sorted(
        {
            line.strip()
            for split in splits
            for line in (bccd / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        }
    )
    tiles = [bccd / "JPEGImages" / f"{n}.jpg" for n in names if (bccd / "Annotations" / f"{n}.xml").is_file()]
    return tiles[:limit]


def cell_boxes(annotation: Path) -> np.ndarray:
    """(m, 4) x0, y0, x1, y1 of the white cells and platelets of one Pascal VOC file."""
    boxes = []
    for obj in ET.parse(annotation).getroot().iter("object"):
        if (obj.findtext("name") or "").strip() in CELL_ANNOTATIONS:
            boxes.append([float(obj.findtext(f"bndbox/{t}") or 0) for t in ("xmin", "ymin", "xmax", "ymax")])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _meets(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(n,) whether each box overlaps any of `others` (positive-area intersection)."""
    if not len(others) or not len(boxes):
        return np.zeros(len(boxes), dtype=bool)
    x = np.minimum(boxes[:, None, 2], others[None, :, 2]) > np.maximum(boxes[:, None, 0], others[None, :, 0])
    y = np.minimum(boxes[:, None, 3], others[None, :, 3]) > np.maximum(boxes[:, None, 1], others[None, :, 1])
    return (x & y).any(1)


def junk_truth(paths: np.ndarray, boxes: np.ndarray, bccd: Path) -> np.ndarray:
    """JUNK or BCCD_CELL for ROIs of BCCD tiles (their source paths and boxes), by the tiles' annotations."""
    truth = np.empty(len(paths), dtype=object)
    for path in sorted(set(paths.tolist())):
        rows = np.flatnonzero(paths == path)
        annotated = cell_boxes(bccd / "Annotations" / f"{Path(path).stem}.xml")
        truth[rows] = np.where(_meets(boxes[rows].astype(np.float64), annotated), BCCD_CELL, JUNK)
    return truth


def filter_junk(tiles: list[Path], work: Path, config: EngineConfig, device: str) -> Path:
    """The relaxed filter's candidate store of `tiles` (a list file beside it names them); reused when done."""
    work.mkdir(parents=True, exist_ok=True)
    listing = work / "junk-tiles.txt"
    listing.write_text("".join(f"{t.resolve()}\n" for t in tiles))
    out = work / "junk-candidates"
    junk_config = replace_section(config, "filter", **JUNK_FILTER)
    run_filter(listing, out, junk_config, device=device)
    return out


def concat_stores(stores: list[Path], out: Path) -> RoiStore:
    """One candidate store holding every part of `stores`, in order (ROIs, columns and sources tables).
    A complete store at `out` pooled from the same stores is reused, with its feature cache."""
    pooled_from = [str(Path(s).resolve()) for s in stores]
    if (out / "zarr.json").is_file():
        existing = RoiStore(out)
        if existing.complete and existing.meta.get("pooled_from") == pooled_from:
            return existing
    readers = [RoiStore(s) for s in stores]
    sizes = {int(r.meta["config"]["crop"]["size"]) for r in readers}
    if len(sizes) != 1:
        raise ValueError(f"stores of different ROI sizes cannot be pooled: {sorted(sizes)}")
    plan = [[s["path"] for s in r.part_attrs(p)["sources"]] for r in readers for p in r.parts]
    attrs = {"config": readers[0].meta["config"], "pooled_from": pooled_from}
    with StoreWriter.create(out, "candidates", attrs, plan, overwrite=True) as writer:
        index = 0
        for reader in readers:
            for part in reader.parts:
                columns = {name: reader.part_column(part, name) for name in ROI_COLUMNS}
                sources = reader.part_attrs(part)["sources"]
                writer.commit_part(index, PartData(reader.part_rois(part), columns, sources))
                index += 1
    return RoiStore(out)


def pool_key(config: EngineConfig) -> dict:
    """What decides the junk store's contents besides its tiles (for naming a reusable work folder)."""
    return {"filter": to_dict(replace_section(config, "filter", **JUNK_FILTER).filter), "crop": to_dict(config.crop)}
