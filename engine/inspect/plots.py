"""The report's plots, drawn with matplotlib (Agg, no display) into PNG files; each function writes one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator  # figures without pyplot: no backend switch, no global state

DPI = 96


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    """A figure and its one set of axes."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def rois_per_source(counts: list[int], path: Path) -> Path:
    """Histogram of the number of ROIs cut from each source read."""
    fig, ax = _figure(6, 3)
    values = np.asarray(counts, dtype=np.int64)
    top = int(values.max()) if len(values) else 0
    ax.hist(values, bins=np.arange(top + 2) - 0.5, color="#5b6abf", edgecolor="white")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("ROIs in a source")
    ax.set_ylabel("sources")
    ax.set_title(f"ROIs per source ({len(values)} sources read)")
    return _save(fig, path)


def rejections(counts: dict[str, int], path: Path) -> Path:
    """Bars of the regions found, rejected for box size, rejected for fill rate, and kept."""
    fig, ax = _figure(6, 2.6)
    names, values = list(counts), list(counts.values())
    colours = ["#7f7f7f", "#e08a3c", "#c0504d", "#3a9a4f"][: len(names)]  # found, size, fill, kept
    bars = ax.barh(names[::-1], values[::-1], color=colours[::-1])
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("regions")
    ax.set_title("Regions of the masks")
    ax.margins(x=0.15)
    return _save(fig, path)


def stage_seconds(seconds: dict[str, float], path: Path) -> Path:
    """Bars of the wall seconds spent in each stage."""
    fig, ax = _figure(6, 0.4 * max(len(seconds), 3) + 1)
    names = list(seconds)
    bars = ax.barh(names[::-1], [seconds[n] for n in names][::-1], color="#5b6abf")
    ax.bar_label(bars, fmt="%.2f s", padding=3)
    ax.set_xlabel("seconds")
    ax.set_title("Time per stage")
    ax.margins(x=0.2)
    return _save(fig, path)


def cluster_bounds(clusters: list[dict[str, Any]], path: Path) -> Path:
    """Per cluster: n_i as bars (left axis), LB-UB as a range and the threshold as a dot (right axis)."""
    fig, ax = _figure(max(7, 0.6 * len(clusters)), 3.6)
    ids = np.arange(len(clusters))
    ax.bar(ids, [c["n"] for c in clusters], color="#c9d1f0", label="n_i (labeled features)")
    ax.set_xlabel("cluster")
    ax.set_ylabel("n_i")
    ax.set_xticks(ids, [f"{c['cluster']} {c['dominant_class'][:12]}" for c in clusters], fontsize=7, rotation=40)
    right = ax.twinx()
    lower, upper = np.array([c["lb"] for c in clusters]), np.array([c["ub"] for c in clusters])
    right.vlines(ids, lower, upper, color="#333333", linewidth=3, label="LB to UB")
    right.scatter(ids, [c.get("threshold", np.nan) for c in clusters], color="#c0504d", zorder=3, label="threshold")
    right.set_ylabel("distance")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper right")
    ax.set_title("Clusters of the labeled set: size, bounds and threshold (Eq. 8)")
    return _save(fig, path)


def distance_histograms(cluster: np.ndarray, distance: np.ndarray, clusters: list[dict[str, Any]], path: Path) -> Path:
    """One histogram per cluster of the candidates' distances to their prototype, the threshold marked."""
    columns = 4
    rows = max(1, -(-len(clusters) // columns))
    fig = Figure(figsize=(10, 2.1 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, info in zip(axes.flat, clusters, strict=False):
        mine = distance[cluster == info["cluster"]]
        ax.hist(mine, bins=20, color="#5b6abf")
        if "threshold" in info:
            ax.axvline(info["threshold"], color="#c0504d", linewidth=2)
        ax.set_title(f"{info['cluster']}: {info['dominant_class'][:12]} ({len(mine)})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(clusters) :]:
        ax.axis("off")
    fig.suptitle("Distance of each candidate to its nearest prototype; red: the cluster's threshold", fontsize=9)
    return _save(fig, path)
