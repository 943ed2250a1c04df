"""Eq. 7: the nearest prototype of each feature vector, and its Euclidean distance."""

from __future__ import annotations

import numpy as np
import torch

_CHUNK_ROWS = 4096  # candidates per block of the distance matrix


def nearest_prototype(
    features: np.ndarray | torch.Tensor, centres: np.ndarray | torch.Tensor, chunk_rows: int = _CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre and its Euclidean distance (Eq. 7) for every row of `features` (n, d).

    Computed blockwise as |x|^2 - 2 x c^T + |c|^2 in float64, clamped at 0, square-rooted, on the
    device of `features` when it is a torch tensor (else on the CPU). Ties go to the lower index.
    Returns (cluster (n,) int64, distance (n,) float32) as numpy arrays.
    """
    x = torch.as_tensor(features)
    c = torch.as_tensor(centres).to(device=x.device, dtype=torch.float64)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"features (n, d) and centres (K, d) must agree, got {tuple(x.shape)} and {tuple(c.shape)}")
    if c.shape[0] == 0:
        raise ValueError("no centres to compare with")
    c_sq = (c * c).sum(1)
    clusters, distances = [], []
    for start in range(0, x.shape[0], chunk_rows):
        block = x[start : start + chunk_rows].to(torch.float64)
        sq = (block * block).sum(1, keepdim=True) - 2.0 * (block @ c.T) + c_sq
        best, index = sq.clamp_min_(0.0).min(1)
        clusters.append(index.cpu())
        distances.append(best.sqrt_().to(torch.float32).cpu())
    if not clusters:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    return torch.cat(clusters).numpy().astype(np.int64), torch.cat(distances).numpy()
