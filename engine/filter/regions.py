"""Cell Region Filtering (section II-B): normalize, blur, pixel K-means 20 -> 10, HSV masks, regions; or, with a
colour table `calibrate` learned, the table's mask of the blurred tile in place of the K-means and HSV masks.

A pure function of (tiles, config): `find_regions` takes decoded tiles on one device and returns,
for each, the boxes of the regions that pass the size and fill-rate tests. Tiles of one shape are
processed as one batch; the pixel K-means, the components and the box statistics run through
`activessf_engine.kernels`, which picks the CPU reference or the CUDA kernels by device.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi
import torch

from activessf_engine import kernels
from activessf_engine.config import FilterConfig
from activessf_engine.filter.focus import sharpness
from activessf_engine.stain import StainNormalizer

SAMPLE_SEED = 0  # the pixel sample that K-means is fitted on is drawn from this seed on every device


@dataclass
class TileRegions:
    """Regions kept in one tile. Boxes are (x0, y0, x1, y1) in tile pixels, x1 and y1 exclusive."""

    boxes: np.ndarray  # (n, 4) int64
    areas: np.ndarray  # (n,) int64, pixels of the region
    fill_rates: np.ndarray  # (n,) float32, area / box area
    mask: torch.Tensor | None = None  # (H, W) bool composite HSV mask, when asked for (QC overlays)
    palette: np.ndarray | None = None  # (m, 3) uint8 colours of G' (m <= merged_clusters); None: mask read from G
    found: int = 0  # connected components of the mask, before the size and fill tests
    too_small: int = 0  # of those, rejected for the box's size: under min_box on a side (or over max_box)
    low_fill: int = 0  # rejected because the fill rate is under min_fill (after passing the size test)
    sharpness: float = 0.0  # variance of the Laplacian of the tile's grey image (filter/focus.py)
    out_of_focus: bool = False  # sharpness under min_sharpness: every region dropped
    stain_left_as_read: bool = False  # filter.stain set, but the tile's stains could not be measured

    def quality_record(self) -> dict[str, float | bool]:
        """The tile's columns of a sources table row about its focus and stain."""
        return {
            "sharpness": round(self.sharpness, 2),
            "out_of_focus": self.out_of_focus,
            "stain_left_as_read": self.stain_left_as_read,
        }

    def drop_all(self) -> None:
        """Keep no region (an out-of-focus tile); the counts of what the masks held stay."""
        self.boxes, self.areas, self.fill_rates = self.boxes[:0], self.areas[:0], self.fill_rates[:0]
        self.out_of_focus = True


@dataclass
class StageTimes:
    """Wall seconds per stage, summed over calls. `sync` waits for the device before each reading."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    sync: Callable[[], None] = lambda: None

    def lap(self, stage: str, since: float) -> float:
        self.sync()
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now


def _sample_indices(pixels: int, size: int, device: torch.device) -> torch.Tensor | None:
    if size <= 0 or size >= pixels:
        return None
    gen = torch.Generator().manual_seed(SAMPLE_SEED)
    return torch.randint(0, pixels, (size,), generator=gen).to(device)


@dataclass
class Quantized:
    """A batch after blur and the two-stage K-means: what the HSV masks are then read from."""

    smooth: torch.Tensor  # (B, H, W, 3) uint8 G: normalized and blurred
    centres: torch.Tensor  # (B, k, 3) the K-means centres, in kernels.FIXED_POINT units
    mappings: list[np.ndarray]  # per tile: K-means cluster -> merged colour
    palettes: list[np.ndarray]  # per tile: (m, 3) uint8 merged colours of G' (m <= merged_clusters)
    stain_left_as_read: list[bool]  # per tile: filter.stain set, but its stains could not be measured


def normalize_stains(tiles: torch.Tensor, config: FilterConfig) -> tuple[torch.Tensor, list[bool]]:
    """A (B, H, W, 3) batch brought to config.stain's reference (as it is without one), and which tiles were
    left as read because their stains could not be measured."""
    if config.stain.method == "none":
        return tiles, [False] * len(tiles)
    normalizer = StainNormalizer(config.stain)
    normalized = [normalizer.normalized(tile) for tile in tiles]
    left = [out is None for out in normalized]
    return torch.stack([tile if out is None else out for tile, out in zip(tiles, normalized, strict=True)]), left


def smoothed(tiles: torch.Tensor, config: FilterConfig, times: StageTimes) -> tuple[torch.Tensor, list[bool]]:
    """G of a (B, H, W, 3) batch: stain and illumination normalization, then the Eq. 1 blur; and which tiles were
    left as read because their stains could not be measured."""
    start = time.perf_counter()
    tiles, stain_left_as_read = normalize_stains(tiles, config)
    if config.stain.method != "none":
        start = times.lap("stain", start)
    smooth = kernels.normalize_blur(tiles, config.normalize, config.blur_kernel, config.blur_sigma)
    times.lap("blur", start)
    return smooth, stain_left_as_read


def quantize(tiles: torch.Tensor, config: FilterConfig, times: StageTimes) -> Quantized:
    """Stain and illumination normalization, Eq. 1 blur, Eq. 2-3 K-means on a pixel sample and merging 20 -> 10
    of a (B, H, W, 3) batch."""
    batch, height, width, _ = tiles.shape
    smooth, stain_left_as_read = smoothed(tiles, config, times)
    pixels = smooth.reshape(batch, height * width, 3)
    start = time.perf_counter()

    picked = _sample_indices(pixels.shape[1], config.kmeans_sample, tiles.device)
    sample = pixels if picked is None else torch.index_select(pixels, 1, picked)  # half the time of pixels[:, picked]
    centres = kernels.initial_centres(sample, config.kmeans_clusters)
    centres, counts = kernels.lloyd(sample, centres, config.kmeans_iterations, config.kmeans_tolerance)
    start = times.lap("kmeans_fit", start)

    centres_np = centres.cpu().numpy() / kernels.FIXED_POINT
    counts_np = counts.cpu().numpy()
    mappings, palettes = [], []
    for b in range(batch):
        mapping, merged, _ = kernels.merge_clusters(
            centres_np[b], counts_np[b], config.merged_clusters, config.merge_method
        )
        mappings.append(mapping)
        palettes.append(np.clip(np.rint(merged), 0, 255).astype(np.uint8))
    times.lap("merge", start)
    return Quantized(smooth, centres, mappings, palettes, stain_left_as_read)


def quantized_masks(quantized: Quantized, config: FilterConfig, times: StageTimes) -> torch.Tensor:
    """The composite HSV mask (B, H, W) of G' under the config's HSV ranges. G' holds only the merged colours, so
    its mask is decided per colour: one HSV conversion of every palette colour of the batch, then a lookup table
    per tile, read through each pixel's cluster."""
    start = time.perf_counter()
    batch, height, width, _ = quantized.smooth.shape
    pixels = quantized.smooth.reshape(batch, height * width, 3)
    palettes, mappings = quantized.palettes, quantized.mappings
    colours = torch.from_numpy(np.concatenate(palettes))[None]
    keep = kernels.hsv_mask(colours, (config.purple, config.deep_blue))[0].numpy()
    offsets = np.cumsum([0] + [len(p) for p in palettes])
    luts = [keep[offsets[b] : offsets[b + 1]][mappings[b]] for b in range(batch)]
    table = torch.from_numpy(np.stack(luts)).to(pixels.device)
    masks = kernels.assign_lookup(pixels, quantized.centres, table)
    times.lap("kmeans_assign", start)
    return masks.reshape(batch, height, width)


def blurred_masks(smooth: torch.Tensor, config: FilterConfig, times: StageTimes) -> torch.Tensor:
    """The mask (B, H, W) of G: its pixels in the config's table of cell colours, where it holds one; else in
    the composite HSV mask under its HSV ranges."""
    start = time.perf_counter()
    batch, height, width, _ = smooth.shape
    pixels = smooth.reshape(batch, height * width, 3)
    if config.cell_colours.cells:
        masks = kernels.colour_table_mask(pixels, config.cell_colours)
        times.lap("colour_table", start)
    else:
        masks = kernels.hsv_mask(pixels, (config.purple, config.deep_blue))
        times.lap("hsv_mask", start)
    return masks.reshape(batch, height, width)


def reads_quantized(config: FilterConfig) -> bool:
    """Whether the mask is read from G' (and so needs the K-means): the HSV ranges of hsv_source "quantized"."""
    return config.hsv_source == "quantized" and not config.cell_colours.cells


def cell_masks(
    tiles: torch.Tensor, config: FilterConfig, times: StageTimes
) -> tuple[torch.Tensor, list[np.ndarray | None], list[bool]]:
    """The mask of each tile of a (B, H, W, 3) uint8 batch, the palette of G' it was read from (None where it was
    read from G), and which tiles were left as read because their stains could not be measured.

    Steps of II-B: normalize (stains, when filter.stain is set, then illumination), Eq. 1 blur, Eq. 2-3
    K-means on a pixel sample, merge 20 -> 10 (`quantize`), HSV of the merged colours, then every pixel
    assigned to its cluster and so to its colour's mask (the HSV mask of G'). With hsv_source="blurred" the
    mask is read from the HSV of G instead, and with a learned table of cell colours from that table; neither
    needs the K-means, which is then not run (`blurred_masks`).
    """
    if reads_quantized(config):
        quantized = quantize(tiles, config, times)
        return quantized_masks(quantized, config, times), list(quantized.palettes), quantized.stain_left_as_read
    smooth, stain_left_as_read = smoothed(tiles, config, times)
    return blurred_masks(smooth, config, times), [None] * len(tiles), stain_left_as_read


def grow_boxes(boxes: np.ndarray, scale: float, height: int, width: int) -> np.ndarray:
    """(n, 4) boxes grown about their centres by `scale`, clipped to a height x width tile."""
    if scale == 1.0 or not len(boxes):
        return boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * scale / 2
    low = np.maximum(np.floor(centre - half), 0)
    high = np.minimum(np.ceil(centre + half), (width, height))
    return np.concatenate([low, high], axis=1).astype(boxes.dtype)


def regions_of_masks(masks: torch.Tensor, config: FilterConfig) -> list[TileRegions]:
    """Connected components (8-connected by default) of each mask of a (B, H, W) stack, kept when the box
    is at least min_box x min_box (at most max_box on its longer side, when set) and the fill rate (region
    pixels / box pixels, II-B2) is at least min_fill; the boxes kept are then grown by box_scale. The stack
    is labelled at once (no region joins two tiles) and its statistics come back to the host in one copy;
    stacks past the kernels' 2^31-element launch limit go in slices of whole tiles."""
    batch, height, width = masks.shape
    step = max(1, (kernels.LAUNCH_ELEMENT_LIMIT - 1) // max(1, height * width))
    results: list[TileRegions] = []
    for first in range(0, batch, step):
        labels, count = kernels.label(masks[first : first + step], config.connectivity)
        boxes, areas, tiles = kernels.batch_region_stats(labels, count)
        tiles_here = min(step, batch - first)
        found = np.bincount(tiles, minlength=tiles_here)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        sized_ok = (widths >= config.min_box) & (heights >= config.min_box)
        if config.max_box:
            sized_ok &= np.maximum(widths, heights) <= config.max_box
        big = np.flatnonzero(sized_ok)
        boxes, areas, tiles = boxes[big], areas[big], tiles[big]
        if config.fill_holes and len(big):  # scipy on the host, per kept region (listed in the run's device notes)
            lab = labels.cpu().numpy()
            for i, (label_index, tile, (x0, y0, x1, y1)) in enumerate(zip(big + 1, tiles, boxes, strict=True)):
                areas[i] = ndi.binary_fill_holes(lab[tile, y0:y1, x0:x1] == label_index).sum()
        box_area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1)
        fill = (areas / box_area).astype(np.float32)
        keep = fill >= config.min_fill
        sized = np.bincount(tiles, minlength=tiles_here)
        boxes, areas, fill, tiles = boxes[keep], areas[keep], fill[keep], tiles[keep]
        boxes = grow_boxes(boxes, config.box_scale, height, width)
        kept = np.bincount(tiles, minlength=tiles_here)
        for tile in range(tiles_here):
            mine = tiles == tile  # labels run tile after tile, so each tile's regions stay in raster order
            results.append(
                TileRegions(
                    boxes[mine],
                    areas[mine],
                    fill[mine],
                    found=int(found[tile]),
                    too_small=int(found[tile] - sized[tile]),
                    low_fill=int(sized[tile] - kept[tile]),
                )
            )
    return results


def find_regions(
    tiles: Sequence[torch.Tensor],
    config: FilterConfig,
    times: StageTimes | None = None,
    keep_masks: bool = False,
) -> list[TileRegions]:
    """Cell Region Filtering of decoded (H, W, 3) uint8 tiles, all on one device; one result per tile."""
    times = times or StageTimes()
    results: list[TileRegions | None] = [None] * len(tiles)
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, tile in enumerate(tiles):
        by_shape[tuple(tile.shape)].append(i)
    for indices in by_shape.values():
        # a lone tile is viewed as a batch of one, not copied (for a huge tile, a copy is a gigabyte)
        group = tiles[indices[0]][None] if len(indices) == 1 else torch.stack([tiles[i] for i in indices])
        masks, palettes, stain_left_as_read = cell_masks(group, config, times)
        start = time.perf_counter()
        if config.close_radius:
            masks = kernels.close_masks(masks, config.close_radius)
            start = times.lap("close", start)
        focus = sharpness(group)
        start = times.lap("focus", start)
        for j, (i, found) in enumerate(zip(indices, regions_of_masks(masks, config), strict=True)):
            found.palette, found.sharpness = palettes[j], focus[j]
            found.stain_left_as_read = stain_left_as_read[j]
            if focus[j] < config.min_sharpness:
                found.drop_all()
            if keep_masks:
                found.mask = masks[j]
            results[i] = found
        times.lap("components", start)
    return results
