"""Compute kernels of Cell Region Filtering.

Each operation has one public function whose implementation is chosen by the device of its input:
a short torch/numpy/scipy reference on the CPU, CuPy kernels (CUDA C sources in ``cuda/``) on a GPU.
The CPU reference defines the answer; the GPU path is tested against it.
"""

from activessf_engine.kernels.blur import normalize_blur
from activessf_engine.kernels.colour_table import colour_table_mask, table_index
from activessf_engine.kernels.components import batch_region_stats, label, region_stats
from activessf_engine.kernels.cupy_source import LAUNCH_ELEMENT_LIMIT
from activessf_engine.kernels.hsv import hsv_mask, hsv_opencv, in_hsv_ranges
from activessf_engine.kernels.laplacian import laplacian_sums
from activessf_engine.kernels.morphology import close_masks
from activessf_engine.kernels.pixel_kmeans import (
    FIXED_POINT,
    assign,
    assign_lookup,
    initial_centres,
    lloyd,
    merge_clusters,
)

__all__ = [
    "FIXED_POINT",
    "LAUNCH_ELEMENT_LIMIT",
    "assign",
    "assign_lookup",
    "batch_region_stats",
    "close_masks",
    "colour_table_mask",
    "hsv_mask",
    "hsv_opencv",
    "in_hsv_ranges",
    "initial_centres",
    "label",
    "laplacian_sums",
    "lloyd",
    "merge_clusters",
    "normalize_blur",
    "region_stats",
    "table_index",
]
