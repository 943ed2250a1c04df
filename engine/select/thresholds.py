"""Density-aware thresholds (Eq. 8) and the decision they make (Eq. 9).

A candidate x is assigned to its nearest prototype c_i (Eq. 7, `nearest`) and kept when
d(x, c_i) <= threshold_i (Eq. 9), with the density-aware threshold of Eq. 8. Selection from stored
(cluster, distance) arrays needs no features (`apply_thresholds`, `strategies.reselect`), so alpha or the
threshold mode can be changed after the expensive pass.

Eq. 8 needs each cluster's spread (UB - LB). A cluster of one or two labeled samples has none: a
singleton's only member is its centre (LB = UB = 0, threshold 0, nothing kept), a pair's two members lie
at the same distance from their midpoint. `degenerate_clusters` finds them; `SelectionConfig.degenerate_clusters`
chooses between the paper's exact Eq. 8 (`eq8`) and bounds borrowed from the clusters with a spread (`borrow`).
"""

from __future__ import annotations

import numpy as np

from activessf_engine.config import SelectionConfig
from activessf_engine.select.prototypes import Prototypes

DEGENERATE_MAX_SIZE = 2  # clusters of at most this many labeled samples have no spread to measure


def degenerate_clusters(sizes: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(K,) bool: clusters too small to have a spread, n_i <= 2 or LB == UB (to float32 precision)."""
    sizes, lower, upper = np.asarray(sizes), np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    return (sizes <= DEGENERATE_MAX_SIZE) | np.isclose(upper, lower, rtol=1e-5, atol=1e-6)


def borrowed_bounds(sizes: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LB and UB (float64) where each degenerate cluster's are replaced by the medians of LB and of UB over
    the clusters with a spread; unchanged when no cluster has one (there is nothing to borrow from)."""
    lower, upper = np.array(lower, dtype=np.float64), np.array(upper, dtype=np.float64)
    degenerate = degenerate_clusters(sizes, lower, upper)
    if degenerate.any() and not degenerate.all():
        lower[degenerate] = np.median(lower[~degenerate])
        upper[degenerate] = np.median(upper[~degenerate])
    return lower, upper


def density_thresholds(
    sizes: np.ndarray, lower: np.ndarray, upper: np.ndarray, alpha: float, bounds: str = "cluster"
) -> np.ndarray:
    """Density-aware thresholds of Eq. 8, one per cluster (float64):

        threshold_i = LB + (UB - LB) * (1 - n_i / n_max) ** alpha

    With ``bounds="cluster"`` LB and UB are cluster i's own minimum and maximum member distance (the
    paper: "the minimum and maximum distances within each cluster"); with ``bounds="global"`` they are
    the minimum of `lower` and the maximum of `upper` over all clusters.

    The largest cluster gets LB and small clusters get values near UB: rare subtypes get the larger,
    more permissive threshold. The paper's sentence "automatically lowers the threshold for rare
    subtypes ... while maintaining stricter criteria for common subtypes" describes the same rule, in
    which "lower" means a lower bar to clear, i.e. a larger distance threshold.
    """
    sizes = np.asarray(sizes)
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if not sizes.shape == lower.shape == upper.shape or sizes.ndim != 1 or sizes.size == 0:
        raise ValueError(
            f"sizes, lower, upper must be equal non-empty 1-D arrays, got {sizes.shape}, {lower.shape}, {upper.shape}"
        )
    if (sizes < 1).any():
        raise ValueError(f"cluster sizes must be >= 1, got {sizes.tolist()}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if bounds == "global":
        lower, upper = np.full_like(lower, lower.min()), np.full_like(upper, upper.max())
    elif bounds != "cluster":
        raise ValueError(f"bounds must be 'cluster' or 'global', got {bounds!r}")
    rarity = 1.0 - sizes.astype(np.float64) / sizes.max()
    return lower + (upper - lower) * rarity**alpha


def cluster_thresholds(prototypes: Prototypes, config: SelectionConfig) -> np.ndarray:
    """Threshold of each prototype (K,) float64: Eq. 8 (degenerate clusters' bounds borrowed unless
    `config.degenerate_clusters` is "eq8"), or `config.fixed_threshold` in fixed mode."""
    if config.threshold_mode == "fixed":
        return np.full(len(prototypes.sizes), float(config.fixed_threshold))
    if config.threshold_mode != "density":
        raise ValueError(f"threshold_mode must be 'density' or 'fixed', got {config.threshold_mode!r}")
    lower, upper = prototypes.lower, prototypes.upper
    if config.degenerate_clusters == "borrow":
        lower, upper = borrowed_bounds(prototypes.sizes, lower, upper)
    elif config.degenerate_clusters != "eq8":
        raise ValueError(f"degenerate_clusters must be 'borrow' or 'eq8', got {config.degenerate_clusters!r}")
    return density_thresholds(prototypes.sizes, lower, upper, config.alpha, config.bounds)


def apply_thresholds(
    cluster: np.ndarray, distance: np.ndarray, prototypes: Prototypes, config: SelectionConfig
) -> np.ndarray:
    """Eq. 9: keep x when d(x, c_i) <= threshold_i of its nearest cluster i. Returns (n,) bool.

    Works on stored (cluster, distance) arrays, without features.
    """
    cluster = np.asarray(cluster)
    distance = np.asarray(distance)
    if cluster.shape != distance.shape or cluster.ndim != 1:
        raise ValueError(f"cluster and distance must be equal 1-D arrays, got {cluster.shape} and {distance.shape}")
    thresholds = cluster_thresholds(prototypes, config)
    if cluster.size and (cluster.min() < 0 or cluster.max() >= len(thresholds)):
        raise ValueError(f"cluster indices must lie in [0, {len(thresholds)}), got [{cluster.min()}, {cluster.max()}]")
    return distance.astype(np.float64) <= thresholds[cluster]
