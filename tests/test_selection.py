from __future__ import annotations

import dataclasses
from typing import get_args

import numpy as np
import pytest
import torch

from activessf_engine.config import SelectionConfig, StrategyName
from activessf_engine.select.nearest import nearest_prototype
from activessf_engine.select.prototypes import Prototypes
from activessf_engine.select.strategies import list_strategies, reselect, select, water_fill
from activessf_engine.select.thresholds import apply_thresholds, cluster_thresholds, density_thresholds

SIZES = np.array([10, 5, 1], dtype=np.int64)
LOWER = np.array([1.0, 2.0, 3.0], dtype=np.float32)
UPPER = np.array([5.0, 6.0, 3.0], dtype=np.float32)


def _prototypes(centres: np.ndarray, sizes: np.ndarray = SIZES, lower=LOWER, upper=UPPER) -> Prototypes:
    k = len(centres)
    return Prototypes(
        centres=np.asarray(centres, dtype=np.float32),
        sizes=np.asarray(sizes, dtype=np.int64),
        lower=np.asarray(lower, dtype=np.float32),
        upper=np.asarray(upper, dtype=np.float32),
        class_counts=np.ones((k, 1), dtype=np.int64),
        class_names=["c"],
        model="m",
        fingerprint="f",
    )


# Eq. 8 ---------------------------------------------------------------------------------------------


def test_largest_cluster_gets_lb_and_singleton_gets_its_bound() -> None:
    thresholds = density_thresholds(SIZES, LOWER, UPPER, alpha=1.0)
    assert thresholds[0] == LOWER[0]  # n_i = n_max: (1 - 1)^alpha = 0, exactly LB
    assert thresholds[2] == UPPER[2] == LOWER[2]  # a singleton's LB = UB
    assert thresholds[1] == pytest.approx(2.0 + 4.0 * 0.5)


def test_alpha_changes_only_the_intermediate_clusters() -> None:
    one = density_thresholds(SIZES, LOWER, UPPER, alpha=1.0)
    half = density_thresholds(SIZES, LOWER, UPPER, alpha=0.5)
    assert half[0] == one[0] and half[2] == one[2]
    assert half[1] == pytest.approx(2.0 + 4.0 * np.sqrt(0.5))
    assert half[1] > one[1]  # alpha < 1 lifts mid-sized clusters towards UB


def test_threshold_is_monotone_in_cluster_size() -> None:
    sizes = np.arange(1, 21)
    for alpha in (0.5, 1.0, 2.0):
        thresholds = density_thresholds(sizes, np.zeros(20), np.ones(20), alpha)
        assert (np.diff(thresholds) < 0).all()  # rarer cluster, larger (more permissive) threshold
        assert thresholds[-1] == 0.0 and thresholds[0] < 1.0


def test_global_bounds() -> None:
    thresholds = density_thresholds(SIZES, LOWER, UPPER, alpha=1.0, bounds="global")
    np.testing.assert_allclose(thresholds, [1.0, 1.0 + 5.0 * 0.5, 1.0 + 5.0 * 0.9])


def test_threshold_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="alpha"):
        density_thresholds(SIZES, LOWER, UPPER, alpha=0.0)
    with pytest.raises(ValueError, match="bounds"):
        density_thresholds(SIZES, LOWER, UPPER, alpha=1.0, bounds="local")
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        density_thresholds(np.array([3, 0, 1]), LOWER, UPPER, alpha=1.0)


def test_fixed_mode() -> None:
    prototypes = _prototypes(np.zeros((3, 2)))
    config = SelectionConfig(threshold_mode="fixed", fixed_threshold=17.0)
    np.testing.assert_array_equal(cluster_thresholds(prototypes, config), [17.0, 17.0, 17.0])
    selected = apply_thresholds(np.array([0, 1, 2, 2]), np.array([17.0, 16.9, 17.1, 0.0]), prototypes, config)
    assert selected.tolist() == [True, True, False, True]


# Eq. 7 ---------------------------------------------------------------------------------------------


def test_nearest_prototype_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(503, 16)).astype(np.float32) * 3 + 100  # offset stresses |x|^2 - 2xc + |c|^2
    centres = rng.normal(size=(7, 16)).astype(np.float32) * 3 + 100
    exact = np.linalg.norm(features[:, None].astype(np.float64) - centres[None], axis=2)
    cluster, distance = nearest_prototype(features, centres, chunk_rows=64)
    assert cluster.dtype == np.int64 and distance.dtype == np.float32
    np.testing.assert_array_equal(cluster, exact.argmin(1))
    np.testing.assert_allclose(distance, exact.min(1), rtol=1e-5)
    t_cluster, t_distance = nearest_prototype(torch.from_numpy(features), torch.from_numpy(centres))
    np.testing.assert_array_equal(t_cluster, cluster)
    np.testing.assert_array_equal(t_distance, distance)


def test_nearest_prototype_edge_cases() -> None:
    centres = np.array([[0.0, 0.0], [2.0, 0.0]])
    cluster, distance = nearest_prototype(np.array([[1.0, 0.0], [0.0, 0.0]]), centres)
    assert cluster.tolist() == [0, 0]  # a tie goes to the lower index
    assert distance.tolist() == [1.0, 0.0]  # clamped at 0, never NaN
    empty_cluster, empty_distance = nearest_prototype(np.empty((0, 2)), centres)
    assert empty_cluster.shape == empty_distance.shape == (0,)
    with pytest.raises(ValueError, match="must agree"):
        nearest_prototype(np.zeros((3, 5)), centres)


# Eq. 9 and strategies ----------------------------------------------------------------------------------


def _candidates(seed: int = 0) -> tuple[np.ndarray, Prototypes]:
    """Imbalanced blobs of 600, 60 and 20 candidates around three prototypes, 100 apart."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    features = np.concatenate(
        [c + rng.normal(scale=2.0, size=(n, 2)) for c, n in zip(centres, (600, 60, 20), strict=True)]
    )
    prototypes = _prototypes(centres, sizes=[50, 20, 5], lower=[0.1, 0.2, 0.3], upper=[3.0, 3.0, 3.0])
    return features.astype(np.float32), prototypes


def test_activessf_selects_by_eq9() -> None:
    features, prototypes = _candidates()
    config = SelectionConfig(alpha=1.0)
    decisions = select(features, prototypes, config)
    thresholds = density_thresholds(prototypes.sizes, prototypes.lower, prototypes.upper, 1.0)
    np.testing.assert_array_equal(decisions.threshold, thresholds[decisions.cluster])
    np.testing.assert_array_equal(decisions.selected, decisions.distance <= decisions.threshold)
    assert decisions.cluster[:600].tolist() == [0] * 600
    assert 0 < decisions.selected.sum() < len(features)
    assert decisions.strategy == "activessf" and len(decisions) == len(features)


def test_reselect_without_features_applies_eq8_and_eq9() -> None:
    features, prototypes = _candidates()
    first = select(features, prototypes, SelectionConfig(alpha=1.0))
    n, lower, upper = prototypes.sizes.astype(float), prototypes.lower.astype(float), prototypes.upper.astype(float)
    for alpha, bounds in ((0.5, "cluster"), (2.0, "global")):
        low, high = (lower, upper) if bounds == "cluster" else (lower.min(), upper.max())
        threshold = low + (high - low) * (1 - n / n.max()) ** alpha  # Eq. 8, written out
        again = reselect(first.cluster, first.distance, prototypes, SelectionConfig(alpha=alpha, bounds=bounds))
        np.testing.assert_array_equal(again.selected, first.distance <= threshold[first.cluster])  # Eq. 9
    np.testing.assert_array_equal(
        apply_thresholds(first.cluster, first.distance, prototypes, SelectionConfig(alpha=1.0)),
        first.selected,
    )


def test_strategy_registry_matches_config() -> None:
    assert list_strategies() == sorted(get_args(StrategyName))
    features, prototypes = _candidates()
    with pytest.raises(ValueError, match="valid: \\['activessf'"):
        select(features, prototypes, dataclasses.replace(SelectionConfig(), strategy="nope"))


def _strategy_config(strategy: str, **changes) -> SelectionConfig:
    """The strategy's config; gated-balanced needs a budget, here a quarter of the candidates."""
    return SelectionConfig(strategy=strategy, budget=0.25 if strategy == "gated-balanced" else 0.0, **changes)


@pytest.mark.parametrize("strategy", list_strategies())
def test_every_strategy_reports_activessf_values(strategy: str) -> None:
    features, prototypes = _candidates()
    reference = select(features, prototypes, SelectionConfig())
    decisions = select(features, prototypes, _strategy_config(strategy))
    assert decisions.strategy == strategy
    assert decisions.selected.dtype == bool and decisions.selected.shape == (len(features),)
    for name in ("cluster", "distance", "threshold", "within_threshold"):
        np.testing.assert_array_equal(getattr(decisions, name), getattr(reference, name))
    np.testing.assert_array_equal(reference.within_threshold, reference.selected)
    if strategy in ("activessf", "random", "balanced"):
        assert decisions.selected.sum() == reference.selected.sum()
    if strategy == "all":
        assert decisions.selected.all()


def test_random_is_seeded() -> None:
    features, prototypes = _candidates()
    a = select(features, prototypes, SelectionConfig(strategy="random", seed=1))
    b = select(features, prototypes, SelectionConfig(strategy="random", seed=1))
    c = select(features, prototypes, SelectionConfig(strategy="random", seed=2))
    np.testing.assert_array_equal(a.selected, b.selected)
    assert (a.selected != c.selected).any()


def test_balanced_evens_out_the_clusters() -> None:
    features, prototypes = _candidates()
    config = SelectionConfig(strategy="balanced", threshold_mode="fixed", fixed_threshold=2.0, seed=0)
    activessf = select(features, prototypes, dataclasses.replace(config, strategy="activessf"))
    total = int(activessf.selected.sum())
    assert total > 3 * 20  # the smallest blob must give its surplus to the others
    decisions = select(features, prototypes, config)
    per_blob = [int(decisions.selected[s].sum()) for s in (slice(0, 600), slice(600, 660), slice(660, 680))]
    assert sum(per_blob) == total
    small = min(20, total // 3)  # an equal share each, the smallest blob's surplus to the others
    middle = min(60, (total - small) // 2)
    assert per_blob == [total - small - middle, middle, small]
    with pytest.raises(ValueError, match="pass them"):
        reselect(activessf.cluster, activessf.distance, prototypes, config)


def test_water_fill() -> None:
    assert water_fill(10, np.array([100, 100, 100])).tolist() == [3, 3, 4]
    assert water_fill(12, np.array([1, 10, 1])).tolist() == [1, 10, 1]
    assert water_fill(9, np.array([2, 50, 50])).tolist() == [2, 3, 4]
    assert water_fill(99, np.array([3, 4])).tolist() == [3, 4]
    assert water_fill(0, np.array([3, 4])).tolist() == [0, 0]


@pytest.mark.parametrize("strategy", list_strategies())
def test_no_candidates(strategy: str) -> None:
    _, prototypes = _candidates()
    decisions = select(np.empty((0, 2), dtype=np.float32), prototypes, _strategy_config(strategy))
    assert len(decisions) == 0 and decisions.selected.dtype == bool


# gated-balanced (issue 15) -------------------------------------------------------------------------


def _with_junk(seed: int = 0) -> tuple[np.ndarray, Prototypes, np.ndarray]:
    """The three imbalanced blobs plus 300 junk candidates far from every prototype; the blob of each row
    (0, 1, 2; 3 = junk)."""
    features, prototypes = _candidates(seed)
    junk = np.random.default_rng(seed + 1).normal(loc=(60.0, 60.0), scale=20.0, size=(300, 2)).astype(np.float32)
    truth = np.repeat([0, 1, 2, 3], [600, 60, 20, 300])
    return np.concatenate([features, junk]), prototypes, truth


@pytest.mark.parametrize("balance_by", ["kmeans", "prototypes", "both"])
def test_gated_balanced_drops_what_activessf_drops_and_balances_the_rest(balance_by: str) -> None:
    features, prototypes, truth = _with_junk()
    config = SelectionConfig(
        strategy="gated-balanced", threshold_mode="fixed", fixed_threshold=5.0, budget=120, balance_by=balance_by
    )
    activessf = select(features, prototypes, dataclasses.replace(config, strategy="activessf"))
    decisions = select(features, prototypes, config)
    assert not (decisions.selected & ~activessf.selected).any()  # the gate removes exactly what activessf removes
    assert (truth[activessf.selected] < 3).all() and (truth[~activessf.selected] == 3).sum() == 300
    assert decisions.selected.sum() == 120  # the budget, met
    per_blob = np.bincount(truth[decisions.selected], minlength=4).tolist()
    gated = np.bincount(truth[activessf.selected], minlength=4).tolist()
    assert per_blob[3] == 0
    # equal shares where each blob has enough gated candidates; the small blob gives its surplus to the others
    assert gated[2] < 40 <= gated[1]
    assert per_blob[2] == gated[2] and abs(per_blob[0] - per_blob[1]) <= 1
    # activessf alone keeps the imbalance: the largest blob dominates what it keeps
    assert gated[0] > 5 * gated[1]


def test_gated_balanced_budget_as_a_fraction_a_short_gate_and_no_budget() -> None:
    features, prototypes, _ = _with_junk()
    gate = {"strategy": "gated-balanced", "threshold_mode": "fixed", "fixed_threshold": 5.0}
    fraction = select(features, prototypes, SelectionConfig(**gate, budget=0.1))
    assert fraction.selected.sum() == round(0.1 * len(features))
    everything = select(features, prototypes, SelectionConfig(**gate, budget=10_000))
    np.testing.assert_array_equal(everything.selected, everything.within_threshold)  # a short gate keeps all it passed
    with pytest.raises(ValueError, match="give --budget N or a fraction"):
        select(features, prototypes, SelectionConfig(strategy="gated-balanced"))
    with pytest.raises(ValueError, match="must be whole"):
        SelectionConfig(budget=12.5)


def assert_spread(chosen: np.ndarray, pool: int) -> None:
    """Indices `chosen` from range(pool) lie all over it, as a uniform sample's do: some in its first fifth,
    some in its last, their mean near its middle. A sampler that takes the first N (of the pool, or of each
    group) fails all three."""
    assert len(chosen) >= 20, "too few to tell"
    assert chosen.min() < 0.2 * pool and chosen.max() >= 0.8 * pool, (chosen.min(), chosen.max(), pool)
    assert abs(chosen.mean() / pool - 0.5) < 0.15, chosen.mean() / pool


@pytest.mark.parametrize("strategy", ["random", "balanced", "gated-balanced"])
def test_samplers_spread_over_the_pool_and_follow_the_seed(strategy: str) -> None:
    """The rows of the largest blob lie in random order in feature space: whatever a sampler keeps of it must
    come from all of it, not its first rows; the same seed keeps the same rows, another seed others."""
    features, prototypes, truth = _with_junk()
    config = SelectionConfig(strategy=strategy, threshold_mode="fixed", fixed_threshold=5.0, budget=120, seed=1)
    decisions = select(features, prototypes, config)
    largest = np.flatnonzero(truth == 0)
    assert_spread(np.flatnonzero(decisions.selected[largest]), len(largest))
    again = select(features, prototypes, config)
    np.testing.assert_array_equal(again.selected, decisions.selected)
    other = select(features, prototypes, dataclasses.replace(config, seed=2))
    assert other.selected.sum() == decisions.selected.sum()
    assert (other.selected != decisions.selected).sum() >= 20


def test_assert_spread_rejects_a_first_n_sample() -> None:
    assert_spread(np.random.default_rng(0).choice(600, 40, replace=False), 600)
    with pytest.raises(AssertionError):
        assert_spread(np.arange(40), 600)
    with pytest.raises(AssertionError):
        assert_spread(np.concatenate([np.arange(10) + start for start in (0, 150, 300, 450)]), 600)  # per group


def test_random_and_balanced_take_a_budget() -> None:
    features, prototypes, _ = _with_junk()
    for strategy in ("random", "balanced"):
        assert select(features, prototypes, SelectionConfig(strategy=strategy, budget=77)).selected.sum() == 77


# Degenerate clusters (n_i <= 2 or LB == UB) ---------------------------------------------------------


def test_a_singleton_cluster_keeps_its_near_candidates_under_the_default_rule() -> None:
    """Issue 25: under the paper's exact Eq. 8 a singleton (LB = UB = 0) has threshold 0 and keeps nothing;
    by default it borrows the median LB and UB of the clusters with a spread."""
    sizes, lower, upper = np.array([10, 6, 1, 2]), np.array([1.0, 2.0, 0.0, 1.5]), np.array([5.0, 7.0, 0.0, 1.5])
    prototypes = _prototypes(np.eye(4, dtype=np.float32) * 100, sizes, lower, upper)
    from activessf_engine.select.thresholds import degenerate_clusters

    assert degenerate_clusters(sizes, lower, upper).tolist() == [False, False, True, True]
    near_singleton = np.array([[0.0, 0.0, 103.0, 0.0]], dtype=np.float32)  # 3 from the singleton's centre
    default = select(near_singleton, prototypes, SelectionConfig(alpha=1.0))
    assert default.selected.tolist() == [True]
    borrowed = cluster_thresholds(prototypes, SelectionConfig(alpha=1.0))
    expected = 1.5 + (6.0 - 1.5) * (1 - np.array([1, 2]) / 10)  # Eq. 8 with the medians LB 1.5, UB 6
    np.testing.assert_allclose(borrowed[2:], expected)
    np.testing.assert_array_equal(borrowed[:2], density_thresholds(sizes, lower, upper, 1.0)[:2])  # others unchanged
    paper = SelectionConfig(alpha=1.0, degenerate_clusters="eq8")
    np.testing.assert_array_equal(cluster_thresholds(prototypes, paper), density_thresholds(sizes, lower, upper, 1.0))
    assert select(near_singleton, prototypes, paper).selected.tolist() == [False]


def test_nothing_is_borrowed_when_no_cluster_has_a_spread() -> None:
    from activessf_engine.select.thresholds import borrowed_bounds

    lower, upper = borrowed_bounds(np.array([1, 2]), np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    assert lower.tolist() == [0.0, 1.0] and upper.tolist() == [0.0, 1.0]


# What the summary says: degenerate clusters, near-empty selections, budgets not met ----------------------


def test_degenerate_clusters_are_reported_with_what_happens_and_the_remedy() -> None:
    from activessf_engine.select.diagnose import degenerate_report

    prototypes = _prototypes(np.eye(3, dtype=np.float32), SIZES, LOWER, UPPER)  # cluster 2: n_i 1, LB = UB
    report = degenerate_report(prototypes, SelectionConfig())
    assert report["clusters"] == [2] and report["rule"] == "borrow"
    assert "2 (n_i 1, c)" in report["message"] and "median LB 1.500 and UB 5.500" in report["message"]
    assert "add labeled cells" in report["message"]
    assert "threshold is 0" in degenerate_report(prototypes, SelectionConfig(degenerate_clusters="eq8"))["message"]
    healthy = _prototypes(np.eye(2, dtype=np.float32), [10, 5], [1.0, 2.0], [5.0, 6.0])
    assert degenerate_report(healthy, SelectionConfig()) is None


def _far_decisions(ratio: float, strategy: str = "activessf", budget: float = 0.0):
    """Candidates at `ratio` times their cluster's UB from its centre, selected by `strategy`."""
    prototypes = _prototypes(np.eye(3, dtype=np.float32) * 100, SIZES, LOWER, UPPER)
    config = SelectionConfig(strategy=strategy, budget=budget)
    distance = np.repeat(UPPER[:2] * ratio, 20).astype(np.float32)
    cluster = np.repeat([0, 1], 20)
    features = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    return reselect(cluster, distance, prototypes, config, features), prototypes, config


def test_an_empty_selection_says_why_from_the_distances_and_what_to_try() -> None:
    """Issue 25: a selection of nothing said only 'no candidate was selected'."""
    from activessf_engine.select.diagnose import selection_warnings

    decisions, prototypes, config = _far_decisions(1.3)
    [warning] = selection_warnings(decisions, prototypes, config)
    assert warning.startswith("no candidate was selected") and "1.30x beyond their cluster's UB" in warning
    assert "stain normalization" in warning and "calibrate" in warning and "--fixed-threshold" in warning


def test_a_budget_not_met_says_so() -> None:
    """Issue 25: `--strategy gated-balanced --budget 5000` kept 3 with no word that the budget was not met."""
    from activessf_engine.select.diagnose import selection_warnings

    decisions, prototypes, config = _far_decisions(0.9, "gated-balanced", budget=5000)
    warnings = selection_warnings(decisions, prototypes, config)
    kept = int(decisions.selected.sum())
    assert any(w.startswith(f"budget 5000 (5000 ROIs) not met: kept {kept}") for w in warnings)
    assert any("the store holds 40 candidates" in w and "passed the activessf gate" in w for w in warnings)
    met = _far_decisions(0.5, "gated-balanced", budget=4)
    assert selection_warnings(*met) == []
