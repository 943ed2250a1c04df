"""Does selection help a trainer on rare classes? Every strategy at one budget, on a realistic pool.

The pool (`realistic_pool.py`): the filter's ROIs of the 1,500 unlabeled PBC cells (one known class per
image, long-tailed) plus the junk a relaxed filter takes from BCCD smear tiles away from their annotated
cells. Prototypes come from the 700 labeled PBC cells, framed by the same filter. The truth (PBC's
``unlabeled-truth.csv``, BCCD's boxes) is read only here, to score, never by the engine.

Strategies, all at one budget B = the fewest ROIs any activessf alpha keeps (a strategy that keeps more
is subsampled uniformly to B, which keeps its make-up): activessf at each ``--alpha``, activessf with the
paper's fixed threshold 17 (reported at its own count when it keeps fewer), random, balanced
(hierarchical k-means), gated-balanced (activessf's gate at the first alpha, then balanced by k-means and by
prototype quotas), activessf with the paper's exact Eq. 8 for degenerate clusters (``eq8``, against the
default ``borrow``), and all (the whole pool, larger than B); ``--stain-normalization`` normalizes the
features. Per strategy: junk kept, cells kept per class,
normalized entropy H / ln C of the classes, and the rare-class share against the pool's (rare: the three
fewest classes in the truth). A per-cluster table shows what Eq. 8 does to each prototype cluster.

``--downstream`` then pretrains SimCLR (`ssl_probe.py`) on each strategy's set, the same steps for all,
over ``--seeds`` seeds, and probes the labeled PBC cells (fixed stratified half split): macro-F1 and the
rare classes' F1, linear and kNN, mean and spread; an untrained encoder is the floor.

Run (features: pretrained EfficientNet-Lite2, installed with the project)::

    python benchmarks/selection_quality.py --json /tmp/selq.json                    # selection tables
    python benchmarks/selection_quality.py --downstream --json /tmp/selq.json       # and the SSL probes
    python benchmarks/selection_quality.py --downstream --device cuda               # on a GPU

``--work`` keeps the stores (default under /tmp); a rerun with the same settings reuses them and their
feature caches.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from realistic_pool import BCCD_CELL, JUNK, bccd_tiles, concat_stores, filter_junk, junk_truth, pool_key
from ssl_probe import DownstreamInputs, SslSchedule, downsample, print_table, run_table, to_images

from activessf_engine.config import EngineConfig, load_config, replace_section, to_dict
from activessf_engine.filter.run import run_filter
from activessf_engine.filter.sources import find_sources
from activessf_engine.select.features import resolve_features, weights_source
from activessf_engine.select.labeled_set import scan_labeled
from activessf_engine.select.prototypes import load_prototypes
from activessf_engine.select.run import labeled_rois, run_prototypes, run_select
from activessf_engine.select.thresholds import cluster_thresholds
from activessf_engine.store.reader import RoiStore

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RARE_COUNT = 3
FILTER_PRESETS = {
    "paper": {},
    # keeps most cells: 88% of PBC images give a ROI (paper: 5%), lobed nuclei included
    "keep-most": {"min_fill": 0.4, "min_box": 50},
}
FILE_COLUMNS = ("file", "filename", "path", "image", "name")  # accepted headers of the truth CSV
CLASS_COLUMNS = ("class", "label", "cell_type", "category")

log = logging.getLogger("selection_quality")


# ---------------------------------------------------------------- inputs


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _link_subset(files: list[Path], folder: Path) -> None:
    """`folder` holding a symlink to each of `files` (same names), and nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f.name: f.resolve() for f in files}
    for entry in folder.iterdir():
        if entry.name not in wanted or not entry.is_symlink() or entry.resolve() != wanted[entry.name]:
            entry.unlink()
    for name, target in wanted.items():
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(target)


def unlabeled_input(data: Path, work: Path, limit: int | None, extensions: tuple[str, ...]) -> Path:
    """`data/unlabeled`, or a folder of links to its first `limit` images by sorted name."""
    root = data / "unlabeled"
    if limit is None:
        return root
    files = [s.path for s in find_sources(root, extensions)][:limit]
    folder = work / "inputs" / f"unlabeled-first{limit}"
    _link_subset(files, folder)
    return folder


def labeled_input(data: Path, work: Path, limit: int | None) -> Path:
    """`data/labeled`, or an ImageFolder of links to the first `limit` images of each class by name."""
    root = data / "labeled"
    if limit is None:
        return root
    labeled = scan_labeled(root)
    folder = work / "inputs" / f"labeled-first{limit}"
    for index, name in enumerate(labeled.class_names):
        paths = sorted((p for p, y in zip(labeled.paths, labeled.labels, strict=True) if y == index), key=str)
        _link_subset(paths[:limit], folder / name)
    return folder


def read_truth(path: Path) -> dict[str, str]:
    """File name -> class, from a CSV with a header; the columns are found by name (file/class)."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        file_col = next((f for f in fields if f.lower() in FILE_COLUMNS), None)
        class_col = next((f for f in fields if f.lower() in CLASS_COLUMNS), None)
        if file_col is None or class_col is None:
            raise ValueError(f"{path}: cannot find the file and class columns in header {fields}")
        return {Path(row[file_col].strip()).name: row[class_col].strip() for row in reader}


# ---------------------------------------------------------------- scoring


def normalized_entropy(counts: dict[str, int]) -> float:
    """H / ln(C) of a class distribution (C = the classes listed; 0 when nothing is there)."""
    values = np.array(list(counts.values()), dtype=np.float64)
    total = values.sum()
    if total == 0 or len(values) < 2:
        return 0.0
    p = values[values > 0] / total
    return max(0.0, float(-(p * np.log(p)).sum() / math.log(len(values))))


def score(chosen: np.ndarray, truth: np.ndarray, classes: list[str], rare: list[str]) -> dict[str, Any]:
    """What a set of pool rows holds: junk kept, cells kept per class, entropy, rare share vs the pool."""
    pool_counts, kept_counts = Counter(truth.tolist()), Counter(truth[chosen].tolist())
    cells = {c: kept_counts.get(c, 0) for c in classes}
    n_cells, pool_cells = sum(cells.values()), sum(pool_counts.get(c, 0) for c in classes)
    rare_kept = sum(cells[c] for c in rare) / n_cells if n_cells else 0.0
    rare_pool = sum(pool_counts.get(c, 0) for c in rare) / pool_cells if pool_cells else 0.0
    return {
        "rois": len(chosen),
        "junk_kept": round(kept_counts.get(JUNK, 0) / pool_counts[JUNK], 4) if pool_counts.get(JUNK) else None,
        "junk_share": round(kept_counts.get(JUNK, 0) / len(chosen), 4) if len(chosen) else 0.0,
        "cells_kept": round(n_cells / pool_cells, 4) if pool_cells else 0.0,
        "kept_per_class": {c: round(cells[c] / pool_counts[c], 4) if pool_counts.get(c) else None for c in classes},
        "classes": cells,
        "bccd_cells": kept_counts.get(BCCD_CELL, 0),
        "entropy": round(normalized_entropy(cells), 4),
        "rare_share": round(rare_kept, 4),
        "rare_ratio": round(rare_kept / rare_pool, 3) if rare_pool else None,
    }


def cluster_diagnosis(
    selected_store: Path, prototypes_dir: Path, truth: np.ndarray, classes: list[str], config: EngineConfig
) -> list[dict[str, Any]]:
    """Per prototype cluster: n_i, LB, UB, its Eq. 8 threshold, the pool rows assigned to it, those within
    the threshold, and the junk and classes among both."""
    decisions = zarr.open_group(str(selected_store / "decisions"), mode="r")
    cluster = np.asarray(decisions["cluster"][:])
    within = np.asarray(decisions["within_threshold"][:])
    prototypes = load_prototypes(prototypes_dir)
    thresholds = cluster_thresholds(prototypes, config.selection)
    rows = []
    for i, dominant in enumerate(prototypes.dominant_classes()):
        assigned, kept = cluster == i, (cluster == i) & within
        rows.append(
            {
                "cluster": i,
                "n": int(prototypes.sizes[i]),
                "labeled_dominant": dominant,
                "lb": round(float(prototypes.lower[i]), 3),
                "ub": round(float(prototypes.upper[i]), 3),
                "threshold": round(float(thresholds[i]), 3),
                "assigned": int(assigned.sum()),
                "within": int(kept.sum()),
                "junk_assigned": int((truth[assigned] == JUNK).sum()),
                "junk_within": int((truth[kept] == JUNK).sum()),
                "rare_assigned": int(np.isin(truth[assigned], classes[-RARE_COUNT:]).sum()),
                "rare_within": int(np.isin(truth[kept], classes[-RARE_COUNT:]).sum()),
            }
        )
    return rows


# ---------------------------------------------------------------- steps


def timed(label: str, timings: dict[str, float], fn: Any, *fn_args: Any, **fn_kwargs: Any) -> Any:
    print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
    start = time.perf_counter()
    result = fn(*fn_args, **fn_kwargs)
    timings[label] = round(time.perf_counter() - start, 2)
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {timings[label]:.1f} s", flush=True)
    return result


def prototypes_current(folder: Path, model: str) -> bool:
    """Whether `folder` holds prototypes of this model (the fingerprint is checked again by select)."""
    try:
        return load_prototypes(folder).model == model
    except (OSError, ValueError):
        return False


def selected_rows(store: Path) -> np.ndarray:
    """Pool rows a selected store holds (its `candidate` column), sorted."""
    selected = RoiStore(store)
    return np.sort(np.asarray(selected.columns()["candidate"], dtype=np.int64)) if len(selected) else np.empty(0, int)


def at_budget(rows: np.ndarray, budget: int, seed: int = 0) -> np.ndarray:
    """`rows`, subsampled uniformly to `budget` when there are more (the make-up is kept in expectation)."""
    if len(rows) <= budget:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=budget, replace=False))


def make_config(args: argparse.Namespace, preset: str) -> EngineConfig:
    config = load_config(args.config)
    if FILTER_PRESETS[preset]:
        config = replace_section(config, "filter", **FILTER_PRESETS[preset])
    features: dict[str, Any] = {"model": args.model, "weights": args.weights}
    if args.feature_batch_size:
        features["batch_size"] = args.feature_batch_size
    config = replace_section(config, "prototypes", stain_normalization=args.stain_normalization)
    return replace_section(config, "features", **features)


def build_pool(args: argparse.Namespace, config: EngineConfig, work: Path, unlabeled: Path, timings: dict) -> Path:
    """The candidate pool: the filter's ROIs of the unlabeled cells, plus the junk of `--junk-tiles` BCCD tiles."""
    cells_key = _digest([str(unlabeled), to_dict(config.filter), to_dict(config.crop), to_dict(config.input)])
    cells = work / f"cells-{cells_key}"
    timed(f"filter cells ({cells.name})", timings, run_filter, unlabeled, cells, config, device=args.device)
    if not args.junk_tiles:
        return cells
    tiles = bccd_tiles(args.bccd, ("test", "val"), args.junk_tiles)
    junk_dir = work / f"junk-{_digest([[str(t) for t in tiles], pool_key(config)])}"
    junk = timed("filter junk (BCCD)", timings, filter_junk, tiles, junk_dir, config, args.device)
    return concat_stores([cells, junk], work / f"pool-{cells_key}-{junk_dir.name}").root


def pool_truth(pool: Path, truth_by_file: dict[str, str], bccd: Path) -> np.ndarray:
    """The truth of every pool row: a PBC image's class, JUNK or BCCD_CELL."""
    columns = RoiStore(pool).columns()
    paths = columns["source_path"]
    truth = np.array([truth_by_file.get(Path(p).name, "") for p in paths], dtype=object)
    from_bccd = truth == ""
    truth[from_bccd] = junk_truth(paths[from_bccd], columns["box"][from_bccd], bccd)
    return truth


def plan_strategies(alphas: list[float]) -> list[tuple[str, dict[str, Any]]]:
    """(name, [selection] settings) of each strategy; budget-taking ones get their budget later."""
    runs = [(f"activessf a={a:g}", {"strategy": "activessf", "alpha": a}) for a in alphas]
    runs.append(("activessf fixed 17", {"strategy": "activessf", "threshold_mode": "fixed"}))
    # the paper's exact Eq. 8 for clusters without a spread (n_i <= 2 or LB == UB), against the default 'borrow'
    runs.append(
        (f"activessf a={alphas[0]:g} eq8", {"strategy": "activessf", "alpha": alphas[0], "degenerate_clusters": "eq8"})
    )
    runs += [("random", {"strategy": "random"}), ("balanced", {"strategy": "balanced"})]
    gate = {"strategy": "gated-balanced", "alpha": alphas[0]}
    runs += [
        (f"gated-balanced a={alphas[0]:g} kmeans", {**gate, "balance_by": "kmeans"}),
        (f"gated-balanced a={alphas[0]:g} protos", {**gate, "balance_by": "prototypes"}),
    ]
    return [*runs, ("all", {"strategy": "all"})]


def run_strategies(
    args: argparse.Namespace, config: EngineConfig, pool: Path, protos: Path, work: Path, timings: dict
) -> tuple[dict[str, np.ndarray], int, list[dict]]:
    """Every strategy's selected pool rows at the common budget, the budget, and the select summaries."""
    chosen: dict[str, np.ndarray] = {}
    summaries = []
    budget = 0
    for name, selection in plan_strategies(args.alphas):
        takes_budget = selection["strategy"] in ("random", "balanced", "gated-balanced")
        if takes_budget and not budget:
            kept = [len(chosen[f"activessf a={a:g}"]) for a in args.alphas]
            budget = min(kept)
            if budget == 0:
                raise SystemExit(f"an activessf alpha keeps nothing ({kept}); no common budget")
        run_config = replace_section(config, "selection", **selection, **({"budget": budget} if takes_budget else {}))
        out = work / f"selected-{_digest([name, str(pool), str(protos), to_dict(run_config.selection)])}"
        summary = timed(
            f"select {name}", timings, run_select, pool, protos, out, run_config, device=args.device, overwrite=True
        )
        summaries.append({"name": name, "out": str(out), **summary})
        chosen[name] = selected_rows(out)
    for name in chosen:
        if name != "all":
            chosen[name] = at_budget(chosen[name], budget)
    return chosen, budget, summaries


def downstream_inputs(
    args: argparse.Namespace,
    config: EngineConfig,
    pool: Path,
    labeled: Path,
    chosen: dict[str, np.ndarray],
    rare: list[str],
) -> DownstreamInputs:
    """What the SSL table needs, at its resolution: the pool, each strategy's rows, the labeled cells."""
    rois, labels, class_names, _ = labeled_rois(labeled, config, args.device)
    store = RoiStore(pool)
    small = [downsample(store.part_rois(p), args.ssl_resolution) for p in store.parts]
    return DownstreamInputs(
        pool=to_images(torch.cat(small)),
        sets=chosen,
        labeled=to_images(downsample(rois, args.ssl_resolution)),
        labels=labels,
        class_names=class_names,
        rare=rare,
    )


# ---------------------------------------------------------------- report


def print_selection_table(rows: dict[str, dict], pool: dict, classes: list[str]) -> None:
    short = [c[:6] for c in classes]
    head = (
        f"{'strategy':<30}{'ROIs':>6}{'junk%':>7}{'cells%':>7} "
        + "".join(f"{s:>7}" for s in short)
        + f"{'H/lnC':>7}{'rare%':>7}{'x pool':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, row in {"pool (all candidates)": pool, **rows}.items():
        junk = row["junk_kept"]
        print(
            f"{name:<30}{row['rois']:>6}{(f'{100 * junk:.0f}' if junk is not None else '-'):>7}"
            f"{100 * row['cells_kept']:>7.0f} "
            + "".join(f"{(f'{100 * v:.0f}' if v is not None else '-'):>7}" for v in row["kept_per_class"].values())
            + f"{row['entropy']:>7.3f}{100 * row['rare_share']:>6.1f}%"
            + (f"{row['rare_ratio']:>7.2f}" if row["rare_ratio"] is not None else f"{'-':>7}")
        )
    print(
        "junk% and cells% and each class column: the share of the pool's junk, cells, class kept; "
        "'x pool': rare-class share of the kept cells over the pool's"
    )


def print_clusters(rows: list[dict]) -> None:
    print(
        f"{'cluster':>7}{'n_i':>5}  {'dominant':<13}{'LB':>7}{'UB':>7}{'thr':>7}{'pool':>6}{'within':>7}"
        f"{'junk':>6}{'junk in':>8}{'rare':>6}{'rare in':>8}"
    )
    for r in rows:
        print(
            f"{r['cluster']:>7}{r['n']:>5}  {r['labeled_dominant']:<13}{r['lb']:>7.2f}{r['ub']:>7.2f}"
            f"{r['threshold']:>7.2f}{r['assigned']:>6}{r['within']:>7}{r['junk_assigned']:>6}{r['junk_within']:>8}"
            f"{r['rare_assigned']:>6}{r['rare_within']:>8}"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA / "pbc-longtail", help="the PBC long-tailed subset")
    p.add_argument("--bccd", type=Path, default=DATA / "bccd", help="BCCD (JPEGImages, Annotations, ImageSets)")
    p.add_argument("--junk-tiles", type=int, default=100, help="BCCD tiles (test+val splits) for junk; 0: none")
    p.add_argument("--work", type=Path, help="where the stores go (reused when present); default under /tmp")
    p.add_argument("--config", type=Path, help="engine TOML config to start from")
    p.add_argument(
        "--filters",
        default="keep-most,paper",
        type=lambda s: s.split(","),
        help=f"filter presets, each its own pool and table: {', '.join(FILTER_PRESETS)}",
    )
    p.add_argument("--model", default="auto", help="timm model (default: the engine's, EfficientNet-Lite2)")
    p.add_argument("--weights", default="auto", help="default: the model's pretrained weights, offline")
    p.add_argument("--alpha", dest="alphas", default="0.5,1", type=lambda s: [float(v) for v in s.split(",")])
    p.add_argument(
        "--stain-normalization", default="none", choices=["none", "macenko", "reinhard"], help="of the features"
    )
    p.add_argument("--feature-batch-size", type=int, default=0, help="default: the config's")
    p.add_argument("--device", default="cpu", help="filter, features and SSL (default cpu)")
    p.add_argument("--limit-unlabeled", type=int, help="only the first N unlabeled images by name")
    p.add_argument("--limit-labeled-per-class", type=int, help="only the first N labeled images per class")
    p.add_argument("--downstream", action="store_true", help="SimCLR on each set, then probes (first filter only)")
    p.add_argument("--downstream-inputs", type=Path, help="save what the SSL table needs (.npz, for ssl_probe.py)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ssl-steps", type=int, default=300)
    p.add_argument("--ssl-batch", type=int, default=128)
    p.add_argument("--ssl-resolution", type=int, default=64)
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    unknown = [f for f in args.filters if f not in FILTER_PRESETS]
    if unknown:
        raise SystemExit(f"unknown filter preset(s) {unknown}; valid: {list(FILTER_PRESETS)}")
    data = args.data.resolve()
    truth_path = data / "unlabeled-truth.csv"
    for needed in (data / "unlabeled", data / "labeled", truth_path, args.bccd / "Annotations"):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing (--data {data}, --bccd {args.bccd})")
    features = resolve_features(make_config(args, args.filters[0]).features)
    try:  # fail now, not after the filter, when the weights cannot be loaded
        weights_source(features)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"cannot load {features.model} weights {features.weights!r}: {error}") from error
    work = args.work or Path(tempfile.gettempdir()) / (
        f"activessf-selq-u{args.limit_unlabeled or 'all'}-l{args.limit_labeled_per_class or 'all'}"
    )
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"data {data}, junk from {args.junk_tiles} BCCD tiles\nwork {work}\nfeatures {features.model}, "
        f"weights {features.weights}"
    )
    unlabeled = unlabeled_input(data, work, args.limit_unlabeled, (".jpg", ".jpeg", ".png"))
    labeled = labeled_input(data, work, args.limit_labeled_per_class)
    truth_by_file = read_truth(truth_path)
    frequency = Counter(truth_by_file.values())
    classes = sorted(frequency, key=lambda c: (-frequency[c], c))  # most frequent first
    rare = classes[-RARE_COUNT:]
    result: dict[str, Any] = {"features": to_dict(features), "classes": classes, "rare": rare, "presets": {}}

    for index, preset in enumerate(args.filters):
        timings: dict[str, float] = {}
        config = replace_section(make_config(args, preset), "features", model=features.model, weights=features.weights)
        print(f"\n=== filter preset {preset}: {FILTER_PRESETS[preset] or 'the paper defaults'}")
        pool = build_pool(args, config, work, unlabeled, timings)
        truth = pool_truth(pool, truth_by_file, args.bccd)
        protos_key = [str(labeled), *(to_dict(getattr(config, k)) for k in ("filter", "crop", "prototypes")), features]
        protos = work / f"prototypes-{_digest(protos_key)}"
        if prototypes_current(protos, features.model):
            print(f"prototypes: reusing {protos}")
        else:
            timed("prototypes", timings, run_prototypes, labeled, protos, config, device=args.device, overwrite=True)
        chosen, budget, summaries = run_strategies(args, config, pool, protos, work, timings)
        pool_score = score(np.arange(len(truth)), truth, classes, rare)
        rows = {name: score(c, truth, classes, rare) for name, c in chosen.items()}
        first = next(s for s in summaries if s["name"] == f"activessf a={args.alphas[0]:g}")
        clusters = cluster_diagnosis(
            Path(first["out"]), protos, truth, classes, replace_section(config, "selection", alpha=args.alphas[0])
        )
        print(
            f"\nSelection on the {preset} pool: {len(truth)} candidates ({Counter(truth.tolist())[JUNK]} junk, "
            f"{Counter(truth.tolist())[BCCD_CELL]} BCCD cells), budget {budget} ROIs per strategy "
            f"('all' is the whole pool; a strategy keeping fewer than the budget is shown at its count)"
        )
        print_selection_table(rows, pool_score, classes)
        print(f"\nPrototype clusters and activessf a={args.alphas[0]:g} (rare = {', '.join(rare)}):")
        print_clusters(clusters)
        entry = {
            "pool": pool_score,
            "budget": budget,
            "strategies": rows,
            "clusters": clusters,
            "timings_seconds": timings,
            "features_per_second": first.get("features_per_second"),
            "select_summaries": summaries,
            "config": to_dict(config),
        }
        if (args.downstream or args.downstream_inputs) and index == 0:
            inputs = downstream_inputs(args, config, pool, labeled, chosen, rare)
            if args.downstream_inputs:
                inputs.save(args.downstream_inputs)
                print(f"wrote the downstream inputs to {args.downstream_inputs}")
        if args.downstream and index == 0:
            start = time.perf_counter()
            schedule = SslSchedule(steps=args.ssl_steps, batch=args.ssl_batch, resolution=args.ssl_resolution)
            print(
                f"\nDownstream: SimCLR {schedule.steps} steps x {schedule.batch} at {schedule.resolution}px, "
                f"{args.seeds} seeds, on {args.device}"
            )
            entry["downstream"] = run_table(inputs, schedule, args.seeds, args.device)
            entry["downstream_seconds"] = round(time.perf_counter() - start, 1)
            print_table(entry["downstream"])
            print(f"downstream wall time {entry['downstream_seconds']:.0f} s")
        result["presets"][preset] = entry
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["host"] = {"cpus": os.cpu_count(), "device": args.device}
    print(f"\ntotal wall time {result['wall_seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
