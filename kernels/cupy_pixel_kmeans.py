"""CUDA path of pixel K-means: the Eq. 3 assignment and the Eq. 2 sums, as CuPy kernels over torch tensors.

Called by ``pixel_kmeans.assign`` and ``pixel_kmeans.lloyd`` for CUDA tensors; answers are identical to
the torch references there (``reference_assign``, ``reference_accumulate``), and so, for fixed-point
centres, to the CPU path. The squared distance is computed with the same float32 operations in the same
order, each rounded to nearest (no FMA), so labels agree bit for bit with the reference for any finite
centres; with fixed-point centres every value is an integer below 2^24 and nothing is rounded at all.
Ties go to the lowest cluster index. Sums and counts are integers, so the order of the GPU's atomic
additions does not matter.

Tensors pass to CuPy through DLPack without copies (a non-contiguous input is made contiguous first),
kernels run on torch's current stream of the input's device, and outputs are allocated by torch.
"""

from __future__ import annotations

import cupy
import numpy as np
import torch

from activessf_engine.kernels import cupy_source

_SOURCE = "pixel_kmeans"
_BLOCK = cupy_source.DEFINES[_SOURCE]["ACTIVESSF_BLOCK"]
_TILE = _BLOCK * cupy_source.DEFINES[_SOURCE]["ACTIVESSF_ITEMS"]  # pixels per block
MAX_CLUSTERS = cupy_source.DEFINES[_SOURCE]["ACTIVESSF_MAX_CLUSTERS"]


def _parse_inputs(pixels: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3 or not pixels.is_cuda:
        raise ValueError(
            f"pixels must be a CUDA uint8 tensor of shape (B, N, 3), got {pixels.dtype} "
            f"{tuple(pixels.shape)} on {pixels.device}"
        )
    if centres.dtype != torch.float32 or centres.ndim != 3 or centres.shape[-1] != 3:
        raise ValueError(
            f"centres must be a float32 tensor of shape (B, K, 3), got {centres.dtype} {tuple(centres.shape)}"
        )
    if centres.device != pixels.device:
        raise ValueError(f"centres are on {centres.device} but pixels on {pixels.device}")
    if centres.shape[0] != pixels.shape[0]:
        raise ValueError(f"{centres.shape[0]} sets of centres for a batch of {pixels.shape[0]} images")
    if not 1 <= centres.shape[1] <= MAX_CLUSTERS:
        raise ValueError(f"the CUDA kernels take 1 to {MAX_CLUSTERS} clusters, got {centres.shape[1]}")
    return pixels.detach().contiguous(), centres.detach().contiguous()


def _launch(
    kernel_name: str,
    pixels: torch.Tensor,
    centres: torch.Tensor,
    outputs: tuple[torch.Tensor, ...],
    per_pixel: bool,
) -> None:
    """Run `kernel_name` over every launch window of `cupy_source.launch_windows`.

    `outputs` are per pixel, (B, N), when `per_pixel`, else per cluster, (B, K, ...). A window of whole
    images passes the slices of every tensor for those images; a window inside one image passes that
    image's centres, a range of its pixels, and the same range of per-pixel outputs or the image's whole
    per-cluster outputs (which the kernel adds to).
    """
    batch, n = pixels.shape[:2]
    clusters = centres.shape[1]
    device = pixels.device
    with cupy.cuda.Device(device.index), cupy_source.current_stream(device):
        kernel = cupy_source.get_function(_SOURCE, kernel_name)
        for b0, b1, p0, p1 in cupy_source.launch_windows(batch, n, 3):
            if p1 == p0:
                continue
            window = [out[b0:b1, p0:p1] if per_pixel else out[b0:b1] for out in outputs]
            args = (
                cupy.from_dlpack(pixels[b0:b1, p0:p1]),
                cupy.from_dlpack(centres[b0:b1]),
                *(cupy.from_dlpack(out) for out in window),
                np.int32(p1 - p0),
                np.int32(clusters),
            )
            grid = ((p1 - p0 + _TILE - 1) // _TILE, b1 - b0)
            kernel(grid, (_BLOCK,), args)


def assign(pixels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre for every pixel: (B, N, 3) uint8 and (B, K, 3) float32 -> (B, N) int64.

    Bit-identical to the torch reference, ties to the lowest index (see the module docstring).
    """
    pixels, centres = _parse_inputs(pixels, centres)
    labels = torch.empty(pixels.shape[:2], dtype=torch.int64, device=pixels.device)
    _launch("activessf_pixel_kmeans_assign", pixels, centres, (labels,), per_pixel=True)
    return labels


def accumulate(pixels: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Assignment plus, per image and cluster, the sums of the raw uint8 channels and the pixel counts.

    Returns int64 tensors (B, K, 3) and (B, K), equal to ``reference_accumulate``.
    """
    pixels, centres = _parse_inputs(pixels, centres)
    batch, clusters = centres.shape[:2]
    sums = torch.zeros((batch, clusters, 3), dtype=torch.int64, device=pixels.device)
    counts = torch.zeros((batch, clusters), dtype=torch.int64, device=pixels.device)
    _launch("activessf_pixel_kmeans_accumulate", pixels, centres, (sums, counts), per_pixel=False)
    return sums, counts
