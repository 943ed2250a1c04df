"""All the ROIs of a tile resized at once: torch's antialiased bilinear filter as one gather per filter tap.

`F.interpolate(..., antialias=True)` resizes one window per call, so a tile with n regions costs n calls
(each a handful of kernel launches on CUDA). Here every window's taps and weights along each axis are
computed first, as torch computes them (its `aa_filter`: a triangle of half-width max(1, scale), weights
normalised to sum 1), and the whole batch is resampled in two passes, columns then rows, each one gather and
multiply-add per tap. The sums are float32 and rounded once; torch's CPU uint8 kernel rounds its
fixed-point sums after each pass, so the two differ by at most one level in a few pixels
(tests/test_crops.py states and checks the bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AxisTaps:
    """Along one axis, for each ROI and output pixel: the window pixels it is made of and their weights."""

    index: torch.Tensor  # (n, size, taps) int64, into the window (0 = the window's first pixel)
    weight: torch.Tensor  # (n, size, taps) float32; zero for the taps past a pixel's support, and in padding
    padded: torch.Tensor  # (n, size) bool: true where the ROI holds the pad value


def axis_taps(
    length: np.ndarray, resized: np.ndarray, offset: np.ndarray, size: int, edge: bool, device: torch.device
) -> AxisTaps:
    """Taps along one axis of windows `length` pixels long, resized to `resized` pixels placed at `offset` in
    a ROI `size` pixels long; in the padding either the pad value (`edge` false) or the nearest resized pixel."""
    length, resized = length.astype(np.float64)[:, None], resized[:, None]
    scale = length / resized
    support = np.maximum(scale, 1.0)  # torch: (interp_size / 2) * scale when downscaling, else 1
    position = np.arange(size)[None, :] - offset[:, None]  # in the resized window
    padded = ((position < 0) | (position >= resized)) & (not edge)
    position = np.clip(position, 0, resized - 1)
    center = scale * (position + 0.5)
    first = np.maximum(np.trunc(center - support + 0.5), 0)
    stop = np.minimum(np.trunc(center + support + 0.5), length)
    index = first[..., None] + np.arange(int(np.ceil(support.max())) * 2 + 1)
    weight = np.clip(1 - np.abs((index - center[..., None] + 0.5) / support[..., None]), 0, None)
    weight = np.where(index < stop[..., None], weight, 0)
    weight /= weight.sum(-1, keepdims=True)
    weight *= ~padded[..., None]
    index = np.minimum(index, length[..., None] - 1).astype(np.int64)  # taps of weight 0 read any pixel
    return AxisTaps(
        torch.from_numpy(index).to(device),
        torch.from_numpy(weight.astype(np.float32)).to(device),
        torch.from_numpy(padded).to(device),
    )


def resize_windows(
    tile: torch.Tensor, windows: np.ndarray, rows: AxisTaps, cols: AxisTaps, pad_value: int
) -> torch.Tensor:
    """The (n, size, size, 3) uint8 ROIs of an (H, W, 3) uint8 tile's `windows` (n, 4: x0 y0 x1 y1)."""
    device = tile.device
    x0 = torch.from_numpy(windows[:, 0]).to(device)
    y0 = torch.from_numpy(windows[:, 1]).to(device)
    height = int((windows[:, 3] - windows[:, 1]).max())
    window_rows = (y0[:, None] + torch.arange(height, device=device)).clamp_(max=tile.shape[0] - 1)  # (n, h)
    columns = x0[:, None, None] + cols.index  # (n, size, taps) tile columns
    across = torch.zeros((len(windows), height, cols.index.shape[1], 3), dtype=torch.float32, device=device)
    for tap in range(columns.shape[2]):  # columns first: every window row, resized across
        pixels = tile[window_rows[:, :, None], columns[:, None, :, tap]]  # (n, h, size, 3)
        across.addcmul_(pixels, cols.weight[:, None, :, tap, None])
    roi = torch.zeros((len(windows), rows.index.shape[1], across.shape[2], 3), dtype=torch.float32, device=device)
    batch = torch.arange(len(windows), device=device)[:, None]
    for tap in range(rows.index.shape[2]):  # then rows: the resized rows
        roi.addcmul_(across[batch, rows.index[:, :, tap]], rows.weight[:, :, tap, None, None])
    out = roi.round_().clamp_(0, 255).to(torch.uint8)
    padding = rows.padded[:, :, None] | cols.padded[:, None, :]
    if padding.any():
        out[padding] = pad_value
    return out
