"""Selection quality on the long-tailed PBC subset: does Active Sample Selection keep the rare classes?

Runs the engine end to end on ``--data`` (see its SOURCE.md): Cell Region Filtering of ``unlabeled/``
into a candidate store, prototypes of ``labeled/``, then one selection per strategy (activessf at each
``--alpha``, all, random, balanced, activessf with the fixed threshold 17, activessf with global
bounds, and any other registered strategy). Each selected ROI is traced to its source image
(``RoiStore.columns()["source_path"]``) and given that image's class from ``unlabeled-truth.csv``;
the truth file is read only here, in the scoring, never as an input of the engine.

Per strategy it prints: ROIs selected, distinct source images covered, ROIs per class (classes in
order of pool frequency), the normalized entropy H / ln(C) of the class distribution (1 = uniform),
and the share of the three rarest classes (rarest by the truth counts) in the selection, against
their share among all candidate ROIs (the pool), with the ratio (> 1: enriched). It also prints the
class make-up of the source images, the filter's recall per class (the share of each class's images
that gave at least one ROI) and ROIs per image, the wall time of each step, and the feature
throughput (ROIs/s) from the run summaries. Candidate features are computed once (by the first
selection) and read from the store's feature cache afterwards; the `features computed` column
proves it.

Run::

    /work/venv/bin/python benchmarks/selection_quality.py --json /tmp/selq.json          # full, slow on CPU
    /work/venv/bin/python benchmarks/selection_quality.py --limit-unlabeled 150 \\
        --limit-labeled-per-class 20 --model resnet18                                   # quick check
    /work/venv/bin/python benchmarks/selection_quality.py --weights /path/resnet50.safetensors

``--work`` keeps the stores (default: a folder under /tmp named after the inputs and filter
settings); a re-run with the same settings reuses the candidate store, its feature cache and the
prototypes. ``--weights random`` (the default) gives an untrained network: its table shows what the
selection does with meaningless features, a baseline for a table made with real weights.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from activessf_engine.config import EngineConfig, load_config, replace_section, to_dict
from activessf_engine.curate import run_prototypes, run_select
from activessf_engine.features import load_backbone
from activessf_engine.labeled import scan_labeled
from activessf_engine.pipeline import run_filter
from activessf_engine.prototypes import load_prototypes
from activessf_engine.selection import list_strategies
from activessf_engine.sources import find_sources
from activessf_engine.store import RoiStore

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pbc-longtail"
RARE_COUNT = 3
UNKNOWN = "(no truth)"
FILE_COLUMNS = ("file", "filename", "path", "image", "name")  # accepted headers of the truth CSV
CLASS_COLUMNS = ("class", "label", "cell_type", "category")

log = logging.getLogger("selection_quality")


@dataclass(frozen=True)
class Run:
    """One selection to make: a name for the table and the [selection] settings that differ."""

    name: str
    selection: dict[str, Any]


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


def class_counts(classes: np.ndarray, order: list[str]) -> dict[str, int]:
    counts = Counter(classes.tolist())
    table = {name: int(counts.get(name, 0)) for name in order}
    if counts.get(UNKNOWN):
        table[UNKNOWN] = int(counts[UNKNOWN])
    return table


def normalized_entropy(counts: dict[str, int], n_classes: int) -> float:
    """H / ln(C) of the distribution over the known classes (0 when nothing is selected)."""
    values = np.array([v for k, v in counts.items() if k != UNKNOWN], dtype=np.float64)
    total = values.sum()
    if total == 0 or n_classes < 2:
        return 0.0
    p = values[values > 0] / total
    return max(0.0, float(-(p * np.log(p)).sum() / math.log(n_classes)))


def rare_share(counts: dict[str, int], rare: list[str]) -> float:
    total = sum(v for k, v in counts.items() if k != UNKNOWN)
    return sum(counts[c] for c in rare) / total if total else 0.0


def score(
    classes: np.ndarray, sources: np.ndarray, order: list[str], rare: list[str], pool_rare: float
) -> dict[str, Any]:
    counts = class_counts(classes, order)
    share = rare_share(counts, rare)
    return {
        "rois": len(classes),
        "sources": len(set(sources.tolist())),
        "classes": counts,
        "entropy": round(normalized_entropy(counts, len(order)), 4),
        "rare_share": round(share, 4),
        "rare_ratio": round(share / pool_rare, 3) if pool_rare else None,
    }


def distance_stats(selected_store: Path) -> dict[str, Any]:
    """Candidate distances to their nearest prototype against the thresholds, from the decisions."""
    group = zarr.open_group(str(selected_store / "decisions"), mode="r")
    distance = np.asarray(group["distance"][:], dtype=np.float64)
    threshold = np.asarray(group["threshold"][:], dtype=np.float64)
    if not len(distance):
        return {}
    quantiles = np.quantile(distance, [0.0, 0.5, 1.0])
    return {
        "distance_min_median_max": [round(float(v), 3) for v in quantiles],
        "threshold_min_max": [round(float(threshold.min()), 3), round(float(threshold.max()), 3)],
        "within_threshold": int((distance <= threshold).sum()),
    }


# ---------------------------------------------------------------- steps


def make_config(args: argparse.Namespace) -> EngineConfig:
    config = load_config(args.config)
    filter_changes = {
        k: v
        for k, v in (("min_fill", args.min_fill), ("min_box", args.min_box), ("fill_holes", args.fill_holes))
        if v is not None
    }
    if filter_changes:
        config = replace_section(config, "filter", **filter_changes)
    config = replace_section(config, "crop", size=args.roi_size)
    feature_changes: dict[str, Any] = {"model": args.model, "weights": args.weights}
    if args.feature_batch_size:
        feature_changes["batch_size"] = args.feature_batch_size
    if args.threads:
        feature_changes["threads"] = args.threads
    config = replace_section(config, "features", **feature_changes)
    return replace_section(config, "selection", alpha=args.alphas[0])


def plan_runs(alphas: list[float]) -> list[Run]:
    """activessf at each alpha, the baselines (sized by activessf at the first alpha), two variants."""
    first = alphas[0]
    runs = [Run(f"activessf a={a:g}", {"strategy": "activessf", "alpha": a}) for a in alphas]
    known = {"activessf"}
    for name in ("all", "random", "balanced"):
        if name in list_strategies():
            runs.append(Run(name, {"strategy": name, "alpha": first}))
            known.add(name)
    runs.append(Run("activessf fixed 17", {"strategy": "activessf", "threshold_mode": "fixed"}))
    runs.append(Run(f"activessf global a={first:g}", {"strategy": "activessf", "bounds": "global"}))
    runs += [Run(name, {"strategy": name}) for name in list_strategies() if name not in known]
    return runs


def timed(label: str, timings: dict[str, float], fn: Any, *fn_args: Any, **fn_kwargs: Any) -> Any:
    print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
    start = time.perf_counter()
    result = fn(*fn_args, **fn_kwargs)
    timings[label] = round(time.perf_counter() - start, 2)
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {timings[label]:.1f} s", flush=True)
    return result


def prototypes_current(folder: Path, model: str, fingerprint: str) -> bool:
    """Whether `folder` holds prototypes of this model and these exact weights (by fingerprint)."""
    if not (folder / "prototypes.json").is_file():
        return False
    try:
        prototypes = load_prototypes(folder)
    except (OSError, ValueError) as error:
        log.warning("rebuilding prototypes: %s", error)
        return False
    return prototypes.model == model and prototypes.fingerprint == fingerprint


def prototype_summary(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "prototypes.json").read_text())
    return {"prototypes": str(folder), "reused": True, "clusters": meta["clusters"], "model": meta["model"]}


# ---------------------------------------------------------------- report


def print_table(rows: list[dict[str, Any]], order: list[str], pool: dict[str, Any], rare: list[str]) -> None:
    short = {name: name[:6] for name in order}
    short[UNKNOWN] = "notrue"
    extra = [UNKNOWN] if any(UNKNOWN in r["classes"] for r in [*rows, pool]) else []
    cols = [*order, *extra]
    head = (
        f"{'strategy':<24}{'ROIs':>6}{'imgs':>6} "
        + "".join(f"{short[c]:>7}" for c in cols)
        + f"{'H/lnC':>7}{'rare%':>7}{'x pool':>7}{'feat.comp':>10}"
    )
    print(head)
    print("-" * len(head))
    for row in [pool, *rows]:
        ratio = row["rare_ratio"]
        print(
            f"{row['name']:<24}{row['rois']:>6}{row['sources']:>6} "
            + "".join(f"{row['classes'].get(c, 0):>7}" for c in cols)
            + f"{row['entropy']:>7.3f}{100 * row['rare_share']:>6.1f}%"
            + (f"{ratio:>7.2f}" if ratio is not None else f"{'-':>7}")
            + f"{row.get('features_computed', ''):>10}"
        )
    print(f"rare classes (fewest in the truth file): {', '.join(rare)}; 'x pool' = rare% / rare% of the pool")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"default {DEFAULT_DATA}")
    p.add_argument("--work", type=Path, help="where the stores go (reused when present); default under /tmp")
    p.add_argument("--config", type=Path, help="engine TOML config to start from")
    p.add_argument("--model", default="resnet50", help="timm model (default resnet50)")
    p.add_argument("--weights", default="random", help="random (default), cache, or a local weights file")
    p.add_argument("--alpha", dest="alphas", default="0.5,1", type=lambda s: [float(v) for v in s.split(",")])
    p.add_argument("--roi-size", type=int, default=224)
    p.add_argument("--feature-batch-size", type=int, default=0, help="default: the config's (64)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--device", default="cpu", help="torch device for filter and features (default cpu)")
    p.add_argument("--limit-unlabeled", type=int, help="only the first N unlabeled images by name")
    p.add_argument("--limit-labeled-per-class", type=int, help="only the first N labeled images per class")
    p.add_argument("--min-fill", type=float, help="filter tau (default: the config's, 0.7)")
    p.add_argument("--min-box", type=int, help="filter minimum box side (default: the config's, 70)")
    p.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--progress", action="store_true", help="progress bars on stderr")
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
    config = make_config(args)
    data = args.data.resolve()
    truth_path = data / "unlabeled-truth.csv"
    for needed in (data / "unlabeled", data / "labeled", truth_path):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing; is --data {data} the pbc-longtail folder?")
    work = args.work or Path(tempfile.gettempdir()) / (
        f"activessf-selq-u{args.limit_unlabeled or 'all'}-l{args.limit_labeled_per_class or 'all'}"
    )
    try:  # fail now, not after the filter, when the weights cannot be loaded
        backbone = load_backbone(config.features, args.device)
    except (FileNotFoundError, ValueError) as error:
        what = f"{config.features.model} weights {config.features.weights!r}"
        raise SystemExit(f"cannot load {what}: {error}") from error
    model_name, fingerprint = backbone.name, backbone.fingerprint
    del backbone  # each step loads its own; only the name and fingerprint are needed here
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    print(f"data {data}\nwork {work}\nmodel {config.features.model}, weights {config.features.weights}")

    # --- inputs: the unlabeled pool U and the labeled set T (links to a deterministic subset if limited)
    unlabeled = unlabeled_input(data, work, args.limit_unlabeled, config.input.extensions)
    labeled = labeled_input(data, work, args.limit_labeled_per_class)
    pool_sources = [s.relpath for s in find_sources(unlabeled, config.input.extensions)]

    # --- filter: one candidate store per (inputs, filter, crop) so changed settings never reuse a store
    key = _digest([pool_sources, to_dict(config.filter), to_dict(config.crop), to_dict(config.input)])
    candidates = work / f"candidates-{key}"
    filtered = timed(
        "filter",
        timings,
        run_filter,
        unlabeled,
        candidates,
        config,
        device=args.device,
        progress=args.progress,
    ).to_json()
    store = RoiStore(candidates)
    if not store.complete:
        raise SystemExit(f"{candidates} is incomplete ({len(store.parts)} of {len(store.meta['plan'])})")
    print(
        f"filter: {filtered['sources_read']} images read this run ({filtered['parts_already_done']} of "
        f"{filtered['parts_total']} parts were already done), {len(store)} candidate ROIs in the store"
    )

    # --- prototypes of T (reused when the folder holds prototypes of the same model and weights)
    labeled_key = _digest(
        [
            str(labeled),
            args.limit_labeled_per_class,
            to_dict(config.crop),
            to_dict(config.prototypes),
            to_dict(config.filter),
        ]
    )
    protos_dir = work / f"prototypes-{config.features.model}-{_digest(config.features.weights)}-{labeled_key}"
    if prototypes_current(protos_dir, model_name, fingerprint):
        print(f"prototypes: reusing {protos_dir}")
        protos = prototype_summary(protos_dir)
        timings["prototypes"] = 0.0
    else:
        protos = timed(
            "prototypes",
            timings,
            run_prototypes,
            labeled,
            protos_dir,
            config,
            device=args.device,
            progress=args.progress,
        )
        print(
            f"prototypes: {protos['labeled']} labeled images {protos['classes']}, "
            f"{len(protos['clusters'])} clusters, weights {protos['weights']}; "
            f"{protos['labeled'] / protos['wall_seconds']:.1f} labeled images/s end to end"
        )
    for c in protos["clusters"]:
        n = c.get("n", c.get("size"))
        print(f"  cluster {c.get('cluster', c.get('index')):>2}: n={n:<4} {c['classes']}")

    # --- the pool, scored: every candidate ROI's source image and its true class
    truth = read_truth(truth_path)
    truth_counts = Counter(truth.values())
    order = sorted(truth_counts, key=lambda c: (-truth_counts[c], c))  # by frequency in the truth file
    rare = sorted(truth_counts, key=lambda c: (truth_counts[c], c))[:RARE_COUNT]
    cand_paths = np.array([Path(p).name for p in store.columns()["source_path"]], dtype=object)
    cand_classes = np.array([truth.get(p, UNKNOWN) for p in cand_paths], dtype=object)
    image_classes = np.array([truth.get(Path(p).name, UNKNOWN) for p in pool_sources], dtype=object)
    images = class_counts(image_classes, order)
    pool_counts = class_counts(cand_classes, order)
    covered = Counter(truth.get(p, UNKNOWN) for p in set(cand_paths.tolist()))
    recall = {c: round(covered.get(c, 0) / images[c], 4) if images.get(c) else None for c in order}
    per_image = {c: round(pool_counts[c] / images[c], 3) if images.get(c) else None for c in order}
    pool = {"name": "pool (all candidates)", **score(cand_classes, cand_paths, order, rare, 0.0)}
    pool["rare_ratio"] = 1.0
    source_pool = score(image_classes, np.array(pool_sources, dtype=object), order, rare, 0.0)
    print(f"\nsource images (truth): {len(pool_sources)} -> {images}")
    share = 100 * source_pool["rare_share"]
    print(f"  normalized entropy {source_pool['entropy']:.3f}, rare share {share:.1f}%")
    print(f"{'class':<14}{'images':>7}{'with ROI':>9}{'recall':>8}{'ROIs':>6}{'ROIs/img':>9}")
    for c in order:
        r = recall[c]
        print(
            f"{c:<14}{images[c]:>7}{covered.get(c, 0):>9}{(f'{r:.3f}' if r is not None else '-'):>8}"
            f"{pool_counts[c]:>6}{(per_image[c] if per_image[c] is not None else '-'):>9}"
        )

    # --- selections: the first computes the candidate features, the others read the cache
    rows, summaries = [], []
    for run in plan_runs(args.alphas):
        run_config = replace_section(config, "selection", **run.selection)
        out = work / f"selected-{run.name.replace(' ', '-').replace('=', '')}-{key}"
        summary = timed(
            f"select {run.name}",
            timings,
            run_select,
            candidates,
            protos_dir,
            out,
            run_config,
            device=args.device,
            progress=args.progress,
            overwrite=True,
        )
        selected = RoiStore(out)
        cols = selected.columns()
        paths = np.array([Path(p).name for p in cols.get("source_path", [])], dtype=object)
        pointed = cand_paths[np.asarray(cols["candidate"], dtype=np.int64)] if len(selected) else paths
        if not np.array_equal(paths, pointed):
            log.error("%s: source paths disagree with the candidates they point to", out)
        classes = np.array([truth.get(p, UNKNOWN) for p in paths], dtype=object)
        row = {
            "name": run.name,
            **score(classes, paths, order, rare, pool["rare_share"]),
            "features_computed": summary["features_computed"],
            "features_cached": summary["features_cached"],
            "features_per_second": summary["features_per_second"],
            "assignments_per_second": summary["assignments_per_second"],
            "selection": {k: summary[k] for k in ("strategy", "alpha", "threshold_mode", "bounds")},
            "wall_seconds": summary["wall_seconds"],
            "distances": distance_stats(out),
        }
        rows.append(row)
        summaries.append(summary)
    total = round(time.perf_counter() - started, 2)

    # --- report
    print(
        f"\nSelection quality: {config.features.model}, weights {config.features.weights}"
        f"{' (UNTRAINED network)' if summaries and summaries[0]['untrained_weights'] else ''}"
    )
    print_table(rows, order, pool, rare)
    first = rows[0]["distances"] if rows else {}
    if first:
        print(
            f"{rows[0]['name']}: candidate distance to nearest prototype min/median/max "
            f"{first['distance_min_median_max']}, thresholds {first['threshold_min_max']}, "
            f"{first['within_threshold']} of {len(store)} within their threshold"
        )
    cache_ok = all(r["features_computed"] == 0 for r in rows[1:])
    print(
        f"feature cache: first selection computed {rows[0]['features_computed']} and read "
        f"{rows[0]['features_cached']}; the {len(rows) - 1} later ones computed "
        f"{sum(r['features_computed'] for r in rows[1:])} ({'OK' if cache_ok else 'NOT CACHED'})"
    )
    fps = next((r["features_per_second"] for r in rows if r["features_per_second"]), None)
    print(
        f"feature throughput (select summary): {fps if fps is not None else 'n/a (all cached)'} ROIs/s; "
        f"assignment: {rows[0]['assignments_per_second']} ROIs/s; filter: "
        f"{filtered['images_per_second']} images/s"
    )
    print("wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + f"; total {total:.1f}")
    result = {
        "data": str(data),
        "work": str(work),
        "model": config.features.model,
        "weights": config.features.weights,
        "untrained_weights": summaries[0]["untrained_weights"] if summaries else None,
        "limits": {"unlabeled": args.limit_unlabeled, "labeled_per_class": args.limit_labeled_per_class},
        "config": to_dict(config),
        "class_order": order,
        "rare_classes": rare,
        "source_images": {"count": len(pool_sources), **source_pool},
        "filter_recall": recall,
        "rois_per_image": per_image,
        "pool": pool,
        "strategies": rows,
        "feature_cache_ok": cache_ok,
        "timings_seconds": {**timings, "total": total},
        "filter": filtered,
        "prototypes": protos,
        "select_summaries": summaries,
        "host": {"cpus": os.cpu_count()},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0 if cache_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
