"""CUDA path of connected components: cupyx labels, then boxes and counts in one pass of our kernel.

Called by ``components.label`` and ``components.region_stats`` for CUDA tensors, with the CPU path's
conventions: int32 labels 1..n in raster order of each region's first pixel (0 = background); boxes
int64 (n, 4) as [x0, y0, x1, y1] with x1 and y1 exclusive, and (0, 0, 0, 0) for a label with no pixel;
counts int64 (n,). Every result is an integer, a min, a max or a sum, so GPU and CPU agree exactly.

Tensors pass to CuPy through DLPack without copies, work runs on torch's current stream of the input's
device, and outputs are allocated by torch.
"""

from __future__ import annotations

import cupy
import cupyx.scipy.ndimage
import numpy as np
import torch

from activessf_engine.kernels import cupy_source

_SOURCE = "components"
_BLOCK = cupy_source.DEFINES[_SOURCE]["ACTIVESSF_BLOCK"]
_WARPS = _BLOCK // 32
_SEGMENT = 32 * cupy_source.DEFINES[_SOURCE]["ACTIVESSF_CHUNKS"]  # pixels of a row per warp
_INT32_MAX = np.iinfo(np.int32).max


def label(mask: torch.Tensor, structure: np.ndarray) -> tuple[torch.Tensor, int]:
    """Label the connected regions of an (H, W) or (B, H, W) bool CUDA mask: int32 labels 1..n (0 =
    background), n. `structure` has the mask's number of dimensions.

    ``cupyx.scipy.ndimage.label`` already numbers regions as scipy does, so no renumbering is needed: its
    union-find always hangs the larger root under the smaller, so each region's root is its smallest
    C-order index, i.e. its first pixel in raster order, and the roots are sorted before being numbered
    1..n. (Read in CuPy's ``cupyx/scipy/ndimage/_measurements.py``; the GPU tests compare with scipy.)
    Synchronizes the stream once, to read n.
    """
    if mask.ndim != structure.ndim or mask.dtype != torch.bool or not mask.is_cuda:
        raise ValueError(
            f"mask must be a {structure.ndim}-D bool CUDA tensor, got {mask.dtype} {tuple(mask.shape)} on {mask.device}"
        )
    labels = torch.empty(mask.shape, dtype=torch.int32, device=mask.device)
    with cupy.cuda.Device(mask.device.index), cupy_source.current_stream(mask.device):
        # a bool tensor is viewed as uint8 (same bytes): the label kernel only asks whether x != 0
        source = cupy.from_dlpack(mask.detach().contiguous().view(torch.uint8))
        count = cupyx.scipy.ndimage.label(source, structure=structure, output=cupy.from_dlpack(labels))
    return labels, int(count)


def region_stats(labels: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding box (x0, y0, x1, y1; x1 and y1 exclusive) and pixel count of regions 1..count.

    One pass of ``activessf_region_stats`` over an int32 (H, W) CUDA label image; labels outside
    1..count are ignored. Returns int64 tensors (count, 4) and (count,) on the device of `labels`.
    """
    if labels.ndim != 2 or labels.dtype != torch.int32 or not labels.is_cuda:
        raise ValueError(
            f"labels must be a 2-D int32 CUDA tensor, got {labels.dtype} {tuple(labels.shape)} on {labels.device}"
        )
    if not 0 <= count <= _INT32_MAX:
        raise ValueError(f"count must be between 0 and {_INT32_MAX}, got {count}")
    labels = labels.detach().contiguous()
    height, width = labels.shape
    device = labels.device
    box = torch.zeros((count, 4), dtype=torch.int32, device=device)
    box[:, :2] = _INT32_MAX  # x0, y0 start high (atomicMin); x1, y1 start at 0 (atomicMax)
    counts = torch.zeros(count, dtype=torch.int64, device=device)
    if count > 0 and labels.numel() > 0:
        segments = (width + _SEGMENT - 1) // _SEGMENT
        with cupy.cuda.Device(device.index), cupy_source.current_stream(device):
            kernel = cupy_source.get_function(_SOURCE, "activessf_region_stats")
            for _, _, row0, row1 in cupy_source.launch_windows(1, height, width):
                grid = ((segments + _WARPS - 1) // _WARPS, min(row1 - row0, cupy_source.MAX_GRID_Y))
                args = (
                    cupy.from_dlpack(labels[row0:row1]),
                    np.int32(row1 - row0),
                    np.int32(width),
                    np.int32(row0),
                    np.int32(count),
                    cupy.from_dlpack(box),
                    cupy.from_dlpack(counts),
                )
                kernel(grid, (_BLOCK,), args)
    boxes = torch.where(counts[:, None] > 0, box.to(torch.int64), 0)
    return boxes, counts
