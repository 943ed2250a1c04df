"""Fast CPU kernels (numba), each bit-identical to its torch reference in ``blur`` / ``pixel_kmeans``.

Hand-written because they are measurably faster than composing torch ops on the CPU (one pass over
the pixels instead of one per operation; see benchmarks/filter_throughput.py for the per-stage
times), and exact, so they agree with the CUDA kernels.

The pixel assignment uses a colour-cell cache: colour space is cut into 32x32x32 cells of 8 levels
per channel. For each cell that occurs, we test whether one centre is the nearest (with the same
tie rule) for every colour in the cell: the difference of two squared distances is linear in the
colour, so its minimum over the cell lies at a corner and is computed exactly in integers. Pixels
of decided cells take the cell's label; pixels of undecided cells (on a boundary) are computed
directly. The result equals computing every pixel directly.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

CELL_BITS = 3  # cells of 8 colour levels per channel
CELL_SHIFT = 8 - CELL_BITS
CELLS = 1 << (3 * CELL_SHIFT)
UNKNOWN, UNDECIDED = -2, -1


@njit(cache=True, inline="always")
def _reflect(i: int, n: int) -> int:
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


@njit(parallel=True, cache=True)
def normalize_blur(tiles, tables, weights, out):  # pragma: no cover - compiled
    """tiles (B, H, W, 3) uint8, tables (B, 3, 256) uint8, weights (k,) int32 -> out (B, H, W, 3) uint8."""
    batch, height, width, _ = tiles.shape
    k = weights.shape[0]
    radius = k // 2
    shift = 2 * 10  # 2 * WEIGHT_BITS
    half = 1 << (shift - 1)
    rows = np.empty((batch, height, width * 3), dtype=np.int32)
    for task in prange(batch * height):
        b, y = task // height, task % height
        padded = np.empty((width + 2 * radius) * 3, dtype=np.int32)  # the normalized row, reflected
        for x in range(width + 2 * radius):
            xs = _reflect(x - radius, width)
            for c in range(3):
                padded[x * 3 + c] = tables[b, c, tiles[b, y, xs, c]]
        for i in range(width * 3):
            acc = 0
            for t in range(k):
                acc += weights[t] * padded[i + t * 3]
            rows[b, y, i] = acc
    for task in prange(batch * height):
        b, y = task // height, task % height
        taps = np.empty(k, dtype=np.int64)
        for t in range(k):
            taps[t] = _reflect(y + t - radius, height)
        flat = out[b, y].reshape(-1)
        for i in range(width * 3):
            acc = 0
            for t in range(k):
                acc += weights[t] * rows[b, taps[t], i]
            flat[i] = (acc + half) >> shift


@njit(cache=True, inline="always")
def _nearest(r: int, g: int, b: int, centres) -> int:
    """Index of the nearest fixed-point centre to colour (r, g, b) (x8 units); ties -> lowest index."""
    best, best_d = 0, 1 << 62
    for j in range(centres.shape[0]):
        dr, dg, db = r - centres[j, 0], g - centres[j, 1], b - centres[j, 2]
        d = dr * dr + dg * dg + db * db
        if d < best_d:
            best, best_d = j, d
    return best


@njit(cache=True)
def _cell_label(cell: int, centres, scale: int) -> int:
    """The label shared by every colour of `cell`, or UNDECIDED."""
    lo = np.empty(3, dtype=np.int64)
    hi = np.empty(3, dtype=np.int64)
    for d in range(3):
        index = (cell >> (CELL_SHIFT * (2 - d))) & ((1 << CELL_SHIFT) - 1)
        lo[d] = (index << CELL_BITS) * scale
        hi[d] = ((index << CELL_BITS) + (1 << CELL_BITS) - 1) * scale
    mid = _nearest((lo[0] + hi[0]) // 2, (lo[1] + hi[1]) // 2, (lo[2] + hi[2]) // 2, centres)
    for j in range(centres.shape[0]):
        if j == mid:
            continue
        # f(p) = |p - c_j|^2 - |p - c_mid|^2 is linear in p: minimum at a corner of the cell.
        f = 0
        for d in range(3):
            a = 2 * (centres[mid, d] - centres[j, d])
            p = lo[d] if a > 0 else hi[d]
            f += a * p + centres[j, d] * centres[j, d] - centres[mid, d] * centres[mid, d]
        if f < 0 or (f == 0 and j < mid):
            return UNDECIDED
    return mid


@njit(cache=True, inline="always")
def _label(r: int, g: int, bl: int, cache, centres, scale: int) -> int:
    """Nearest centre of one pixel, through the colour-cell cache of its image."""
    cell = ((r >> CELL_BITS) << (2 * CELL_SHIFT)) | ((g >> CELL_BITS) << CELL_SHIFT) | (bl >> CELL_BITS)
    label = cache[cell]
    if label == UNKNOWN:  # racing threads compute and store the same value
        label = _cell_label(cell, centres, scale)
        cache[cell] = label
    if label == UNDECIDED:
        label = _nearest(np.int64(r) * scale, np.int64(g) * scale, np.int64(bl) * scale, centres)
    return label


@njit(parallel=True, cache=True)
def assign_lookup(pixels, centres, scale, table, out):  # pragma: no cover - compiled
    """out[b, i] = table[b, nearest centre of pixel i]; pixels (B, N, 3) uint8, centres (B, K, 3) int64 in
    fixed point (x `scale`), table (B, K). The assignment fused with a per-cluster lookup (with
    table[b] = 0..K-1 it is the plain assignment)."""
    batch, n, _ = pixels.shape
    chunk = 4096
    chunks = (n + chunk - 1) // chunk
    cache = np.full((batch, CELLS), UNKNOWN, dtype=np.int16)
    for task in prange(batch * chunks):
        b, start = task // chunks, (task % chunks) * chunk
        image_cache, image_centres, image_pixels, image_out = cache[b], centres[b], pixels[b], out[b]
        image_table = table[b]
        for i in range(start, min(start + chunk, n)):
            image_out[i] = image_table[
                _label(
                    image_pixels[i, 0],
                    image_pixels[i, 1],
                    image_pixels[i, 2],
                    image_cache,
                    image_centres,
                    scale,
                )
            ]


@njit(parallel=True, cache=True)
def accumulate(pixels, centres, scale, sums, counts):  # pragma: no cover - compiled
    """Sums of the raw pixel values and counts per nearest centre: sums (B, K, 3), counts (B, K) int64."""
    batch, n, _ = pixels.shape
    for b in prange(batch):
        cache = np.full(CELLS, UNKNOWN, dtype=np.int16)
        image_centres, image_pixels, image_sums, image_counts = centres[b], pixels[b], sums[b], counts[b]
        for i in range(n):
            r, g, bl = image_pixels[i, 0], image_pixels[i, 1], image_pixels[i, 2]
            j = _label(r, g, bl, cache, image_centres, scale)
            image_sums[j, 0] += r
            image_sums[j, 1] += g
            image_sums[j, 2] += bl
            image_counts[j] += 1
