"""The report's plots, drawn with matplotlib (Agg, no display) into PNG files; each function writes one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator  # figures without pyplot: no backend switch, no global state

DPI = 96


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    """A figure and its one set of axes, laid out to fit its labels, title and legend."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _counts(axis: Any) -> None:
    """An axis of counts: whole numbers only."""
    axis.set_major_locator(MaxNLocator(integer=True))


def rois_per_source(counts: list[int], path: Path) -> Path:
    """Histogram of the number of ROIs cut from each source read."""
    fig, ax = _figure(6, 3)
    values = np.asarray(counts, dtype=np.int64)
    top = int(values.max()) if len(values) else 0
    ax.hist(values, bins=np.arange(top + 2) - 0.5, color="#5b6abf", edgecolor="white")
    _counts(ax.xaxis)
    _counts(ax.yaxis)
    ax.set_xlabel("ROIs cut from a source")
    ax.set_ylabel("sources (count)")
    ax.set_title(f"ROIs per source ({len(values)} sources read)")
    return _save(fig, path)


def rejections(counts: dict[str, int], path: Path) -> Path:
    """Bars of the regions found, rejected for box size, rejected for fill rate, and kept."""
    fig, ax = _figure(6, 2.6)
    names, values = list(counts), list(counts.values())
    colours = ["#7f7f7f", "#e08a3c", "#c0504d", "#3a9a4f"][: len(names)]  # found, size, fill, kept
    bars = ax.barh(names[::-1], values[::-1], color=colours[::-1])
    ax.bar_label(bars, padding=3)
    _counts(ax.xaxis)
    ax.set_xlabel("regions (count)")
    ax.set_title("Regions of the masks")
    ax.margins(x=0.15)
    return _save(fig, path)


def stage_seconds(seconds: dict[str, float], path: Path) -> Path:
    """Bars of the wall seconds spent in each stage."""
    fig, ax = _figure(6, 0.4 * max(len(seconds), 3) + 1)
    names = list(seconds)
    bars = ax.barh(names[::-1], [seconds[n] for n in names][::-1], color="#5b6abf")
    ax.bar_label(bars, fmt="%.2f s", padding=3)
    ax.set_xlabel("wall time (seconds)")
    ax.set_title("Time per stage")
    ax.margins(x=0.2)
    return _save(fig, path)


def cluster_bounds(clusters: list[dict[str, Any]], path: Path) -> Path:
    """Per cluster: n_i as bars (left axis), LB-UB as a range and the threshold as a dot (right axis); the
    legend below the axes, where it covers no bar."""
    fig, ax = _figure(max(7, 0.6 * len(clusters)), 3.8)
    ids = np.arange(len(clusters))
    ax.bar(ids, [c["n"] for c in clusters], color="#c9d1f0", label="n_i: labeled images in the cluster")
    _counts(ax.yaxis)
    ax.set_xlabel("cluster (number, dominant class of its labeled images)")
    ax.set_ylabel("n_i (labeled images)")
    ax.set_xticks(ids, [f"{c['cluster']} {c['dominant_class'][:12]}" for c in clusters], fontsize=7, rotation=40)
    right = ax.twinx()
    lower, upper = np.array([c["lb"] for c in clusters]), np.array([c["ub"] for c in clusters])
    right.vlines(ids, lower, upper, color="#333333", linewidth=3, label="LB to UB: distances of its labeled images")
    right.scatter(ids, [c.get("threshold", np.nan) for c in clusters], color="#c0504d", zorder=3, label="threshold")
    right.set_ylabel("distance to the prototype\n(Euclidean, feature space)")
    (bars, bar_labels), (marks, mark_labels) = ax.get_legend_handles_labels(), right.get_legend_handles_labels()
    fig.legend(bars + marks, bar_labels + mark_labels, fontsize=7, loc="outside lower center", ncols=3, frameon=False)
    ax.set_title("Clusters of the labeled set: size, bounds and threshold (Eq. 8)")
    return _save(fig, path)


def distance_histograms(cluster: np.ndarray, distance: np.ndarray, clusters: list[dict[str, Any]], path: Path) -> Path:
    """One histogram per cluster with candidates (`clusters` holds only those) of the candidates' distances
    to their prototype, the threshold marked."""
    columns = min(4, max(len(clusters), 1))
    rows = max(1, -(-len(clusters) // columns))
    fig = Figure(figsize=(2.6 * columns, 2.3 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, info in zip(axes.flat, clusters, strict=False):
        mine = distance[cluster == info["cluster"]]
        ax.hist(mine, bins=20, color="#5b6abf")
        if "threshold" in info:
            ax.axvline(info["threshold"], color="#c0504d", linewidth=2)
        _counts(ax.yaxis)
        ax.set_title(f"{info['cluster']}: {info['dominant_class'][:12]} ({len(mine)})", fontsize=8)
        ax.set_xlabel("distance to the prototype", fontsize=7)
        ax.set_ylabel("candidates", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(clusters) :]:
        ax.axis("off")
    fig.suptitle(
        "Euclidean distance (feature space) of each candidate to its nearest prototype; red: the cluster's threshold",
        fontsize=9,
    )
    return _save(fig, path)
