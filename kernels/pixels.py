"""The one check of a batch of pixels that the per-pixel kernels take: (B, N, 3) uint8 RGB."""

from __future__ import annotations

import torch


def check_pixels(pixels: torch.Tensor) -> None:
    """Refuse anything but a (B, N, 3) uint8 tensor."""
    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"pixels must be a uint8 tensor of shape (B, N, 3), got {pixels.dtype} {tuple(pixels.shape)}")
