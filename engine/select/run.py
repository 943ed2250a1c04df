"""Active Sample Selection runs: labeled set -> prototypes; candidate store -> selected store.

Orchestration only (I/O, caching, progress, summaries); the equations live in `prototypes` and
`strategies` (Eq. 7-9 in `nearest` and `thresholds`), the network in `features`.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from activessf_engine.config import EngineConfig, FeatureConfig, StainReference, to_dict
from activessf_engine.device import DeviceChoice, as_choice
from activessf_engine.filter import TileRegions, cut_rois, decode_files, find_regions, fit_to_square
from activessf_engine.progress import Progress, make_progress
from activessf_engine.select.diagnose import degenerate_report, selection_warnings, whole_images_warning
from activessf_engine.select.features import Backbone, iter_extract, load_backbone, resolve_features
from activessf_engine.select.framing import check_framing, labeled_framing
from activessf_engine.select.labeled_set import scan_labeled
from activessf_engine.select.prototypes import ARRAYS_FILE, META_FILE, Prototypes, fit_prototypes, load_prototypes
from activessf_engine.select.strategies import Decisions, select
from activessf_engine.select.thresholds import cluster_thresholds, degenerate_clusters
from activessf_engine.stain import StainNormalizer, fit_stain_reference, reference_tag
from activessf_engine.store import (
    Artefact,
    FeatureCache,
    PartData,
    RoiStore,
    StoreWriter,
    check_overwrite,
    features_key,
    roi_column_names,
    store_artefact,
)

log = logging.getLogger(__name__)

READ_AHEAD = 2  # parts read ahead of the network while features are computed


def _batches(rois: np.ndarray, size: int):
    return (rois[i : i + size] for i in range(0, len(rois), size))


def _read_ahead(store: RoiStore, parts: list[int], depth: int) -> Iterator[tuple[int, np.ndarray, float]]:
    """(part, its ROIs, seconds spent reading them) in order, with up to `depth` parts read ahead in threads,
    so that reading and decompressing overlap the network's work on the part before."""

    def read(part: int) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        return store.part_rois(part), time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="store-read") as pool:
        pending = deque((part, pool.submit(read, part)) for part in parts[:depth])
        upcoming = iter(parts[depth:])
        while pending:
            part, future = pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, pool.submit(read, following)))
            yield (part, *future.result())


def feature_cache(store: RoiStore, backbone: Backbone, stain: StainReference | None = None) -> FeatureCache:
    """The cache of `backbone`'s features of the ROIs of `store` (keyed by model, weights, ROI size, dtype
    and the stain normalization's reference)."""
    roi_size = int(store.meta["config"]["crop"]["size"])
    key = features_key(
        backbone.name, backbone.fingerprint, roi_size, backbone.dtype_name, reference_tag(stain or StainReference())
    )
    return FeatureCache(store.root, key)


def selection_features_config(config: EngineConfig, prototypes: Prototypes) -> FeatureConfig:
    """The feature settings of a selection: the run's, where "auto" model and weights are the prototypes'
    own; another model given explicitly is refused (`resolve_features`), other weights by fingerprint later."""
    return resolve_features(config.features, (prototypes.model, prototypes.weights))


def store_features(
    store: RoiStore,
    backbone: Backbone,
    batch_size: int,
    progress: bool | Progress = False,
    stain: StainNormalizer | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of every ROI of `store` (brought to `stain`'s reference first, if given), from its cache
    where present; what is computed is cached.

    Returns (N, D) float32 and counts of ROIs computed and read from cache, with the wall seconds spent
    computing them (reading included) and the seconds the reader threads spent reading.
    """
    stain = stain or StainNormalizer(StainReference())
    cache = feature_cache(store, backbone, stain.reference)
    bar = make_progress(progress, len(store), "roi", "features")
    stats = {"computed": 0, "cached": 0, "seconds": 0.0, "read_seconds": 0.0}
    features = {part: cache.load(part) for part in store.parts if cache.has(part)}
    stats["cached"] = sum(len(f) for f in features.values())
    bar.update(stats["cached"])
    start = time.perf_counter()
    for part, rois, read_seconds in _read_ahead(store, [p for p in store.parts if p not in features], READ_AHEAD):
        outputs = list(iter_extract(backbone, stain.batches(_batches(rois, batch_size))))
        features[part] = np.concatenate(outputs) if outputs else np.empty((0, backbone.feature_dim), np.float32)
        cache.save(part, features[part])
        stats["computed"] += len(rois)
        stats["read_seconds"] += read_seconds
        bar.update(len(rois))
    stats["seconds"] = time.perf_counter() - start if stats["computed"] else 0.0
    bar.close()
    chunks = [features[part] for part in store.parts]
    return (np.concatenate(chunks) if chunks else np.empty((0, backbone.feature_dim), np.float32)), stats


def _central_region(regions: TileRegions, width: int, height: int) -> np.ndarray | None:
    """The box (1, 4) of the region whose centre lies nearest the image centre, or None."""
    if not len(regions.boxes):
        return None
    centres = (regions.boxes[:, :2] + regions.boxes[:, 2:]) / 2.0
    nearest = np.argmin(((centres - [width / 2.0, height / 2.0]) ** 2).sum(1))
    return regions.boxes[nearest : nearest + 1]


def labeled_rois(
    labeled_root: str | Path,
    config: EngineConfig,
    device: DeviceChoice | str | torch.device = "cpu",
    progress: bool | Progress = False,
) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    """The labeled set as ROIs framed like the candidates (see PrototypeConfig.labeled_crop).

    Returns ROIs (n, S, S, 3) uint8, labels (n,), class names, and a report: skipped files with
    their reasons and how many images were cropped by the filter or taken whole.
    """
    labeled = scan_labeled(Path(labeled_root))
    rois, labels = [], []
    report: dict[str, Any] = {"skipped": [], "filter_crops": 0, "whole_images": 0}
    images = decode_files(labeled.paths, config.input, device)  # decoded and filtered on the run's device
    bar = make_progress(progress, len(labeled.paths), "img", "labeled crops")
    for label, image in zip(labeled.labels, images, strict=True):
        bar.update(1)
        if image.image is None:
            report["skipped"].append({"path": str(image.path), "error": image.error})
            log.warning("skipped labeled image %s: %s", image.path, image.error)
            continue
        tile = image.image
        box = None
        if config.prototypes.labeled_crop == "filter":
            box = _central_region(find_regions([tile], config.filter)[0], image.width, image.height)
        if box is None:
            rois.append(fit_to_square(tile, config.crop.size, config.crop.pad, config.crop.pad_value)[0].cpu().numpy())
            report["whole_images"] += 1
        else:
            rois.append(cut_rois(tile, box, config.crop)[0][0])
            report["filter_crops"] += 1
        labels.append(label)
    bar.close()
    if not rois:
        raise ValueError(f"no labeled image under {labeled_root} could be decoded")
    return np.stack(rois), np.asarray(labels, dtype=np.int64), labeled.class_names, report


def run_prototypes(
    labeled_root: str | Path,
    out: str | Path,
    config: EngineConfig,
    *,
    device: DeviceChoice | str | torch.device = "cpu",
    progress: bool | Progress = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Features of the labeled set, K-means prototypes (Eq. 4-6) with n_i, LB, UB; saved to `out`.

    An `out` that already holds prototypes is refused unless `overwrite`; the backbone (and so its weights)
    is loaded before the labeled set is read.
    """
    started = time.perf_counter()
    check_prototypes_out(out, overwrite, labeled_root)
    device = as_choice(device)
    feature_config = resolve_features(config.features)
    backbone = load_backbone(feature_config, device)
    rois, labels, class_names, report = labeled_rois(labeled_root, config, device, progress)
    stain = StainNormalizer(fit_stain_reference(config.prototypes.stain_normalization, rois))
    bar = make_progress(progress, len(rois), "img", "labeled features")
    outputs = []
    for feats in iter_extract(backbone, stain.batches(_batches(rois, config.features.batch_size))):
        outputs.append(feats)
        bar.update(len(feats))
    bar.close()
    features = np.concatenate(outputs)
    prototypes = fit_prototypes(
        features,
        labels,
        class_names,
        config.prototypes,
        model=backbone.name,
        fingerprint=backbone.fingerprint,
        weights=feature_config.weights,
        device=device,
        framing=labeled_framing(config),
        labeled=str(labeled_root),
        stain=stain.reference,
        whole_images=report["whole_images"],
    )
    prototypes.save(Path(out))
    whole = whole_images_warning(prototypes)
    return {
        "prototypes": str(out),
        "labeled": len(labels),
        "labeled_skipped": report["skipped"],
        "labeled_filter_crops": report["filter_crops"],
        "labeled_whole_images": report["whole_images"],
        "classes": dict(zip(class_names, np.bincount(labels, minlength=len(class_names)).tolist(), strict=True)),
        "clusters": _cluster_table(prototypes),
        "degenerate_clusters": degenerate_report(prototypes, config.selection),
        "warnings": [whole] if whole else [],
        "model": backbone.name,
        "kmeans_backend": prototypes.backend,
        "stain_normalization": config.prototypes.stain_normalization,
        "stain_left_as_read": stain.left_as_read,
        "feature_dtype": backbone.dtype_name,
        "weights": feature_config.weights,
        "weights_loaded": backbone.weights,
        "untrained_weights": backbone.untrained,
        "fingerprint": backbone.fingerprint,
        "wall_seconds": round(time.perf_counter() - started, 3),
    }


def _cluster_table(prototypes: Prototypes, thresholds: np.ndarray | None = None) -> list[dict[str, Any]]:
    table = []
    degenerate = degenerate_clusters(prototypes.sizes, prototypes.lower, prototypes.upper)
    for i, dominant in enumerate(prototypes.dominant_classes()):
        row = {
            "cluster": i,
            "n": int(prototypes.sizes[i]),
            "lb": round(float(prototypes.lower[i]), 4),
            "ub": round(float(prototypes.upper[i]), 4),
            "degenerate": bool(degenerate[i]),
            "dominant_class": dominant,
            "classes": {
                name: int(c) for name, c in zip(prototypes.class_names, prototypes.class_counts[i], strict=True) if c
            },
        }
        if thresholds is not None:
            row["threshold"] = round(float(thresholds[i]), 4)
        table.append(row)
    return table


def _write_decisions(root: Path, decisions: Decisions) -> None:
    group = zarr.open_group(str(root / "decisions"), mode="w", zarr_format=3)
    for name in ("cluster", "distance", "threshold", "within_threshold", "selected"):
        values = getattr(decisions, name)
        arr = group.create_array(name, shape=values.shape, chunks=(max(1, len(values)),), dtype=values.dtype)
        if len(values):
            arr[:] = values
    group.attrs["strategy"] = decisions.strategy


PROTOTYPES = Artefact(
    "prototypes folder",
    lambda folder: (folder / META_FILE).is_file(),
    re.compile(rf"(?:{re.escape(META_FILE)}|{re.escape(ARRAYS_FILE)})(?:\.partial)?"),
)
SELECTED = store_artefact("selected")


def check_prototypes_out(out: str | Path, overwrite: bool, labeled: str | Path | None = None) -> None:
    """Refuse to replace prototypes at `out` without `overwrite`, or one that holds `labeled` or files the
    engine did not write (`check_overwrite`), before any work."""
    if not (Path(out) / META_FILE).exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already holds prototypes; choose another --out or pass --overwrite")
    check_overwrite(out, PROTOTYPES, [labeled] if labeled is not None else [])


def interrupted_selection(out: str | Path) -> bool:
    """Whether `out` is a selected store that its `select` did not finish (the summary is written last)."""
    return SELECTED.recognised(Path(out)) and "summary" not in zarr.open_group(str(out), mode="r").attrs


def check_select_out(out: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> bool:
    """Refuse an --out that may not be replaced (`check_overwrite`), before any feature is computed; returns
    whether an existing one is replaced: with `overwrite`, or when it is a selection that was interrupted
    (so that running the same command again finishes it)."""
    out = Path(out)
    if not out.exists():
        return False
    replace = overwrite or interrupted_selection(out)
    if not replace:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    check_overwrite(out, SELECTED, inputs)
    return True


def run_select(
    candidates: str | Path,
    prototypes_dir: str | Path,
    out: str | Path,
    config: EngineConfig,
    *,
    device: DeviceChoice | str | torch.device = "cpu",
    progress: bool | Progress = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Select candidate ROIs (Eq. 7-9, or a baseline strategy) into a new store at `out`.

    Features of the candidates are cached in the candidate store, so selecting again with another
    alpha, threshold or strategy computes no features.
    """
    started = time.perf_counter()
    inputs = (candidates, prototypes_dir)
    replace = check_select_out(out, overwrite, inputs)
    store = RoiStore(candidates)
    if not store.complete:
        log.warning(
            "%s is incomplete (%d of %d parts); selecting from what is committed",
            candidates,
            len(store.parts),
            len(store.meta.get("plan", [])),
        )
    prototypes = load_prototypes(Path(prototypes_dir))
    if prototypes.framing:
        check_framing(prototypes.framing, store.meta["config"], candidates, prototypes.labeled, prototypes_dir)
    else:
        log.warning(
            "%s records no framing (made before it was recorded): cannot check that its labeled crops were cut "
            "like the candidates; rebuild it with `prototypes --like %s`",
            prototypes_dir,
            candidates,
        )
    feature_config = selection_features_config(config, prototypes)
    backbone = load_backbone(feature_config, device)
    prototypes.check_compatible(backbone.name, backbone.fingerprint, feature_config.weights)
    stain = StainNormalizer(prototypes.stain)
    features, feature_stats = store_features(store, backbone, feature_config.batch_size, progress, stain)
    t0 = time.perf_counter()
    on_device = torch.from_numpy(features).to(backbone.device)  # Eq. 7 as matrix products, on the GPU if any
    decisions = select(on_device, prototypes, config.selection)
    assign_seconds = time.perf_counter() - t0

    attrs = {
        "config": to_dict(config),
        "candidates": str(Path(candidates).resolve()),
        "prototypes": str(Path(prototypes_dir).resolve()),
        "strategy": config.selection.strategy,
        "model": backbone.name,
        "fingerprint": backbone.fingerprint,
    }
    plan = [[s["path"] for s in store.part_attrs(p)["sources"]] for p in store.parts]
    writer = StoreWriter.create(out, "selected", attrs, plan, layout=config.store, overwrite=replace, inputs=inputs)
    with writer:
        write_start = time.perf_counter()
        for k, (part, first) in enumerate(store.iter_parts()):
            rows = np.flatnonzero(decisions.selected[first : first + int(store.offsets[k + 1] - first)])
            glob = first + rows
            columns = {name: store.part_column(part, name)[rows] for name in roi_column_names(store.meta)}
            columns.update(
                cluster=decisions.cluster[glob].astype(np.int32),
                distance=decisions.distance[glob].astype(np.float32),
                threshold=decisions.threshold[glob].astype(np.float32),
                candidate=glob.astype(np.int64),
            )
            rois = store.part_rois(part, rows)
            writer.commit_part(k, PartData(rois, columns, store.part_attrs(part)["sources"]), {"candidate_part": part})
        _write_decisions(Path(out), decisions)
    write_seconds = time.perf_counter() - write_start

    warnings = []
    if backbone.untrained:
        warnings.append("features came from an untrained network (--weights random): the selection means nothing")
    warnings += selection_warnings(decisions, prototypes, config.selection)
    per_cluster_candidates = Counter(decisions.cluster.tolist())
    per_cluster_selected = Counter(decisions.cluster[decisions.selected].tolist())
    clusters = _cluster_table(prototypes, cluster_thresholds(prototypes, config.selection))
    for row in clusters:
        row["candidates"] = per_cluster_candidates.get(row["cluster"], 0)
        row["selected"] = per_cluster_selected.get(row["cluster"], 0)
    summary = {
        "selected_store": str(out),
        "strategy": config.selection.strategy,
        "alpha": config.selection.alpha,
        "threshold_mode": config.selection.threshold_mode,
        "bounds": config.selection.bounds,
        "budget": config.selection.budget,
        "balance_by": config.selection.balance_by,
        "candidates": len(decisions),
        "within_threshold": int(decisions.within_threshold.sum()),
        "selected": int(decisions.selected.sum()),
        "clusters": clusters,
        "degenerate_clusters": degenerate_report(prototypes, config.selection),
        "stain_normalization": prototypes.stain.method,
        "stain_left_as_read": stain.left_as_read,  # ROIs whose stains could not be estimated (features computed now)
        "features_computed": feature_stats["computed"],
        "features_cached": feature_stats["cached"],
        "features_per_second": round(feature_stats["computed"] / feature_stats["seconds"], 2)
        if feature_stats["seconds"]
        else None,
        "assignments_per_second": round(len(decisions) / assign_seconds, 1) if assign_seconds else None,
        "seconds": {
            "features": round(feature_stats["seconds"], 3),  # wall time, reading included
            "reading": round(feature_stats["read_seconds"], 3),  # in reader threads, overlapped with the network
            "assignment": round(assign_seconds, 3),
            "writing": round(write_seconds, 3),  # the selected store: reading the kept ROIs and committing them
        },
        "model": backbone.name,
        "feature_dtype": backbone.dtype_name,
        "weights": feature_config.weights,
        "untrained_weights": backbone.untrained,
        "warnings": warnings,
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    zarr.open_group(str(out), mode="a").attrs["summary"] = summary
    return summary
