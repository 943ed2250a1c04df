"""Closing of a binary mask by a (2r+1) x (2r+1) square: a dilation, then an erosion for which outside the tile
counts as set (a region at the edge is not eaten from it). Gaps narrower than the square between two parts
of a region are filled; a region's outline is otherwise kept.

The erosion is the complement of a dilation of the complement, so both steps are one operation: "is any
pixel of the window set". On a GPU that is an integral image (two cumulative sums, four lookups a pixel);
on the CPU a numba kernel with running counts (``cpu_kernels.dilate_square``): measured 15-20 ms per
640x480 mask at radius 8 for the integral image in torch and numpy, 75-100 ms for max-pooling or scipy's
closing, against ~1 ms. Both are exact integer counts, so every device gives the same mask.
"""

from __future__ import annotations

import numpy as np
import torch


def _window_has_any(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Torch version (any device): (B, H, W) bool -> bool, whether any pixel of each (2r+1)^2 window is set."""
    size = 2 * radius + 1
    padded = torch.nn.functional.pad(masks.to(torch.int32), (radius + 1, radius, radius + 1, radius))
    total = padded.cumsum(1).cumsum(2)  # with a leading zero row and column: window sums by four lookups
    sums = total[:, size:, size:] - total[:, :-size, size:] - total[:, size:, :-size] + total[:, :-size, :-size]
    return sums > 0


def reference_close_masks(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Torch version of `close_masks` (any device)."""
    return ~_window_has_any(~_window_has_any(masks, radius), radius)


def close_masks(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """A (B, H, W) bool stack closed by a (2r+1) x (2r+1) square, on its device (radius 0: as it is)."""
    if masks.dtype != torch.bool or masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W) bool, got {masks.dtype} {tuple(masks.shape)}")
    if radius <= 0:
        return masks
    if masks.is_cuda:
        return reference_close_masks(masks, radius)
    from activessf_engine.kernels import cpu_kernels

    rows = np.empty(tuple(masks.shape), dtype=np.int32)
    dilated, closed = np.empty(tuple(masks.shape), dtype=np.uint8), np.empty(tuple(masks.shape), dtype=np.uint8)
    cpu_kernels.dilate_square(masks.contiguous().numpy().view(np.uint8), radius, rows, dilated)
    cpu_kernels.dilate_square(1 - dilated, radius, rows, closed)
    return torch.from_numpy(closed == 0)
