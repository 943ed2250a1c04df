"""Pixel K-means of Cell Region Filtering: Lloyd steps (Eq. 2-3) and the 20 -> 10 merge.

Arithmetic is exact, so that the CPU reference and the CUDA kernels give identical answers:
pixels are 8-bit integers, and centres are kept in fixed point, as integers in units of
1/FIXED_POINT of a colour level. With FIXED_POINT = 8 every difference (< 2^11), square (< 2^22)
and sum of three squares (< 2^24) is an integer that float32 represents exactly, so the squared
distance of Eq. 3 is computed without rounding on either device, and the centre update of Eq. 2 is
an integer division rounded half up. Ties go to the lower cluster index.

Public functions take torch tensors; a CUDA tensor is handled by the CuPy kernels in
``cupy_pixel_kmeans``, a CPU tensor by the numba kernels in ``cpu_kernels``. The short torch
functions `reference_assign` and `reference_accumulate` define the answer both must give.
"""

from __future__ import annotations

import numpy as np
import torch

from activessf_engine.config import FIXED_POINT
from activessf_engine.kernels.pixels import check_pixels

_ASSIGN_CHUNK = 1 << 16  # pixels per chunk of the CPU assignment (bounds its memory)


def initial_centres(sample: torch.Tensor, clusters: int) -> torch.Tensor:
    """Deterministic start for Lloyd: pixels at evenly spaced ranks of brightness (R+G+B).

    `sample` is (B, N, 3) uint8; returns (B, clusters, 3) float32 fixed-point centres.
    """
    check_pixels(sample)
    n = sample.shape[1]
    if n == 0:
        raise ValueError("cannot start K-means on an empty sample")
    brightness = sample.to(torch.int32).sum(-1)
    order = torch.sort(brightness, dim=1, stable=True).indices
    ranks = ((torch.arange(clusters, device=sample.device) * 2 + 1) * n) // (2 * clusters)
    picked = torch.gather(order, 1, ranks.expand(sample.shape[0], -1))
    chosen = torch.gather(sample, 1, picked[..., None].expand(-1, -1, 3))
    return chosen.to(torch.float32) * FIXED_POINT


def reference_assign(pixels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Nearest centre of every pixel by direct computation of Eq. 3 (torch, chunked)."""
    labels = torch.empty(pixels.shape[:2], dtype=torch.int64)
    for start in range(0, pixels.shape[1], _ASSIGN_CHUNK):
        chunk = pixels[:, start : start + _ASSIGN_CHUNK].to(torch.float32) * FIXED_POINT
        dist = torch.zeros(chunk.shape[0], chunk.shape[1], centres.shape[1])
        for ch in range(3):  # Eq. 3, channel by channel: exact in float32 (see module docstring)
            diff = chunk[:, :, ch, None] - centres[:, None, :, ch]
            dist += diff * diff
        labels[:, start : start + _ASSIGN_CHUNK] = dist.argmin(-1)  # first minimum = lowest index
    return labels


def assign(pixels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (Eq. 3) for every pixel: (B, N, 3) uint8 -> (B, N) int64."""
    check_pixels(pixels)
    if pixels.is_cuda:
        from activessf_engine.kernels import cupy_pixel_kmeans

        return cupy_pixel_kmeans.assign(pixels, centres)
    identity = torch.arange(centres.shape[1]).expand(centres.shape[0], -1).contiguous()
    return assign_lookup(pixels, centres, identity)


def assign_lookup(pixels: torch.Tensor, centres: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """`table[b, nearest centre]` for every pixel: (B, N, 3) uint8, (B, K, 3), (B, K) -> (B, N).

    Equals `torch.gather(table, 1, assign(pixels, centres))`; on the CPU the lookup is fused into
    the assignment, so no label image is written.
    """
    check_pixels(pixels)
    if pixels.is_cuda:
        return torch.gather(table, 1, assign(pixels, centres))
    from activessf_engine.kernels import cpu_kernels

    out = np.empty(pixels.shape[:2], dtype=table.numpy().dtype)
    cpu_kernels.assign_lookup(pixels.contiguous().numpy(), _fixed_ints(centres), FIXED_POINT, table.numpy(), out)
    return torch.from_numpy(out)


def _fixed_ints(centres: torch.Tensor) -> np.ndarray:
    """Fixed-point centres as int64; they must hold whole numbers (as `initial_centres` and
    `update_centres` make them)."""
    values = centres.numpy()
    whole = np.rint(values)
    if not np.array_equal(values, whole):
        raise ValueError("centres must hold whole fixed-point values (units of 1/FIXED_POINT colour level)")
    return np.ascontiguousarray(whole.astype(np.int64))


def _accumulate_cpu(pixels: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from activessf_engine.kernels import cpu_kernels

    sums = np.zeros((*centres.shape[:2], 3), dtype=np.int64)
    counts = np.zeros(centres.shape[:2], dtype=np.int64)
    cpu_kernels.accumulate(pixels.contiguous().numpy(), _fixed_ints(centres), FIXED_POINT, sums, counts)
    return torch.from_numpy(sums), torch.from_numpy(counts)


def reference_accumulate(pixels: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums of raw pixel values (B, K, 3) and counts (B, K), both int64, in torch."""
    labels = reference_assign(pixels, centres)
    batch, clusters = centres.shape[:2]
    flat = (labels + torch.arange(batch)[:, None] * clusters).reshape(-1)
    sums = torch.zeros(batch * clusters, 3, dtype=torch.int64)
    sums.index_add_(0, flat, pixels.reshape(-1, 3).to(torch.int64))
    counts = torch.bincount(flat, minlength=batch * clusters)
    return sums.reshape(batch, clusters, 3), counts.reshape(batch, clusters)


def update_centres(sums: torch.Tensor, counts: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Eq. 2 in fixed point: round(FIXED_POINT * sum / count), half up; an empty cluster stays put."""
    safe = counts.clamp(min=1)[..., None]
    mean = torch.div(2 * FIXED_POINT * sums + safe, 2 * safe, rounding_mode="floor")
    return torch.where(counts[..., None] > 0, mean.to(torch.float32), centres)


STEPS_PER_CHECK_CUDA = 8  # Lloyd steps queued on a GPU between looks at convergence (each look syncs with the host)


def lloyd(
    sample: torch.Tensor, centres: torch.Tensor, max_iter: int, tolerance: float, steps_per_check: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd iterations of Eq. 2-3 on a batch of pixel sets.

    `sample` (B, N, 3) uint8, `centres` (B, K, 3) fixed point. Stops when no centre of any image
    moves more than `tolerance` colour levels, or after `max_iter` steps. Returns the centres and,
    for each, the number of sample pixels whose mean it is (B, K) int64.

    Convergence is read on the host once every `steps_per_check` steps (default: every step on the CPU,
    where reading it costs nothing; STEPS_PER_CHECK_CUDA on a GPU, which then runs the steps without
    waiting). Steps after the one that converged leave centres and counts as that step left them, so the
    answer is the same for every `steps_per_check`.
    """
    check_pixels(sample)
    if sample.is_cuda:
        from activessf_engine.kernels import cupy_pixel_kmeans

        accumulate = cupy_pixel_kmeans.accumulate
        steps_per_check = steps_per_check or STEPS_PER_CHECK_CUDA
    else:
        accumulate = _accumulate_cpu
        steps_per_check = steps_per_check or 1
    counts = torch.zeros(centres.shape[:2], dtype=torch.int64, device=centres.device)
    converged = torch.zeros((), dtype=torch.bool, device=centres.device)
    for first in range(0, max_iter, steps_per_check):
        for _ in range(min(steps_per_check, max_iter - first)):
            sums, step_counts = accumulate(sample, centres)
            moved = update_centres(sums, step_counts, centres)
            shift = (moved - centres).abs().amax() / FIXED_POINT
            centres = torch.where(converged, centres, moved)
            counts = torch.where(converged, counts, step_counts)
            converged = converged | (shift <= tolerance)
        if converged.item():
            break
    return centres, counts


def merge_clusters(
    centres: np.ndarray, counts: np.ndarray, target: int, method: str = "ward"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`reference_merge_clusters` as a numba kernel, with the same answer: measured on a 20 -> 10 merge,
    about 50 us instead of 1 ms of numpy calls (the largest per-tile cost left on a GPU)."""
    _check_merge(len(centres), target, method)
    from activessf_engine.kernels import cpu_kernels

    means = np.array(centres, dtype=np.float64)
    sizes = np.array(counts, dtype=np.float64)
    owner = cpu_kernels.merge_clusters(means, sizes, target, method == "ward")
    survivors, first_member = np.unique(owner, return_index=True)
    order = survivors[np.argsort(first_member)]  # numbered by first member, as the reference does
    rank = np.empty(len(owner), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[owner], means[order], sizes[order]


def _check_merge(k: int, target: int, method: str) -> None:
    if method not in ("ward", "centroid"):
        raise ValueError(f"unknown merge method {method!r}; valid: ['centroid', 'ward']")
    if not 1 <= target <= k:
        raise ValueError(f"cannot merge {k} clusters into {target}")


def reference_merge_clusters(
    centres: np.ndarray, counts: np.ndarray, target: int, method: str = "ward"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adaptive merging of K colour clusters down to `target` (second stage of the two-stage K-means).

    The paper says only that clusters are merged adaptively; we merge greedily, one pair at a time,
    the pair that costs least: `ward` is the increase of the Eq. 3 objective when the two sets are
    united, n_a n_b / (n_a + n_b) |c_a - c_b|^2; `centroid` is |c_a - c_b|^2. The united centre is the
    count-weighted mean, Eq. 2 applied to the union. Ties go to the lowest pair of indices.

    `centres` (K, 3) in colour units, `counts` (K,). Returns `mapping` (K,) into 0..m-1, numbered
    by first member, the merged centres (m, 3) and their counts (m,), where m = `target`, or fewer
    when fewer than `target` clusters have members (empty clusters join their nearest non-empty one).
    """
    k = len(centres)
    _check_merge(k, target, method)
    means = np.asarray(centres, dtype=np.float64).copy()
    sizes = np.asarray(counts, dtype=np.float64).copy()
    members = [[i] for i in range(k)]
    alive = sizes > 0 if sizes.any() else np.ones(k, dtype=bool)
    # An empty cluster has no pixels to merge, so no Ward cost; it joins the non-empty cluster whose
    # centre is nearest, which is where the pixels that later fall nearest to it belong.
    for j in np.flatnonzero(~alive):
        d2 = np.where(alive, ((means - means[j]) ** 2).sum(-1), np.inf)
        members[int(np.argmin(d2))].append(int(j))
    upper = np.triu(np.ones((k, k), dtype=bool), 1)  # each pair once, a < b
    for _ in range(int(alive.sum()) - target):
        d2 = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
        if method == "ward":
            total = sizes[:, None] + sizes[None, :]
            cost = np.divide(sizes[:, None] * sizes[None, :] * d2, total, out=np.zeros_like(d2), where=total > 0)
        else:
            cost = d2
        cost = np.where(upper & alive[:, None] & alive[None, :], cost, np.inf)
        a, b = divmod(int(np.argmin(cost)), k)  # first minimum in row-major order: lowest pair
        total = sizes[a] + sizes[b]
        if total > 0:
            means[a] = (means[a] * sizes[a] + means[b] * sizes[b]) / total
        sizes[a] = total
        members[a] += members[b]
        alive[b] = False
    alive = [int(i) for i in np.flatnonzero(alive)]
    order = sorted(alive, key=lambda i: min(members[i]))
    mapping = np.empty(k, dtype=np.int64)
    for new_index, a in enumerate(order):
        mapping[members[a]] = new_index
    return mapping, np.stack([means[a] for a in order]), np.array([sizes[a] for a in order])
