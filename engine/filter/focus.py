"""Out-of-focus tiles: the variance of the Laplacian of a tile's grey image (Pech-Pacheco et al., 2000).

A sharp smear has strong edges at every cell border, so a large variance; a blurred one has few. The
grey image and the Laplacian are OpenCV's (cv2.cvtColor RGB2GRAY, cv2.Laplacian with ksize=1), summed
exactly by ``kernels.laplacian_sums`` on the tiles' device."""

from __future__ import annotations

import torch

from activessf_engine import kernels


def sharpness(tiles: torch.Tensor) -> list[float]:
    """The variance of the Laplacian of each tile of a (B, H, W, 3) uint8 batch (grey levels 0-255)."""
    pixels = tiles.shape[1] * tiles.shape[2]
    return [
        float(squares) / pixels - (float(total) / pixels) ** 2
        for total, squares in kernels.laplacian_sums(tiles).tolist()
    ]
