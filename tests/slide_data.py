"""Small real-format whole slides for the tests: a mosaic of the bundled BCCD smears on white glass, written
as a pyramidal tiled TIFF (plain, OME or Aperio SVS layout) with microns per pixel in its metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from conftest import BCCD
from PIL import Image

# (BCCD image, x, y) on the mosaic's level 0. Slide tiles of 768 overlapping by 256 at level 0 (384 by 128 at
# level 1) have cores meeting at x = 640, 1152, 1664, ... and y = 640, 1152: the white blood cell of 00016 lies
# across the border x = 640, and those of 00023, 00054 and 00053 across a corner where four tiles overlap, so
# each of them lies whole in two or four tiles. The glass right of x = 3340 and below the smears is background.
MOSAIC_LAYOUT = (
    ("BloodImage_00016.jpg", 400, 202),
    ("BloodImage_00054.jpg", 949, 1039),
    ("BloodImage_00023.jpg", 1475, 520),
    ("BloodImage_00053.jpg", 2002, 1075),
    ("BloodImage_00135.jpg", 100, 1200),
    ("BloodImage_00171.jpg", 2700, 300),
)
MOSAIC_SIZE = (4096, 1792)  # width, height
GLASS = (246, 244, 242)  # the slide's bare glass: nearly white, unsaturated


def mosaic() -> np.ndarray:
    """The level-0 pixels: the BCCD tiles of MOSAIC_LAYOUT on glass, (H, W, 3) uint8."""
    width, height = MOSAIC_SIZE
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = GLASS
    for name, x, y in MOSAIC_LAYOUT:
        tile = np.asarray(Image.open(BCCD / name).convert("RGB"))
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return canvas


def wbc_boxes() -> list[tuple[int, int, int, int]]:
    """The annotated white blood cells of the mosaic, in level-0 pixels (x0, y0, x1, y1)."""
    import xml.etree.ElementTree as ET

    boxes = []
    for name, x, y in MOSAIC_LAYOUT:
        root = ET.parse(BCCD / "Annotations" / name.replace(".jpg", ".xml")).getroot()
        for obj in root.iter("object"):
            if obj.findtext("name") == "WBC":
                b = obj.find("bndbox")
                x0, y0, x1, y1 = (round(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
                boxes.append((x0 + x, y0 + y, x1 + x, y1 + y))
    return boxes


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """`image` and its 2x2-mean reductions: level k has 2^k times fewer pixels on a side (odd edges dropped)."""
    out = [image]
    for _ in range(levels - 1):
        top = out[-1]
        h, w = top.shape[0] // 2 * 2, top.shape[1] // 2 * 2
        blocks = top[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).astype(np.uint16)
        out.append(((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8))
    return out


def write_slide(
    path: Path,
    image: np.ndarray,
    *,
    layout: str = "tiff",
    levels: int = 3,
    mpp: float | None = 0.25,
    tile: int = 256,
    compression: str = "zlib",
) -> list[np.ndarray]:
    """Write `image` as a pyramidal tiled TIFF; returns the levels written.

    `layout`: "tiff" (levels in the main IFD chain, microns per pixel in the resolution tags: what OpenSlide
    reads as generic-tiff), "ome" (levels as SubIFDs, PhysicalSizeX in the OME-XML) or "svs" (Aperio: a
    thumbnail as second page, MPP in the ImageDescription). `mpp` None writes no resolution at all.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    planes = pyramid(image, levels)
    common = {"tile": (tile, tile), "compression": compression, "photometric": "rgb"}
    with tifffile.TiffWriter(path, ome=layout == "ome", bigtiff=False) as tw:
        if layout == "ome":
            meta = {"axes": "YXS"}
            if mpp is not None:
                meta.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
            tw.write(planes[0], subifds=levels - 1, metadata=meta, **common)
            for plane in planes[1:]:
                tw.write(plane, subfiletype=1, metadata=None, **common)
        elif layout == "svs":
            header = f"Aperio Image Library v12.0.15\r\n{image.shape[1]}x{image.shape[0]} ({tile}x{tile}) RGB"
            described = header + ("" if mpp is None else f"|AppMag = 40|MPP = {mpp}")
            tw.write(planes[0], description=described, metadata=None, **common)
            thumb = planes[-1][::2, ::2]
            tw.write(thumb, description=header + " -> thumbnail", metadata=None, photometric="rgb")
            for plane in planes[1:]:
                tw.write(plane, description=described, metadata=None, **common)
        else:
            for k, plane in enumerate(planes):
                resolution = {}
                if mpp is not None:
                    per_cm = 1e4 / (mpp * 2**k)
                    resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
                tw.write(plane, subfiletype=1 if k else 0, metadata=None, **resolution, **common)
    return planes
