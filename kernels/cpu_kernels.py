"""Fast CPU kernels (numba), each bit-identical to its torch reference in ``blur`` / ``pixel_kmeans`` /
``laplacian``.

Hand-written because they are measurably faster than composing torch ops on the CPU (one pass over
the pixels instead of one per operation; see benchmarks/filter_throughput.py for the per-stage
times), and exact, so they agree with the CUDA kernels.

The pixel assignment looks values up through a colour-cell cache: colour space is cut into
32x32x32 cells of 8 levels per channel, and each cell that occurs is decided once. With `mid` the
nearest centre at the cell's middle, a centre j can be the nearest somewhere in the cell only if
|p - c_j|^2 - |p - c_mid|^2 <= 0 somewhere in it; that difference is linear in p, so its minimum
lies at a corner and is computed exactly in integers. When every centre that can win anywhere in
the cell has the same table value as `mid`, the cell's pixels all take that value (for the plain
assignment, the table is the identity and the cell must have one possible winner); otherwise its
pixels are computed one by one. For a mask, boundaries between two clusters of the same verdict
do not matter, so most cells are decided. The result equals computing every pixel directly.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

CELL_BITS = 3  # cells of 8 colour levels per channel
CELL_SHIFT = 8 - CELL_BITS
CELLS = 1 << (3 * CELL_SHIFT)
UNKNOWN, UNDECIDED = -2, -1
WEIGHT_SHIFT = 2 * 10  # 2 * blur.WEIGHT_BITS: the separable blur's two passes


@njit(cache=True, inline="always")
def _reflect(i: int, n: int) -> int:
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


BAND = 16  # output rows per task of the blur: its row sums stay in cache, whatever the tile size


@njit(cache=True, inline="always")
def _row_sums(tiles, tables, weights, b: int, y: int, padded, row) -> None:
    """The normalized row y of tile b (reflected at the ends) convolved with `weights` along x."""
    width = tiles.shape[2]
    radius = weights.shape[0] // 2
    for x in range(width + 2 * radius):
        xs = _reflect(x - radius, width)
        for c in range(3):
            padded[x * 3 + c] = tables[b, c, tiles[b, y, xs, c]]
    row[:] = 0
    for t in range(weights.shape[0]):
        w = weights[t]
        shifted = padded[t * 3 : t * 3 + row.shape[0]]
        for i in range(row.shape[0]):
            row[i] += w * shifted[i]


@njit(parallel=True, cache=True)
def normalize_blur(tiles, tables, weights, out):  # pragma: no cover - compiled
    """tiles (B, H, W, 3) uint8, tables (B, 3, 256) uint8, weights (k,) int32 -> out (B, H, W, 3) uint8.

    int32 throughout (at most 255 * 2^20 < 2^31), tap-outer loops over contiguous rows so that the
    compiler vectorizes the multiply-adds, and bands of BAND output rows per task, each with the row
    sums it needs (halo included) in a buffer of its own.
    """
    batch, height, width, _ = tiles.shape
    k = weights.shape[0]
    radius = k // 2
    span = width * 3
    half = np.int32(1 << (WEIGHT_SHIFT - 1))
    bands = (height + BAND - 1) // BAND
    for task in prange(batch * bands):
        b, first = task // bands, (task % bands) * BAND
        last = min(first + BAND, height)
        padded = np.empty((width + 2 * radius) * 3, dtype=np.int32)
        rows = np.empty((last - first + 2 * radius, span), dtype=np.int32)  # row sums, rows first-r..last+r
        for j in range(rows.shape[0]):
            _row_sums(tiles, tables, weights, b, _reflect(first - radius + j, height), padded, rows[j])
        acc = np.empty(span, dtype=np.int32)
        for y in range(first, last):
            acc[:] = 0
            for t in range(k):
                w = weights[t]
                src = rows[y - first + t]
                for i in range(span):
                    acc[i] += w * src[i]
            flat = out[b, y].reshape(-1)
            for i in range(span):
                flat[i] = (acc[i] + half) >> WEIGHT_SHIFT


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


@njit(cache=True, inline="always")
def _corner_gap(mid: int, j: int, centres, lo, hi) -> int:
    """min over the cell [lo, hi] of |p - c_j|^2 - |p - c_mid|^2: linear in p, so taken at a corner."""
    f = 0
    for d in range(3):
        a = 2 * (centres[mid, d] - centres[j, d])
        p = lo[d] if a > 0 else hi[d]
        f += a * p + centres[j, d] * centres[j, d] - centres[mid, d] * centres[mid, d]
    return f


@njit(cache=True)
def _cell_value(cell: int, centres, scale: int, table) -> int:
    """The table value shared by every colour of `cell`, or UNDECIDED (see the module docstring)."""
    mask = (1 << CELL_SHIFT) - 1
    lo = (
        ((cell >> (2 * CELL_SHIFT)) << CELL_BITS) * scale,
        (((cell >> CELL_SHIFT) & mask) << CELL_BITS) * scale,
        ((cell & mask) << CELL_BITS) * scale,
    )
    top = ((1 << CELL_BITS) - 1) * scale
    hi = (lo[0] + top, lo[1] + top, lo[2] + top)
    mid = _nearest((lo[0] + hi[0]) // 2, (lo[1] + hi[1]) // 2, (lo[2] + hi[2]) // 2, centres)
    for j in range(centres.shape[0]):
        if j == mid or table[j] == table[mid]:
            continue
        f = _corner_gap(mid, j, centres, lo, hi)
        if f < 0 or (f == 0 and j < mid):  # j wins somewhere in the cell
            return UNDECIDED
    return table[mid]


@njit(cache=True, inline="always")
def _lookup(r: int, g: int, bl: int, cache, centres, scale: int, table) -> int:
    """table[nearest centre] of one pixel, through the colour-cell cache of its image."""
    cell = ((r >> CELL_BITS) << (2 * CELL_SHIFT)) | ((g >> CELL_BITS) << CELL_SHIFT) | (bl >> CELL_BITS)
    value = cache[cell]
    if value == UNKNOWN:  # racing threads compute and store the same value
        value = _cell_value(cell, centres, scale, table)
        cache[cell] = value
    if value == UNDECIDED:
        value = table[_nearest(np.int64(r) * scale, np.int64(g) * scale, np.int64(bl) * scale, centres)]
    return value


@njit(parallel=True, cache=True)
def assign_lookup(pixels, centres, scale, table, out):  # pragma: no cover - compiled
    """out[b, i] = table[b, nearest centre of pixel i]; pixels (B, N, 3) uint8, centres (B, K, 3) int64 in
    fixed point (x `scale`), table (B, K) of values in 0..32767. With table[b] = 0..K-1 this is the
    plain assignment."""
    batch, n, _ = pixels.shape
    chunk = 4096
    chunks = (n + chunk - 1) // chunk
    cache = np.full((batch, CELLS), UNKNOWN, dtype=np.int16)
    for task in prange(batch * chunks):
        b, start = task // chunks, (task % chunks) * chunk
        image_cache, image_centres, image_pixels, image_out = cache[b], centres[b], pixels[b], out[b]
        image_table = table[b]
        for i in range(start, min(start + chunk, n)):
            image_out[i] = _lookup(
                image_pixels[i, 0],
                image_pixels[i, 1],
                image_pixels[i, 2],
                image_cache,
                image_centres,
                scale,
                image_table,
            )


@njit(parallel=True, cache=True)
def accumulate(pixels, centres, scale, sums, counts):  # pragma: no cover - compiled
    """Sums of the raw pixel values and counts per nearest centre: sums (B, K, 3), counts (B, K) int64.

    Direct, without the colour-cell cache: on an 8192-pixel sample a cache fills only a few pixels
    per cell, and deciding the cells costs more than it saves (measured: 0.13 vs 0.08 ms per image
    and Lloyd step on BCCD tiles).
    """
    batch, n, _ = pixels.shape
    for b in prange(batch):
        image_centres, image_pixels, image_sums, image_counts = centres[b], pixels[b], sums[b], counts[b]
        for i in range(n):
            r, g, bl = np.int64(image_pixels[i, 0]), np.int64(image_pixels[i, 1]), np.int64(image_pixels[i, 2])
            j = _nearest(r * scale, g * scale, bl * scale, image_centres)
            image_sums[j, 0] += r
            image_sums[j, 1] += g
            image_sums[j, 2] += bl
            image_counts[j] += 1


@njit(cache=True)
def region_stats(labels, boxes, counts):  # pragma: no cover - compiled
    """One pass over an (H, W) int32 label image: per label 1..n the box x0, y0, x1, y1 (exclusive) into
    boxes (n, 4) and the pixel count into counts (n,). A label with no pixels keeps the box (0, 0, 0, 0)."""
    height, width = labels.shape
    n = counts.shape[0]
    boxes[:, 0] = width
    boxes[:, 1] = height
    boxes[:, 2:] = 0
    counts[:] = 0
    for y in range(height):
        row = labels[y]
        for x in range(width):
            label = row[x]
            if label == 0:
                continue
            i = label - 1
            counts[i] += 1
            boxes[i, 0] = min(boxes[i, 0], x)
            boxes[i, 1] = min(boxes[i, 1], y)
            boxes[i, 2] = max(boxes[i, 2], x + 1)
            boxes[i, 3] = max(boxes[i, 3], y + 1)
    for i in range(n):
        if counts[i] == 0:
            boxes[i] = 0


@njit(cache=True)
def merge_clusters(means, sizes, target, ward):  # pragma: no cover - compiled
    """Greedy merge of K colour clusters to `target`, the float64 operations of
    ``pixel_kmeans.reference_merge_clusters`` in the same order (so the same answer, ties included).

    `means` (K, 3) and `sizes` (K,) float64 are updated in place. Returns `owner` (K,) int64: the surviving
    cluster each original cluster ended in (a survivor owns itself).
    """
    k = means.shape[0]
    owner = np.arange(k)
    alive = sizes > 0
    if not alive.any():
        alive[:] = True
    for j in range(k):  # an empty cluster joins the nearest non-empty one (no Ward cost: it has no pixels)
        if alive[j]:
            continue
        best, best_d2 = -1, np.inf
        for i in range(k):
            if alive[i]:
                d0, d1, d2 = means[i, 0] - means[j, 0], means[i, 1] - means[j, 1], means[i, 2] - means[j, 2]
                dist = d0 * d0 + d1 * d1 + d2 * d2
                if dist < best_d2:
                    best, best_d2 = i, dist
        owner[j] = best
    for _ in range(alive.sum() - target):
        best_a, best_b, best_cost = -1, -1, np.inf
        for a in range(k):
            if not alive[a]:
                continue
            for b in range(a + 1, k):
                if not alive[b]:
                    continue
                d0, d1, d2 = means[a, 0] - means[b, 0], means[a, 1] - means[b, 1], means[a, 2] - means[b, 2]
                cost = d0 * d0 + d1 * d1 + d2 * d2
                if ward:
                    total = sizes[a] + sizes[b]
                    cost = sizes[a] * sizes[b] * cost / total if total > 0 else 0.0
                if cost < best_cost:  # strict: the first minimum in row-major order, as argmin
                    best_a, best_b, best_cost = a, b, cost
        a, b = best_a, best_b
        total = sizes[a] + sizes[b]
        if total > 0:
            for c in range(3):
                means[a, c] = (means[a, c] * sizes[a] + means[b, c] * sizes[b]) / total
        sizes[a] = total
        alive[b] = False
        for i in range(k):
            if owner[i] == b:
                owner[i] = a
    return owner


@njit(cache=True, inline="always")
def _grey_row(tiles, b: int, y: int, weights, shift: int, row) -> None:
    half = 1 << (shift - 1)
    for x in range(row.shape[0]):
        px = tiles[b, y, x]
        row[x] = (weights[0] * px[0] + weights[1] * px[1] + weights[2] * px[2] + half) >> shift


@njit(parallel=True, cache=True)
def laplacian_sums(tiles, weights, shift, sums):  # pragma: no cover - compiled
    """tiles (B, H, W, 3) uint8, grey weights (3,) int32 -> sums (B, 2) int64: the sum and the sum of
    squares of each tile's Laplacian (3x3 aperture, reflect-101 borders as cv2.Laplacian) of its grey
    image, grey = (weights . rgb + 2^(shift-1)) >> shift.

    Exact integers, equal to the torch reference's (``laplacian.reference_laplacian_sums``). Bands of
    BAND rows per task, each with its three grey rows in a buffer of its own.
    """
    batch, height, width, _ = tiles.shape
    bands = (height + BAND - 1) // BAND
    partial = np.zeros((batch * bands, 2), dtype=np.int64)
    for task in prange(batch * bands):
        b, first = task // bands, (task % bands) * BAND
        last = min(first + BAND, height)
        grey = np.empty((last - first + 2, width), dtype=np.int32)  # grey rows first-1 .. last
        for j in range(grey.shape[0]):
            _grey_row(tiles, b, _reflect(first - 1 + j, height), weights, shift, grey[j])
        total, squares = 0, 0
        for y in range(1, grey.shape[0] - 1):
            above, row, below = grey[y - 1], grey[y], grey[y + 1]
            for x in range(width):
                left, right = row[_reflect(x - 1, width)], row[_reflect(x + 1, width)]
                lap = above[x] + below[x] + left + right - 4 * row[x]
                total += lap
                squares += lap * lap
        partial[task, 0], partial[task, 1] = total, squares
    for b in range(batch):
        sums[b, 0] = partial[b * bands : (b + 1) * bands, 0].sum()
        sums[b, 1] = partial[b * bands : (b + 1) * bands, 1].sum()


@njit(parallel=True, cache=True)
def dilate_square(masks, radius, rows, out):  # pragma: no cover - compiled
    """masks (B, H, W) uint8 0/1 -> out (B, H, W) uint8: 1 where any pixel of the (2r+1) x (2r+1) window about
    it (inside the tile) is 1. A running count along each row into `rows` (B, H, W) int32, then along each
    column: O(1) a pixel whatever the radius."""
    batch, height, width = masks.shape
    for task in prange(batch * height):
        b, y = task // height, task % height
        count = 0
        for x in range(min(radius, width)):
            count += masks[b, y, x]
        for x in range(width):
            if x + radius < width:
                count += masks[b, y, x + radius]
            if x - radius - 1 >= 0:
                count -= masks[b, y, x - radius - 1]
            rows[b, y, x] = 1 if count > 0 else 0
    for b in prange(batch):
        counts = np.zeros(width, dtype=np.int32)
        for y in range(min(radius, height)):
            counts += rows[b, y]
        for y in range(height):
            if y + radius < height:
                counts += rows[b, y + radius]
            if y - radius - 1 >= 0:
                counts -= rows[b, y - radius - 1]
            for x in range(width):
                out[b, y, x] = 1 if counts[x] > 0 else 0


@njit(parallel=True, cache=True)
def hsv_mask(pixels, saturation_table, hue_table, bounds, out):  # pragma: no cover - compiled
    """pixels (B, N, 3) uint8 RGB -> out (B, N) uint8: 1 where the pixel's OpenCV HSV (hsv.hsv_opencv's integer
    arithmetic and tables) lies inside any row of bounds (r, 6) int32 (h0, h1, s0, s1, v0, v1; inclusive)."""
    batch, count, _ = pixels.shape
    chunk = 1 << 14
    chunks = (count + chunk - 1) // chunk
    for task in prange(batch * chunks):
        b, first = task // chunks, (task % chunks) * chunk
        for i in range(first, min(first + chunk, count)):
            r, g, bl = np.int64(pixels[b, i, 0]), np.int64(pixels[b, i, 1]), np.int64(pixels[b, i, 2])
            value = max(r, g, bl)
            diff = value - min(r, g, bl)
            saturation = (diff * saturation_table[value] + 2048) >> 12  # hsv.HSV_SHIFT 12, rounding half up
            if value == r:
                sector = g - bl
            elif value == g:
                sector = bl - r + 2 * diff
            else:
                sector = r - g + 4 * diff
            hue = (sector * hue_table[diff] + 2048) >> 12
            if hue < 0:
                hue += 180
            hit = 0
            for k in range(bounds.shape[0]):
                if (
                    bounds[k, 0] <= hue <= bounds[k, 1]
                    and bounds[k, 2] <= saturation <= bounds[k, 3]
                    and bounds[k, 4] <= value <= bounds[k, 5]
                ):
                    hit = 1
                    break
            out[b, i] = hit


@njit(parallel=True, cache=True)
def colour_table_mask(pixels, table, shift, out):  # pragma: no cover - compiled
    """pixels (B, N, 3) uint8 RGB -> out (B, N) uint8: table[index] with colour_table.table_index's index (each
    channel >> shift, R major), table (2^(3 (8 - shift)),) uint8."""
    batch, count, _ = pixels.shape
    bits = 8 - shift
    chunk = 1 << 14
    chunks = (count + chunk - 1) // chunk
    for task in prange(batch * chunks):
        b, first = task // chunks, (task % chunks) * chunk
        for i in range(first, min(first + chunk, count)):
            r, g, bl = pixels[b, i, 0] >> shift, pixels[b, i, 1] >> shift, pixels[b, i, 2] >> shift
            out[b, i] = table[(np.int64(r) << (2 * bits)) | (np.int64(g) << bits) | np.int64(bl)]
