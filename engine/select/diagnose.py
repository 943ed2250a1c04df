"""What a selection's summary says about itself: degenerate clusters, and why it kept little or nothing.

Every message names its cause from the data and what to try, so that no run ends with an empty or
near-empty selection, or a budget not met, without saying so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from activessf_engine.config import SelectionConfig
from activessf_engine.select.prototypes import Prototypes
from activessf_engine.select.strategies import Decisions
from activessf_engine.select.thresholds import borrowed_bounds, degenerate_clusters

FEW_KEPT = 0.05  # a selection keeping less than this share of the candidates is warned about
GATED = ("activessf", "gated-balanced")  # strategies whose selection Eq. 9's thresholds decide
BUDGETED = ("random", "balanced", "gated-balanced")
MOSTLY_WHOLE = 0.5  # labeled images taken whole (no region passed their filter) above this share are warned about


def degenerate_report(prototypes: Prototypes, config: SelectionConfig) -> dict[str, Any] | None:
    """The clusters too small to have a spread (n_i <= 2 or LB == UB), what the rule in force does to them
    and the remedy; None when there is none."""
    degenerate = degenerate_clusters(prototypes.sizes, prototypes.lower, prototypes.upper)
    if not degenerate.any():
        return None
    indices = np.flatnonzero(degenerate).tolist()
    names = prototypes.dominant_classes()
    listed = ", ".join(f"{i} (n_i {int(prototypes.sizes[i])}, {names[i]})" for i in indices)
    lower, upper = borrowed_bounds(prototypes.sizes, prototypes.lower, prototypes.upper)
    if config.threshold_mode == "fixed":
        effect = "the fixed threshold applies to them as to every cluster"
    elif degenerate.all():
        effect = "no cluster has a spread to borrow: Eq. 8 gives each its own LB = UB, so they keep almost nothing"
    elif config.degenerate_clusters == "borrow":
        effect = (
            f"rule 'borrow': they take the median LB {lower[indices[0]]:.3f} and UB {upper[indices[0]]:.3f} of "
            "the other clusters in Eq. 8 (--degenerate-clusters eq8 for the paper's exact Eq. 8)"
        )
    else:
        effect = (
            "rule 'eq8' (the paper's exact Eq. 8): a singleton's threshold is 0 and a pair's half the distance "
            "between its members, so they keep almost nothing (--degenerate-clusters borrow lends them bounds)"
        )
    return {
        "clusters": indices,
        "rule": config.degenerate_clusters,
        "message": (
            f"{len(indices)} of {len(degenerate)} clusters are too small to have a spread (n_i <= 2 or LB == UB): "
            f"{listed}; {effect}. Remedy: add labeled cells of those classes, or lower --clusters"
        ),
    }


def selection_warnings(decisions: Decisions, prototypes: Prototypes, config: SelectionConfig) -> list[str]:
    """Warnings about what was kept: nothing or under FEW_KEPT of the candidates (with the labeled images
    taken whole and the distances that explain it, and what to try), and a budget that was not met."""
    total, kept = len(decisions), int(decisions.selected.sum())
    if not total:
        return ["the candidate store holds no ROI, so nothing could be selected: see the filter's summary (or run "
                "`filter --limit 20` on the tiles) to find why no region passed"]  # fmt: skip
    warnings = []
    if config.strategy in GATED and kept < FEW_KEPT * total:
        whole = whole_images_warning(prototypes)  # the likeliest cause, named first
        warnings += [whole] if whole else []
        warnings.append(_few_kept(decisions, prototypes, config))
    if config.strategy in BUDGETED and config.budget:
        asked = int(config.budget) if config.budget > 1 else round(config.budget * total)
        if kept < asked:
            passed = int(decisions.within_threshold.sum())
            why = [f"the store holds {total} candidates"] if total < asked else []
            if config.strategy == "gated-balanced" and passed < asked:
                why.append(
                    f"only {passed} passed the activessf gate (Eq. 9) and gated-balanced keeps no more than pass it: "
                    "widen the gate (a lower --alpha, --bounds global) or use --strategy balanced to sample without it"
                )
            warnings.append(f"budget {config.budget:g} ({asked} ROIs) not met: kept {kept}; " + "; ".join(why))
    return warnings


def _few_kept(decisions: Decisions, prototypes: Prototypes, config: SelectionConfig) -> str:
    total, kept = len(decisions), int(decisions.selected.sum())
    _, upper = borrowed_bounds(prototypes.sizes, prototypes.lower, prototypes.upper)
    beyond_ub = float(np.median(decisions.distance / np.maximum(upper[decisions.cluster], 1e-12)))
    beyond_threshold = float(np.median(decisions.distance / np.maximum(decisions.threshold, 1e-12)))
    median = float(np.median(decisions.distance))
    what = "no candidate was selected" if not kept else f"only {kept} of {total} candidates were selected"
    if beyond_ub > 1:
        cause = (
            f"the candidates lie a median {beyond_ub:.2f}x beyond their cluster's UB (its farthest labeled "
            "member): unlike every labeled cell, as a labeled set from another stain or scanner, or a filter "
            "that cuts junk, would make them"
        )
    else:
        cause = (
            f"the candidates lie within their cluster's UB (median {beyond_ub:.2f}x) but a median "
            f"{beyond_threshold:.2f}x their threshold: Eq. 8 holds dense clusters near LB"
        )
    return (
        f"{what}: {cause}. Try: stain normalization of the features (prototypes --stain-normalization macenko), "
        "`calibrate` the filter on these tiles, lower --alpha (thresholds move towards UB) or use --bounds global, or "
        f"--threshold-mode fixed --fixed-threshold {median:.2f} (the candidates' median distance), or "
        "--strategy balanced --budget N (no gate: junk is kept too)"
    )


def whole_images_warning(prototypes: Prototypes) -> str | None:
    """A warning when most labeled images held no region passing the filter and were taken whole (with
    `labeled_crop = "filter"`): their prototypes are then framed unlike every candidate; None otherwise."""
    framing = prototypes.framing.get("filter")  # recorded only when the filter cropped the labeled images
    total = int(prototypes.sizes.sum())
    if framing is None or prototypes.whole_images <= MOSTLY_WHOLE * total:
        return None
    return (
        f"{prototypes.whole_images} of {total} labeled images held no region passing the filter (min_fill "
        f"{framing['min_fill']:g}, min_box {framing['min_box']}) and were taken whole: their prototypes are framed "
        "unlike every candidate, which is cut round a region, so few candidates can come within a threshold. Lower "
        "--min-fill for the filter and the prototypes alike (0.5 keeps the lobed nuclei that fail the paper's 0.7, "
        "as the demo does; prototypes --like STORE takes the store's)"
    )
