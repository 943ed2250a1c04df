"""Whole-slide readers: the levels, microns per pixel and regions of a slide, from a well-kept library.

One interface (`SlideReader`), one implementation per library, picked by name from `SLIDE_READERS`:
`tifffile` reads pyramidal and OME TIFF and Aperio .svs by decoding only the TIFF tiles a region covers;
`openslide` reads every format OpenSlide knows (`pip install 'activessf-engine[slides]'`); `cucim` reads what
cuCIM reads, where it is installed (never required), on the host. Regions are (H, W, 3) uint8 RGB in the
pixels of the level read. A reader is not shared between threads: `slides` opens one per reading thread.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

# Microns per pixel outside this range are not a microscope's (72 dpi written by an image editor is 353 um).
MPP_RANGE = (0.01, 50.0)
PLAIN_TIFF = (".tif", ".tiff")  # a slide when pyramidal, OME, Aperio or Hamamatsu; else a tile file
# Read with tifffile under `auto`: tiled TIFFs, where it measured 6x OpenSlide's tiles/s (benchmarks/README.md).
# Hamamatsu .ndpi stores a level as one JPEG, which tifffile would decode whole: OpenSlide reads it by tiles.
TIFFFILE_FIRST = (*PLAIN_TIFF, ".svs")


class SlideReader(Protocol):
    """An open slide. `sizes[k]` is level k's (width, height); `downsamples[k]` its level-0 pixels per pixel."""

    name: str
    sizes: list[tuple[int, int]]
    downsamples: list[float]
    mpp: float | None  # level-0 microns per pixel from the metadata, None when it has none

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The region of `level` at (x, y) of `width` x `height` level pixels, (height, width, 3) uint8."""
        ...

    def close(self) -> None: ...


def _plausible(mpp: float | None) -> float | None:
    return mpp if mpp is not None and math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1] else None


def _downsamples(sizes: list[tuple[int, int]]) -> list[float]:
    """Level-0 pixels per level pixel, the mean of both axes' ratios (as OpenSlide computes them)."""
    w0, h0 = sizes[0]
    return [(w0 / w + h0 / h) / 2 for w, h in sizes]


class TiffSlideReader:
    """Pyramidal and OME TIFF (and .svs/.ndpi) through tifffile: a region decodes only the tiles it covers."""

    name = "tifffile"

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self._file = tifffile.TiffFile(path)
        try:
            self._pages = [level.keyframe for level in self._file.series[0].levels]
            for page in self._pages:
                if page.samplesperpixel not in (1, 3, 4) or page.dtype != np.uint8 or page.planarconfig != 1:
                    raise ValueError(
                        f"{Path(path).name}: only 8-bit gray, RGB or RGBA slides with interleaved samples are read "
                        f"(level of {page.samplesperpixel} samples of {page.dtype}, planar configuration "
                        f"{page.planarconfig})"
                    )
            self.sizes = [(int(p.imagewidth), int(p.imagelength)) for p in self._pages]
            self.downsamples = _downsamples(self.sizes)
            self.mpp = _plausible(self._metadata_mpp())
        except BaseException:
            self._file.close()
            raise

    def _metadata_mpp(self) -> float | None:
        """Level-0 microns per pixel: OME's PhysicalSizeX, Aperio's MPP, or the resolution tags (cm or inch)."""
        import tifffile

        tf, page = self._file, self._pages[0]
        if tf.is_ome:
            pixels = tifffile.xml2dict(tf.ome_metadata).get("OME", {}).get("Image", {})
            pixels = (pixels[0] if isinstance(pixels, list) else pixels).get("Pixels", {})
            size, unit = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm")
            scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
            return float(size) * scale if size is not None and scale is not None else None
        if tf.is_svs:
            mpp = tifffile.tifffile.svs_description_metadata(tf.pages[0].description).get("MPP")
            return float(mpp) if mpp else None
        per_unit = {2: 25400.0, 3: 10000.0}.get(int(page.resolutionunit))  # microns per inch, per centimetre
        xres = page.resolution[0]
        return per_unit / xres if per_unit and xres > 0 else None

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        seg_h, seg_w = page.chunks[0], page.chunks[1]
        across = page.chunked[1] if page.is_tiled else 1
        out = np.empty((height, width, page.samplesperpixel), np.uint8)
        handle = self._file.filehandle
        for row in range(y // seg_h, (y + height - 1) // seg_h + 1):
            for col in range(x // seg_w, (x + width - 1) // seg_w + 1):
                index = row * across + col
                count = page.databytecounts[index]
                handle.seek(page.dataoffsets[index])
                raw = handle.read(count)
                top, left = row * seg_h, col * seg_w
                if len(raw) != count:  # the file ends before this tile: an error, never glass
                    raise OSError(
                        f"level {level} tile {index}: the file ends {count - len(raw)} bytes into its {count} "
                        "(truncated slide)"
                    )
                if not count:  # a tile the scanner left out (sparse TIFF): bare glass, as OpenSlide shows it
                    segment = np.full((seg_h, seg_w, page.samplesperpixel), 255, np.uint8)
                else:
                    segment = page.decode(raw, index, jpegtables=page.jpegtables)[0]
                    segment = segment.reshape(segment.shape[-3:])
                y0, y1 = max(y, top), min(y + height, top + segment.shape[0])
                x0, x1 = max(x, left), min(x + width, left + segment.shape[1])
                out[y0 - y : y1 - y, x0 - x : x1 - x] = segment[y0 - top : y1 - top, x0 - left : x1 - left]
        return _as_rgb(out)

    def close(self) -> None:
        self._file.close()


class OpenSlideReader:
    """Every format OpenSlide reads (Aperio, Hamamatsu, MIRAX, Leica, Ventana, generic tiled TIFF, ...)."""

    name = "openslide"

    def __init__(self, path: str | Path) -> None:
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        self.sizes = [(int(w), int(h)) for w, h in self._slide.level_dimensions]
        self.downsamples = [float(d) for d in self._slide.level_downsamples]
        mpp = self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = _plausible(float(mpp)) if mpp else None

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.downsamples[level]
        rgba = np.asarray(self._slide.read_region((round(x * ds), round(y * ds)), level, (width, height)))
        return _as_rgb(rgba)

    def close(self) -> None:
        self._slide.close()


class CuCimReader:
    """cuCIM's CuImage, where cuCIM is installed (never required); read on the host, like the others."""

    name = "cucim"

    def __init__(self, path: str | Path) -> None:
        from cucim import CuImage

        self._image = CuImage(str(path))
        resolutions = self._image.resolutions
        self.sizes = [(int(w), int(h)) for w, h in resolutions["level_dimensions"]]
        self.downsamples = [float(d) for d in resolutions["level_downsamples"]]
        spacing, units = self._image.spacing(), self._image.spacing_units()
        scale = {"micrometer": 1.0, "µm": 1.0, "um": 1.0, "millimeter": 1e3, "mm": 1e3}.get(units[1] if units else "")
        self.mpp = _plausible(float(spacing[1]) * scale) if spacing and scale else None

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.downsamples[level]
        region = self._image.read_region((round(x * ds), round(y * ds)), (width, height), level)
        return _as_rgb(np.asarray(region))

    def close(self) -> None:
        self._image.close()


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1|3|4) uint8 -> (H, W, 3): gray repeated; alpha composed on white (OpenSlide's unscanned areas
    are transparent black)."""
    if pixels.ndim == 2 or pixels.shape[-1] == 1:
        return np.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, axis=-1)
    if pixels.shape[-1] == 4 and pixels[..., 3].min() < 255:
        alpha = pixels[..., 3:].astype(np.uint16)
        return (pixels[..., :3] * alpha // 255 + (255 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(pixels[..., :3])


SLIDE_READERS: dict[str, tuple[str, Callable[[str | Path], SlideReader]]] = {
    "tifffile": ("tifffile", TiffSlideReader),
    "openslide": ("openslide", OpenSlideReader),
    "cucim": ("cucim", CuCimReader),
}


def list_slide_readers() -> list[str]:
    """The names of the slide readers whose library is installed."""
    return [name for name, (module, _) in SLIDE_READERS.items() if importlib.util.find_spec(module) is not None]


def open_slide(path: str | Path, reader: str) -> SlideReader:
    """Open `path` with the reader named `reader` (a name of `SLIDE_READERS`)."""
    if reader not in SLIDE_READERS:
        raise ValueError(f"unknown slide reader {reader!r}; valid ones: {sorted(SLIDE_READERS)}")
    return SLIDE_READERS[reader][1](path)


def slide_reader_for(path: Path, preference: str, slide_suffixes: tuple[str, ...]) -> str | None:
    """Which reader reads `path` as a slide, or None when it is a tile file (a JPEG, a TIFF of one level ...) or
    not a regular file.

    A TIFF is a slide when it is pyramidal, OME, Aperio or Hamamatsu. `auto` reads .tif, .tiff and .svs with
    tifffile and the other formats with OpenSlide, else with cuCIM. A format whose library is not installed is
    an error here, at the start of a run, naming what to install.
    """
    suffix = path.suffix.lower()
    plain_tiff = suffix in PLAIN_TIFF
    if path.exists() and not path.is_file():  # a FIFO would block any reader: left to the decoder, which refuses it
        return None
    if (suffix not in slide_suffixes and not plain_tiff) or (plain_tiff and not _is_slide_tiff(path)):
        return None
    installed = list_slide_readers()
    if preference == "auto":
        ranked = ["tifffile"] if suffix in TIFFFILE_FIRST else ["openslide", "cucim"]
        preference = next((r for r in ranked if r in installed), ranked[0])
    if preference not in installed:
        raise ValueError(f"{path} is a slide read by {preference}, which is not installed: {INSTALL[preference]}")
    return preference


INSTALL = {
    "tifffile": "pip install tifffile imagecodecs",
    "openslide": "pip install 'activessf-engine[slides]' (OpenSlide's wheels)",
    "cucim": "pip install cucim-cu12 (or cu13), or choose --slide-reader openslide",
}


def _is_slide_tiff(path: Path) -> bool:
    """A pyramidal, OME, Aperio or Hamamatsu TIFF (a TIFF tile file is none of these)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            return bool(tf.is_ome or tf.is_svs or tf.is_ndpi or len(tf.series[0].levels) > 1)
    except Exception:  # not a TIFF tifffile can parse: left to the tile decoder, which records why
        return False
