"""RGB -> HSV in OpenCV's 8-bit units, in integer arithmetic, identical on every device and to OpenCV.

The paper's colour ranges (purple, deep blue) are in the units of ``cv2.cvtColor(..., COLOR_RGB2HSV)``
on 8-bit images: H 0-179 (degrees / 2), S and V 0-255. OpenCV computes them with 12-bit fixed-point
division tables, not in floating point; this module does the same with torch integer ops, so the
answer is OpenCV's bit for bit (tests/test_hsv.py checks all 2^24 colours against cv2) and the same
on the CPU and on CUDA.

Why not Kornia's float ``rgb_to_hsv`` (which this replaces): torch divides a float32 tensor by a Python
scalar as a true division on the CPU but as a multiplication by the reciprocal on CUDA, so ``rgb /
255`` and Kornia's internal ``h / 6`` round differently on the two devices; about 53,000 colours got
another H and 329 flipped the purple mask (e.g. RGB (41, 0, 60): H 140 on the CPU, 141 on CUDA). Integer
arithmetic has no such freedom. Kornia still supplies the Gaussian weights (``kernels.blur``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from activessf_engine.config import HsvRange
from activessf_engine.kernels.pixels import check_pixels

HSV_SHIFT = 12  # OpenCV's hsv_shift: the division tables hold (value << 12) / divisor
HUE_RANGE = 180  # 8-bit hue: degrees / 2


@functools.cache
def _division_tables() -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's sdiv_table and hdiv_table180: round((255 << 12) / i) and round((180 << 12) / (6 i)), 0 at i = 0.

    cvRound rounds half to even, as numpy's rint does.
    """
    i = np.arange(256, dtype=np.float64)
    safe = np.maximum(i, 1)
    saturation = np.where(i > 0, np.rint((255 << HSV_SHIFT) / safe), 0).astype(np.int32)
    hue = np.where(i > 0, np.rint((HUE_RANGE << HSV_SHIFT) / (6.0 * safe)), 0).astype(np.int32)
    return saturation, hue


def hsv_opencv(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 RGB -> (..., 3, H, W) int32 HSV, exactly as OpenCV's RGB2HSV on 8-bit images.

    V = max(R, G, B); S = round(255 (V - min) / V); H = round(30 (difference of the other two) / (V - min))
    offset by the sector of the largest channel, in 12-bit fixed point with OpenCV's tables and its
    round-half-up shift, wrapped into 0-179.
    """
    if rgb.dtype != torch.uint8 or rgb.ndim < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"expected (..., 3, H, W) uint8 RGB, got {rgb.dtype} {tuple(rgb.shape)}")
    saturation_table, hue_table = (torch.from_numpy(t).to(rgb.device) for t in _division_tables())
    r, g, b = rgb.to(torch.int32).unbind(-3)
    value = torch.maximum(torch.maximum(r, g), b)
    diff = value - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (HSV_SHIFT - 1)
    saturation = (diff * saturation_table[value.long()] + half) >> HSV_SHIFT
    # OpenCV's branch order: V == R first, then V == G, else V == B
    sector = torch.where(value == r, g - b, torch.where(value == g, b - r + 2 * diff, r - g + 4 * diff))
    hue = (sector * hue_table[diff.long()] + half) >> HSV_SHIFT  # arithmetic shift: floor, as in C
    hue = torch.where(hue < 0, hue + HUE_RANGE, hue)
    return torch.stack([hue, saturation, value], dim=-3)


def in_hsv_ranges(hsv: torch.Tensor, ranges: Sequence[HsvRange]) -> torch.Tensor:
    """OR of inclusive range masks (like cv2.inRange) over (..., 3, H, W) OpenCV HSV -> (..., H, W) bool."""
    h, s, v = hsv.unbind(-3)
    mask = torch.zeros_like(h, dtype=torch.bool)
    for r in ranges:
        mask |= (h >= r.h[0]) & (h <= r.h[1]) & (s >= r.s[0]) & (s <= r.s[1]) & (v >= r.v[0]) & (v <= r.v[1])
    return mask


def hsv_mask(pixels: torch.Tensor, ranges: Sequence[HsvRange]) -> torch.Tensor:
    """(B, N, 3) uint8 RGB pixels -> (B, N) bool: `in_hsv_ranges` of their `hsv_opencv`, on their device. On the
    CPU one numba pass (``cpu_kernels.hsv_mask``, the same integer arithmetic): measured 1.9 ms per 640x480 BCCD
    tile against 11.3 ms for the torch ops on the same 2 threads, which hold six int32 planes of every pixel."""
    check_pixels(pixels)
    if pixels.is_cuda:
        return in_hsv_ranges(hsv_opencv(pixels.permute(0, 2, 1)[..., None]), ranges)[..., 0]
    from activessf_engine.kernels import cpu_kernels

    bounds = np.array([(*r.h, *r.s, *r.v) for r in ranges], dtype=np.int32).reshape(-1, 6)
    out = np.empty(tuple(pixels.shape[:2]), dtype=np.uint8)
    cpu_kernels.hsv_mask(pixels.contiguous().numpy(), *_division_tables(), bounds, out)
    return torch.from_numpy(out.view(np.bool_))
