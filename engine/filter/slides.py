"""Whole slides as sources: the level read, the tissue mask, the overlapping tiles, and reading them.

A slide found among the inputs becomes the list of its tiles (`Source` with a `SlideTile`), planned once
when a run starts: the pyramid level is chosen by microns per pixel, tiles without smear on the slide's
thumbnail are skipped, and the others overlap by at least the largest cell, each owning the regions whose
centre lies in its core. Tiles are then read like files are decoded: batch by batch (bounded in tiles and
pixels), each batch read by a pool of threads with one open reader per thread, never the whole slide.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activessf_engine.config import EngineConfig, FilterConfig, InputConfig
from activessf_engine.device import available_cores
from activessf_engine.filter.decode import DecodedImage, pixel_bounded_batches
from activessf_engine.filter.slide_readers import SlideReader, open_slide, slide_reader_for
from activessf_engine.filter.sources import SlideTile, Source
from activessf_engine.kernels import hsv_opencv

log = logging.getLogger(__name__)


class SlideSettingsError(ValueError):
    """A slide and the settings do not fit together (no mpp to scale by, no such level): the run stops."""


LEVEL_TOLERANCE = 1.1  # a level up to 10% coarser than the target mpp still counts as "at least as fine"
STRIP_PIXELS = 1 << 24  # pixels of a level read at once for the thumbnail (48 MB), so no level is loaded whole


def choose_level(slide: Source, reader: SlideReader, config: InputConfig) -> tuple[int, float | None, float]:
    """(level, its microns per pixel or None, the scale of the filter's pixel sizes there) for `config`."""
    base = reader.mpp or config.base_mpp or None
    if base is None and (config.mpp or config.reference_mpp):
        raise SlideSettingsError(
            f"slide {slide.relpath} states no microns per pixel in its metadata, so --mpp/--reference-mpp cannot "
            "be applied: give its level-0 microns per pixel with --base-mpp, or read a level by number "
            "(--mpp 0 --reference-mpp 0 --slide-level N)"
        )
    mpps = [base * d for d in reader.downsamples] if base else [None] * len(reader.sizes)
    if config.mpp:
        fine_enough = [k for k, m in enumerate(mpps) if m <= config.mpp * LEVEL_TOLERANCE]
        level = max(fine_enough, key=lambda k: mpps[k]) if fine_enough else 0
    else:
        level = config.slide_level
        if level >= len(reader.sizes):
            raise SlideSettingsError(
                f"slide {slide.relpath} has {len(reader.sizes)} level(s), so --slide-level {level} does not exist"
            )
    reference = config.reference_mpp or config.mpp
    return level, mpps[level], reference / mpps[level] if reference else 1.0


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Along one axis of `length` pixels: (start, end, core start, core end) of windows of `tile` pixels
    overlapping by at least `overlap`; the last window is moved back to end at the edge, so all have one size.
    Cores split each overlap at its middle: they tile the axis, and each lies at least overlap // 2 pixels
    inside its window, except at the axis' ends."""
    if length <= tile:
        return [(0, length, 0, length)]
    starts = [*range(0, length - tile, tile - overlap), length - tile]
    bounds = [0, *((starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)), length]
    return [(s, s + tile, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of (H, W, 3) uint8 RGB, exactly as OpenCV computes it (0-255, uint8)."""
    hsv = hsv_opencv(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))
    return hsv[1].numpy().astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the t maximising the between-class variance of (<= t, > t)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(hist)
    mass = np.cumsum(hist * np.arange(256))
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * weight - mass * total) ** 2 / (weight * (total - weight))
    return int(np.argmax(np.nan_to_num(between[:-1], nan=-1.0)))


def thumbnail(reader: SlideReader, side: int) -> tuple[np.ndarray, float]:
    """A thumbnail of at most `side` pixels on its longer side, and its level-0 pixels per pixel. Read from the
    finest level that small, else from the coarsest level in strips of at most STRIP_PIXELS (or `step` rows), one
    pixel in `step` kept."""
    small = [k for k, (w, h) in enumerate(reader.sizes) if max(w, h) <= side]
    level = small[0] if small else len(reader.sizes) - 1
    width, height = reader.sizes[level]
    step = max(1, math.ceil(max(width, height) / side))
    strip_rows = max(1, STRIP_PIXELS // (width * step)) * step
    strips = []
    for top in range(0, height, strip_rows):
        rows = min(strip_rows, height - top)
        strips.append(reader.read(level, 0, top, width, rows)[::step, ::step].copy())  # not a view of the strip
    return np.concatenate(strips), reader.downsamples[level] * step


def tissue_fractions(
    reader: SlideReader, config: InputConfig, level: int, windows: list[tuple[int, int, int, int]]
) -> np.ndarray:
    """The fraction of each window (in pixels of `level`) that is smear on the slide's thumbnail."""
    thumb, thumb_downsample = thumbnail(reader, config.thumbnail_side)
    sat = saturation(thumb)
    tissue = sat > min(otsu_threshold(sat), config.tissue_saturation)
    ratio = reader.downsamples[level] / thumb_downsample  # thumbnail pixels per level pixel
    fractions = np.empty(len(windows))
    for i, (x0, y0, x1, y1) in enumerate(windows):
        tx0, ty0 = math.floor(x0 * ratio), math.floor(y0 * ratio)
        tx1, ty1 = max(tx0 + 1, math.ceil(x1 * ratio)), max(ty0 + 1, math.ceil(y1 * ratio))
        fractions[i] = tissue[ty0:ty1, tx0:tx1].mean()  # never empty: the window lies on the slide
    return fractions


def slide_tiles(slide: Source, reader: SlideReader, config: InputConfig) -> tuple[list[Source], dict[str, Any]]:
    """The tiles of one open slide to read, and the slide's row of the store's slides table."""
    level, mpp, scale = choose_level(slide, reader, config)
    overlap = round(config.slide_overlap * scale)
    if overlap >= config.slide_tile:
        raise SlideSettingsError(
            f"slide {slide.relpath}: slide_overlap {config.slide_overlap} is {overlap} pixels at level {level}, "
            f"not below slide_tile {config.slide_tile}: raise --slide-tile or lower --slide-overlap"
        )
    width, height = reader.sizes[level]
    grid = [
        (x, y)
        for y in tile_spans(height, config.slide_tile, overlap)
        for x in tile_spans(width, config.slide_tile, overlap)
    ]
    windows = [(x[0], y[0], x[1], y[1]) for x, y in grid]
    kept = np.ones(len(grid), bool)
    if config.min_tissue > 0:
        kept = tissue_fractions(reader, config, level, windows) >= config.min_tissue
    downsample = reader.downsamples[level]
    tiles = [
        Source(
            f"{slide.relpath}#L{level}_x{x[0]}_y{y[0]}",
            slide.path,
            SlideTile(slide.relpath, reader.name, level, window, (x[2], y[2], x[3], y[3]), downsample, scale, mpp),
        )
        for (x, y), window, keep in zip(grid, windows, kept, strict=True)
        if keep
    ]
    row = {
        "path": slide.relpath,
        "reader": reader.name,
        "level": level,
        "level_size": [width, height],
        "downsample": downsample,
        "mpp": mpp,
        "scale": scale,
        "overlap": overlap,
        "tiles": len(grid),
        "background_tiles": int(len(grid) - kept.sum()),
    }
    log.info(
        "slide %s: level %d, %d tiles, %d of them background", slide.relpath, level, len(grid), len(grid) - len(tiles)
    )
    return tiles, row


def expand_slides(sources: list[Source], config: InputConfig) -> tuple[list[Source], list[dict[str, Any]]]:
    """`sources` with every slide replaced by its tiles (in place, so the order by path holds), and the slides
    table. A slide that cannot be opened or whose thumbnail cannot be read stays one source, recorded as skipped
    with the reason; settings that do not fit a slide (`SlideSettingsError`) stop the run."""
    expanded, table = [], []
    for source in sources:
        reader_name = slide_reader_for(source.path, config.slide_reader, config.slide_extensions)
        if reader_name is None:
            expanded.append(source)
            continue
        try:
            reader = open_slide(source.path, reader_name)
            try:
                tiles, row = slide_tiles(source, reader, config)
            finally:
                reader.close()
        except SlideSettingsError:
            raise
        except Exception as exc:  # a damaged slide: one source, skipped with the reason, like a damaged tile file
            reason = f"{type(exc).__name__}: {exc}"
            unread = SlideTile(source.relpath, reader_name, 0, (0, 0, 0, 0), (0, 0, 0, 0), 1.0, 1.0, None, reason)
            tiles = [dataclasses.replace(source, tile=unread)]
            row = {"path": source.relpath, "reader": reader_name, "tiles": 0, "background_tiles": 0, "error": reason}
        expanded += tiles
        table.append(row)
    return expanded, table


def tile_file_scale(config: InputConfig) -> float:
    """What the filter's pixel sizes are multiplied by on tile files: reference_mpp / the tiles' mpp (1 unless
    both are set)."""
    return config.reference_mpp / config.mpp if config.mpp and config.reference_mpp else 1.0


def scaled_filter(config: EngineConfig, tile: SlideTile | None) -> FilterConfig:
    """The filter's settings at a slide tile's level, or for tile files at their `input.mpp`: its pixel sizes
    (min_box, max_box, close_radius) times the scale."""
    scale = tile.scale if tile is not None else tile_file_scale(config.input)
    if scale == 1.0:
        return config.filter
    settings = config.filter
    return dataclasses.replace(
        settings,
        min_box=max(1, round(settings.min_box * scale)),
        max_box=round(settings.max_box * scale),
        close_radius=round(settings.close_radius * scale),
    )


class _Readers:
    """One open reader per thread and slide; all closed at the end."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._opened: list[SlideReader] = []
        self._lock = threading.Lock()

    def get(self, path: Path, name: str) -> SlideReader:
        if not hasattr(self._local, "readers"):
            self._local.readers = {}
        mine = self._local.readers
        if (path, name) not in mine:
            mine[(path, name)] = open_slide(path, name)
            with self._lock:
                self._opened.append(mine[(path, name)])
        return mine[(path, name)]

    def close(self) -> None:
        for reader in self._opened:
            reader.close()


def _read_tile(readers: _Readers, source: Source) -> DecodedImage:
    tile = source.tile
    x0, y0, x1, y1 = tile.window
    if tile.error is not None:
        return DecodedImage(source.path, None, f"slide unreadable: {tile.error}", "", 0, 0)
    try:
        pixels = readers.get(source.path, tile.reader).read(tile.level, x0, y0, x1 - x0, y1 - y0)
    except Exception as exc:  # a damaged tile becomes a record, as a damaged file does
        return DecodedImage(source.path, None, f"slide unreadable: {type(exc).__name__}: {exc}", "", x1 - x0, y1 - y0)
    return DecodedImage(source.path, torch.from_numpy(pixels), None, tile.reader, x1 - x0, y1 - y0)


def read_tile_batches(sources: list[Source], config: InputConfig, device: torch.device) -> Iterator[list[DecodedImage]]:
    """The slide tiles `sources` read in order, one list per batch of at most `batch_size` tiles and
    `max_batch_pixels` pixels; the tiles of a batch are read in parallel (`threads`, 0 = one per core)."""
    readers = _Readers()
    try:
        with ThreadPoolExecutor(max_workers=config.threads or available_cores()) as pool:
            for batch in _batches(sources, config):
                images = list(pool.map(lambda s: _read_tile(readers, s), batch))
                if device.type == "cuda":
                    for image in images:
                        image.image = image.image.to(device) if image.image is not None else None
                yield images
    finally:
        readers.close()


def _window_pixels(source: Source) -> int:
    x0, y0, x1, y1 = source.tile.window
    return (x1 - x0) * (y1 - y0)


def _batches(sources: list[Source], config: InputConfig) -> Iterator[list[Source]]:
    return pixel_bounded_batches(sources, _window_pixels, config.batch_size, config.max_batch_pixels)


def plan_groups(sources: list[Source]) -> list[list[Source]]:
    """Consecutive runs of sources that may share a part: the tiles of one slide, or tile files."""
    groups: list[list[Source]] = []
    for source in sources:
        key = source.tile.slide if source.tile else None
        if groups and (groups[-1][0].tile.slide if groups[-1][0].tile else None) == key:
            groups[-1].append(source)
        else:
            groups.append([source])
    return groups
