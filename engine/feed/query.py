"""Which ROIs of a store to read, decided from its columns and attributes alone: no pixel is read."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from activessf_engine.store import RoiStore, read_attrs


@dataclass(frozen=True)
class RoiQuery:
    """A filter on ROI metadata. Every condition given must hold; the empty query keeps every ROI."""

    # Keep ROIs assigned to these prototype clusters: a selected store's `cluster` column, or for a
    # candidates store the decisions of the selection named by `selected_by`.
    clusters: tuple[int, ...] | None = None
    # Glob patterns on the source path as the store records it (relative to the input folder, e.g.
    # "patient07/*"): keep ROIs whose source matches one of them. Empty: every source.
    sources: tuple[str, ...] = ()
    # Glob patterns of sources to leave out, e.g. the slides of a patient held out for evaluation.
    exclude_sources: tuple[str, ...] = ()
    # A selected store made from this candidates store: keep only the candidates it selected.
    selected_by: str | Path | None = None

    def __post_init__(self) -> None:
        for name in ("sources", "exclude_sources"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(p, str) for p in value):
                raise ValueError(
                    f"RoiQuery.{name} must be a tuple of glob patterns such as ('slide1/*',), got {value!r}"
                )
        if self.clusters is not None and not all(isinstance(c, int | np.integer) for c in self.clusters):
            raise ValueError(f"RoiQuery.clusters must be a tuple of cluster numbers, got {self.clusters!r}")

    @property
    def is_empty(self) -> bool:
        return self.clusters is None and not self.sources and not self.exclude_sources and self.selected_by is None


def _decisions(store: RoiStore, selected: Path) -> dict[str, np.ndarray]:
    """A selection's per-candidate decisions (`cluster`, `selected`), checked to be about `store`."""
    meta = read_attrs(selected)
    if meta.get("kind") != "selected":
        raise ValueError(f"{selected} is a {meta.get('kind')!r} store; selected_by needs a store made by `select`")
    group = zarr.open_group(str(selected / "decisions"), mode="r")
    decisions = {name: np.asarray(group[name][:]) for name in ("cluster", "selected")}
    if len(decisions["selected"]) != len(store):
        raise ValueError(
            f"{selected} decided about {len(decisions['selected'])} candidates, but {store.root} holds {len(store)}: "
            f"it was selected from another store ({meta.get('candidates')}); select again from {store.root}"
        )
    return decisions


def _matches(paths: np.ndarray, patterns: tuple[str, ...]) -> np.ndarray:
    """Per ROI, whether its source path matches any pattern (each distinct path is matched once)."""
    unique, inverse = np.unique(paths.astype(str), return_inverse=True)
    hit = np.array([any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns) for p in unique], dtype=bool)
    return hit[inverse] if len(unique) else np.zeros(len(paths), dtype=bool)


def roi_clusters(store: RoiStore, query: RoiQuery | None = None) -> np.ndarray | None:
    """Each ROI's prototype cluster: a selected store's `cluster` column, or for a candidates store the
    decisions of the selection named by `query.selected_by`; None where neither gives one."""
    clusters = store.columns().get("cluster")
    if clusters is None and query is not None and query.selected_by is not None:
        return _decisions(store, Path(query.selected_by))["cluster"]
    return clusters


def query_rows(store: RoiStore, query: RoiQuery | None = None) -> np.ndarray:
    """Global indices (sorted, int64) of the ROIs of `store` that `query` keeps."""
    if query is None or query.is_empty:
        return np.arange(len(store), dtype=np.int64)
    columns = store.columns()
    keep = np.ones(len(store), dtype=bool)
    if query.selected_by is not None:
        keep &= _decisions(store, Path(query.selected_by))["selected"].astype(bool)
    if query.clusters is not None:
        clusters = roi_clusters(store, query)
        if clusters is None:
            raise ValueError(
                f"{store.root} is a candidates store without clusters: filter by cluster on a selected store, "
                "or name the selection with selected_by (--selected-by)"
            )
        keep &= np.isin(clusters, np.asarray(query.clusters, dtype=np.int64))
    if query.sources:
        keep &= _matches(columns["source_path"], query.sources)
    if query.exclude_sources:
        keep &= ~_matches(columns["source_path"], query.exclude_sources)
    return np.flatnonzero(keep).astype(np.int64)
