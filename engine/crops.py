"""Cut kept regions from the original tile and resize them to the ROI size, keeping aspect ratio."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from activessf_engine.config import CropConfig


def crop_box(box: tuple[int, int, int, int], width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """The region box grown by `margin` x its longer side on every side, clipped to the tile."""
    x0, y0, x1, y1 = box
    grow = round(margin * max(x1 - x0, y1 - y0))
    return max(0, x0 - grow), max(0, y0 - grow), min(width, x1 + grow), min(height, y1 + grow)


def fit_to_square(image: torch.Tensor, size: int, pad: str = "constant", pad_value: int = 0) -> torch.Tensor:
    """Resize an (H, W, 3) uint8 image so its longer side is `size` (antialiased bilinear), then pad
    the shorter side symmetrically to a square. Returns (size, size, 3) uint8."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {tuple(image.shape)}")
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    chw = image.permute(2, 0, 1)[None].to(torch.float32)
    if (new_h, new_w) != (height, width):
        chw = F.interpolate(chw, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    padding = (left, size - new_w - left, top, size - new_h - top)
    if pad == "edge":
        chw = F.pad(chw, padding, mode="replicate")
    else:
        chw = F.pad(chw, padding, mode="constant", value=float(pad_value))
    return chw[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def cut_rois(tile: torch.Tensor, boxes: np.ndarray, config: CropConfig) -> tuple[np.ndarray, np.ndarray]:
    """Crops for every box of one tile.

    `tile` is the original (H, W, 3) uint8 tile, `boxes` (n, 4) region boxes. Returns the ROIs
    (n, size, size, 3) uint8 and the crop boxes actually cut, margin included (n, 4). The ROIs are resized
    on the tile's device and copied to the host once, for the whole tile.
    """
    height, width = tile.shape[:2]
    cut = np.empty((len(boxes), 4), dtype=np.int64)
    if len(boxes) == 0:
        return np.empty((0, config.size, config.size, 3), dtype=np.uint8), cut
    rois = []
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = crop_box(tuple(int(v) for v in box), width, height, config.margin)
        cut[i] = (x0, y0, x1, y1)
        rois.append(fit_to_square(tile[y0:y1, x0:x1], config.size, config.pad, config.pad_value))
    return torch.stack(rois).cpu().numpy(), cut
