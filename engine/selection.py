"""Active Sample Selection (Eq. 7-9) and the baselines it is compared with.

A candidate x is assigned to its nearest prototype c_i (Eq. 7, Euclidean distance) and kept when
d(x, c_i) <= threshold_i (Eq. 9), with the density-aware threshold of Eq. 8. Selection from stored
(cluster, distance) arrays needs no features (`apply_thresholds`, `reselect`), so alpha or the
threshold mode can be changed after the expensive pass; only the `balanced` baseline needs features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.cluster import KMeans

from activessf_engine.config import SelectionConfig

if TYPE_CHECKING:
    from activessf_engine.prototypes import Prototypes

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
    """Threshold of each prototype (K,) float64: Eq. 8, or `config.fixed_threshold` in fixed mode."""
    if config.threshold_mode == "fixed":
        return np.full(len(prototypes.sizes), float(config.fixed_threshold))
    if config.threshold_mode != "density":
        raise ValueError(f"threshold_mode must be 'density' or 'fixed', got {config.threshold_mode!r}")
    return density_thresholds(prototypes.sizes, prototypes.lower, prototypes.upper, config.alpha, config.bounds)


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


@dataclass(frozen=True, eq=False)
class Decisions:
    """One row per candidate. cluster, distance and threshold are those of activessf whatever the
    strategy, so that reports can compare strategies."""

    cluster: np.ndarray  # (n,) int64, nearest prototype (Eq. 7)
    distance: np.ndarray  # (n,) float32, Euclidean distance to it
    threshold: np.ndarray  # (n,) float64, threshold of that prototype (Eq. 8 or fixed)
    selected: np.ndarray  # (n,) bool
    strategy: str

    def __len__(self) -> int:
        return len(self.cluster)


Strategy = Callable[[np.ndarray, np.ndarray | None, "Prototypes", SelectionConfig], np.ndarray]
"""(activessf selection (n,) bool, candidate features (n, d) or None, prototypes, config) -> (n,) bool."""


def _strategy_activessf(
    activessf: np.ndarray, features: np.ndarray | None, prototypes: Prototypes, config: SelectionConfig
) -> np.ndarray:
    return activessf


def _strategy_all(
    activessf: np.ndarray, features: np.ndarray | None, prototypes: Prototypes, config: SelectionConfig
) -> np.ndarray:
    return np.ones_like(activessf)


def _strategy_random(
    activessf: np.ndarray, features: np.ndarray | None, prototypes: Prototypes, config: SelectionConfig
) -> np.ndarray:
    """As many candidates as activessf keeps, uniformly without replacement."""
    rng = np.random.default_rng(config.seed)
    selected = np.zeros_like(activessf)
    selected[rng.choice(len(activessf), size=int(activessf.sum()), replace=False)] = True
    return selected


def water_fill(total: int, capacity: Sequence[int] | np.ndarray) -> np.ndarray:
    """Split `total` into equal shares over groups; a group smaller than its share gives the surplus
    to the others. Returns the count per group (int64), summing to min(total, capacity.sum())."""
    capacity = np.asarray(capacity, dtype=np.int64)
    counts = np.zeros_like(capacity)
    remaining = min(int(total), int(capacity.sum()))
    order = np.argsort(capacity, kind="stable")  # smallest first, so surplus flows to larger groups
    for position, group in enumerate(order):
        counts[group] = min(int(capacity[group]), remaining // (len(order) - position))
        remaining -= int(counts[group])
    return counts


def _kmeans_labels(points: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    clusters = min(clusters, len(points))
    if clusters <= 1:
        return np.zeros(len(points), dtype=np.int64)
    return KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(points).labels_.astype(np.int64)


def _strategy_balanced(
    activessf: np.ndarray, features: np.ndarray | None, prototypes: Prototypes, config: SelectionConfig
) -> np.ndarray:
    """After Vo et al. 2024 (automatic data curation for SSL): two-level hierarchical k-means on the
    candidate features, then as many candidates as activessf keeps, spread equally over level-1
    clusters, then over their sub-clusters (`water_fill` at each level), uniformly within a leaf.

    Simplified from the paper: two levels of plain scikit-learn k-means (n_init=1, seeded) on the CPU,
    without its resampling steps; level 1 has as many clusters as there are prototypes.
    """
    if features is None:
        raise ValueError("the balanced strategy clusters the candidate features; pass them")
    points = np.asarray(features, dtype=np.float32)
    rng = np.random.default_rng(config.seed)
    selected = np.zeros(len(points), dtype=bool)
    total = int(activessf.sum())
    if total == 0:
        return selected
    top = _kmeans_labels(points, len(prototypes.sizes), config.seed)
    top_groups = [np.flatnonzero(top == label) for label in range(int(top.max()) + 1)]
    for members, quota in zip(top_groups, water_fill(total, [len(g) for g in top_groups]), strict=True):
        if quota == 0:
            continue
        sub = _kmeans_labels(points[members], config.balanced_subclusters, config.seed)
        leaves = [members[sub == label] for label in range(int(sub.max()) + 1)]
        for leaf, leaf_quota in zip(leaves, water_fill(int(quota), [len(leaf) for leaf in leaves]), strict=True):
            selected[rng.choice(leaf, size=int(leaf_quota), replace=False)] = True
    return selected


_STRATEGIES: dict[str, Strategy] = {
    "activessf": _strategy_activessf,
    "all": _strategy_all,
    "random": _strategy_random,
    "balanced": _strategy_balanced,
}


def list_strategies() -> list[str]:
    """Names accepted by `SelectionConfig.strategy`."""
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as `name`; an unknown name raises an error listing the valid ones."""
    if name not in _STRATEGIES:
        raise ValueError(f"unknown selection strategy {name!r}; valid: {list_strategies()}")
    return _STRATEGIES[name]


def reselect(
    cluster: np.ndarray,
    distance: np.ndarray,
    prototypes: Prototypes,
    config: SelectionConfig,
    features: np.ndarray | None = None,
) -> Decisions:
    """Decisions from stored nearest-prototype results; `features` are needed only by `balanced`."""
    strategy = get_strategy(config.strategy)
    activessf = apply_thresholds(cluster, distance, prototypes, config)
    thresholds = cluster_thresholds(prototypes, config)
    return Decisions(
        cluster=np.asarray(cluster, dtype=np.int64),
        distance=np.asarray(distance, dtype=np.float32),
        threshold=thresholds[cluster],
        selected=strategy(activessf, features, prototypes, config),
        strategy=config.strategy,
    )


def select(features: np.ndarray | torch.Tensor, prototypes: Prototypes, config: SelectionConfig) -> Decisions:
    """Active Sample Selection of candidates (n, d) against `prototypes` (Eq. 7-9), or a baseline."""
    cluster, distance = nearest_prototype(features, prototypes.centres)
    candidate_features = None
    if config.strategy == "balanced":
        candidate_features = features.cpu().numpy() if isinstance(features, torch.Tensor) else features
    return reselect(cluster, distance, prototypes, config, candidate_features)
