"""The Laplacian of a tile's grey image, summed: what the variance-of-Laplacian focus measure needs.

The grey image is OpenCV's for 8-bit RGB (cv2.cvtColor RGB2GRAY: BT.601 luma in 15-bit fixed point) and
the Laplacian its 3x3 aperture (cv2.Laplacian with ksize=1, reflect-101 borders). Both are exact integers
and so are their sums, so every device gives the same answer. On the CPU this runs as a numba kernel
(``cpu_kernels.laplacian_sums``): one pass, no float image; measured 33 ms per 640x480 tile for torch's
float convolution on one thread against ~2 ms (benchmarks/filter_throughput.py, stage "focus").
"""

from __future__ import annotations

import numpy as np
import torch

GREY_SHIFT = 15
GREY_WEIGHTS = (9798, 19235, 3735)  # R, G, B; sum 2^15: equal to cv2 RGB2GRAY for all 2^24 colours (tested)
APERTURE = ((0, 1, 0), (1, -4, 1), (0, 1, 0))


def reference_laplacian_sums(tiles: torch.Tensor) -> torch.Tensor:
    """Torch version (any device): (B, H, W, 3) uint8 -> (B, 2) int64, each tile's Laplacian sum and sum of squares."""
    weights = torch.tensor(GREY_WEIGHTS, device=tiles.device, dtype=torch.int32)
    grey = ((tiles.to(torch.int32) * weights).sum(dim=-1) + (1 << (GREY_SHIFT - 1))) >> GREY_SHIFT
    padded = torch.nn.functional.pad(grey[:, None].float(), (1, 1, 1, 1), mode="reflect")  # reflect-101
    aperture = torch.tensor(APERTURE, device=tiles.device, dtype=torch.float32)[None, None]
    # float32 is exact here: grey levels and Laplacian values are small integers (|value| <= 1020)
    laplacian = torch.nn.functional.conv2d(padded, aperture).to(torch.int64).flatten(1)
    return torch.stack([laplacian.sum(dim=1), (laplacian * laplacian).sum(dim=1)], dim=1)


def laplacian_sums(tiles: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) uint8 on any device -> (B, 2) int64 numpy: each tile's Laplacian sum and sum of squares."""
    if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"tiles must be (B, H, W, 3) uint8, got {tiles.dtype} {tuple(tiles.shape)}")
    if min(tiles.shape[1:3]) < 2:
        raise ValueError(f"a {tiles.shape[1]}x{tiles.shape[2]} tile is too small for a 3x3 Laplacian")
    if tiles.is_cuda:
        return reference_laplacian_sums(tiles).cpu().numpy()
    from activessf_engine.kernels import cpu_kernels

    sums = np.empty((tiles.shape[0], 2), dtype=np.int64)
    weights = np.array(GREY_WEIGHTS, dtype=np.int32)
    cpu_kernels.laplacian_sums(tiles.contiguous().numpy(), weights, GREY_SHIFT, sums)
    return sums
