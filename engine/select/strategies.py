"""Selection strategies: ActiveSSF (Eq. 7-9) and the baselines it is compared with.

Only the `balanced` and `gated-balanced` strategies need features; the others decide from stored
(cluster, distance) arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from activessf_engine.config import SelectionConfig
from activessf_engine.select.nearest import nearest_prototype
from activessf_engine.select.prototypes import Prototypes
from activessf_engine.select.thresholds import apply_thresholds, cluster_thresholds


@dataclass(frozen=True, eq=False)
class Decisions:
    """One row per candidate. cluster, distance, threshold and within_threshold are those of activessf
    whatever the strategy, so that reports can compare strategies; for `gated-balanced` a candidate is
    gated out (not within_threshold), sampled out (within, not selected) or kept (selected)."""

    cluster: np.ndarray  # (n,) int64, nearest prototype (Eq. 7)
    distance: np.ndarray  # (n,) float32, Euclidean distance to it
    threshold: np.ndarray  # (n,) float64, threshold of that prototype (Eq. 8 or fixed)
    within_threshold: np.ndarray  # (n,) bool, Eq. 9
    selected: np.ndarray  # (n,) bool
    strategy: str

    def __len__(self) -> int:
        return len(self.cluster)


@dataclass(frozen=True, eq=False)
class Candidates:
    """What a strategy may look at: activessf's per-candidate results, and the features where needed."""

    cluster: np.ndarray  # (n,) nearest prototype
    within_threshold: np.ndarray  # (n,) bool, activessf's selection (Eq. 9)
    features: np.ndarray | None  # (n, d) float32, for the strategies in NEEDS_FEATURES; else None

    def __len__(self) -> int:
        return len(self.cluster)


Strategy = Callable[[Candidates, "Prototypes", SelectionConfig], np.ndarray]
"""(candidates, prototypes, config) -> (n,) bool selection."""


def budget_count(config: SelectionConfig, candidates: int, activessf_kept: int) -> int:
    """The number of candidates `config.budget` asks for: a count, a fraction of `candidates`, or (0)
    as many as activessf keeps; never more than `candidates`."""
    if config.budget == 0:
        wanted = activessf_kept
    elif config.budget <= 1:
        wanted = round(config.budget * candidates)
    else:
        wanted = int(config.budget)
    return min(wanted, candidates)


def _strategy_activessf(candidates: Candidates, prototypes: Prototypes, config: SelectionConfig) -> np.ndarray:
    return candidates.within_threshold


def _strategy_all(candidates: Candidates, prototypes: Prototypes, config: SelectionConfig) -> np.ndarray:
    return np.ones(len(candidates), dtype=bool)


def _strategy_random(candidates: Candidates, prototypes: Prototypes, config: SelectionConfig) -> np.ndarray:
    """The budget (default: as many as activessf keeps), uniformly without replacement."""
    rng = np.random.default_rng(config.seed)
    total = budget_count(config, len(candidates), int(candidates.within_threshold.sum()))
    selected = np.zeros(len(candidates), dtype=bool)
    selected[rng.choice(len(candidates), size=total, replace=False)] = True
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
    from sklearn.cluster import KMeans  # only the baselines that cluster need scikit-learn (seconds to import)

    return KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(points).labels_.astype(np.int64)


def _balanced_sample(
    members: np.ndarray,
    groups: np.ndarray,
    points: np.ndarray | None,
    total: int,
    config: SelectionConfig,
) -> np.ndarray:
    """`total` of the candidate indices `members`, spread equally over their level-1 `groups`, then
    (with `points`) over k-means sub-clusters of each group (`water_fill` at each level), uniformly
    within a leaf. Returns the chosen indices."""
    rng = np.random.default_rng(config.seed)
    chosen = []
    top_groups = [members[groups == label] for label in np.unique(groups)]
    for group, quota in zip(top_groups, water_fill(total, [len(g) for g in top_groups]), strict=True):
        if quota == 0:
            continue
        if points is None:
            leaves = [group]
        else:
            sub = _kmeans_labels(points[group], config.balanced_subclusters, config.seed)
            leaves = [group[sub == label] for label in range(int(sub.max()) + 1)]
        for leaf, leaf_quota in zip(leaves, water_fill(int(quota), [len(leaf) for leaf in leaves]), strict=True):
            chosen.append(rng.choice(leaf, size=int(leaf_quota), replace=False))
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


def _strategy_balanced(candidates: Candidates, prototypes: Prototypes, config: SelectionConfig) -> np.ndarray:
    """After Vo et al. 2024 (automatic data curation for SSL): two-level hierarchical k-means on the
    candidate features, then the budget (default: as many as activessf keeps) spread equally over
    level-1 clusters, then over their sub-clusters, uniformly within a leaf.

    Simplified from the paper: two levels of plain scikit-learn k-means (n_init=1, seeded) on the CPU,
    without its resampling steps; level 1 has as many clusters as there are prototypes.
    """
    points = np.asarray(candidates.features, dtype=np.float32)
    selected = np.zeros(len(candidates), dtype=bool)
    total = budget_count(config, len(candidates), int(candidates.within_threshold.sum()))
    if total == 0:
        return selected
    top = _kmeans_labels(points, len(prototypes.sizes), config.seed)
    selected[_balanced_sample(np.arange(len(points)), top, points, total, config)] = True
    return selected


def _strategy_gated_balanced(candidates: Candidates, prototypes: Prototypes, config: SelectionConfig) -> np.ndarray:
    """Drop the junk, then balance: activessf's thresholds (Eq. 7-9, at `config.alpha`) gate the
    candidates, and the budget is sampled from those that pass, spread equally over groups of them
    (`config.balance_by`). Junk far from every prototype never enters the sample; among what passes,
    a dense common class no longer takes most of the budget. A gate that passes fewer than the budget
    keeps all it passed."""
    if config.budget == 0:
        raise ValueError("gated-balanced samples what passes the gate down to a budget: give --budget N or a fraction")
    gated = np.flatnonzero(candidates.within_threshold)
    selected = np.zeros(len(candidates), dtype=bool)
    total = budget_count(config, len(candidates), len(gated))
    if total == 0 or not len(gated):
        return selected
    points = None if config.balance_by == "prototypes" else np.asarray(candidates.features, dtype=np.float32)
    if config.balance_by == "kmeans":
        groups = _kmeans_labels(points[gated], len(prototypes.sizes), config.seed)
    else:
        groups = candidates.cluster[gated]
    selected[_balanced_sample(gated, groups, points, total, config)] = True
    return selected


_STRATEGIES: dict[str, Strategy] = {
    "activessf": _strategy_activessf,
    "all": _strategy_all,
    "random": _strategy_random,
    "balanced": _strategy_balanced,
    "gated-balanced": _strategy_gated_balanced,
}


def needs_features(config: SelectionConfig) -> bool:
    """Whether the strategy of `config` clusters the candidate features (not only their distances)."""
    return config.strategy == "balanced" or (config.strategy == "gated-balanced" and config.balance_by != "prototypes")


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
    """Decisions from stored nearest-prototype results; `features` are needed where `needs_features`."""
    strategy = get_strategy(config.strategy)
    if needs_features(config) and features is None:
        raise ValueError(f"the {config.strategy} strategy clusters the candidate features; pass them")
    within = apply_thresholds(cluster, distance, prototypes, config)
    cluster = np.asarray(cluster, dtype=np.int64)
    return Decisions(
        cluster=cluster,
        distance=np.asarray(distance, dtype=np.float32),
        threshold=cluster_thresholds(prototypes, config)[cluster],
        within_threshold=within,
        selected=strategy(Candidates(cluster, within, features), prototypes, config),
        strategy=config.strategy,
    )


def select(features: np.ndarray | torch.Tensor, prototypes: Prototypes, config: SelectionConfig) -> Decisions:
    """Active Sample Selection of candidates (n, d) against `prototypes` (Eq. 7-9), or a baseline."""
    cluster, distance = nearest_prototype(features, prototypes.centres)
    candidate_features = None
    if needs_features(config):
        candidate_features = features.cpu().numpy() if isinstance(features, torch.Tensor) else features
    return reselect(cluster, distance, prototypes, config, candidate_features)
