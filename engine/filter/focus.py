"""Out-of-focus tiles: the variance of the Laplacian of a tile's grey image (Pech-Pacheco et al., 2000).

A sharp smear has strong edges at every cell border, so a large variance; a blurred one has few. The
Laplacian is OpenCV's 3x3 aperture (cv2.Laplacian with ksize=1) as a torch convolution, so it runs on the
device the tiles are on; the grey image is ITU-R BT.601 luma, as cv2.cvtColor's RGB2GRAY."""

from __future__ import annotations

import torch

LUMA = (0.299, 0.587, 0.114)
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def sharpness(tiles: torch.Tensor) -> list[float]:
    """The variance of the Laplacian of each tile of a (B, H, W, 3) uint8 batch (grey levels 0-255)."""
    weights = torch.tensor(LUMA, device=tiles.device)
    grey = (tiles.float() * weights).sum(dim=-1).round()[:, None]  # (B, 1, H, W), 8-bit levels as OpenCV's
    kernel = torch.tensor(LAPLACIAN, device=tiles.device)[None, None]
    laplacian = torch.nn.functional.conv2d(torch.nn.functional.pad(grey, (1, 1, 1, 1), mode="reflect"), kernel)
    return laplacian.flatten(1).var(dim=1, unbiased=False).tolist()
