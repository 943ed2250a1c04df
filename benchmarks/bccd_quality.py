"""How well Cell Region Filtering finds white cells on BCCD, the real peripheral smears in shared/data/bccd.

What it measures. Every image is decoded with `decode_files` (the engine's decode path) and filtered
with `find_regions` under the paper's defaults (`FilterConfig()`). Each kept ROI box is compared with
the Pascal VOC boxes of the image (WBC, RBC, Platelets):

* a WBC box is *found* when a kept ROI is matched to it; matching is greedy and one-to-one, pairs with
  IoU >= threshold taken highest IoU first;
* recall = found WBC / all WBC boxes; precision = ROIs matched to a WBC / all ROIs; F1 of the two;
* every ROI not matched to a WBC is put in one bin by its best-IoU ground-truth box (IoU >= threshold):
  `rbc`, `platelets`, `wbc_dup` (its best box is a WBC already taken by another ROI) or `none`.
  Shares are of all ROIs. BCCD leaves some cells unlabeled, so `none` ROIs are not all false.

Figures are given at IoU 0.5 (or `--iou`) and always at 0.3, since BCCD boxes are hand-drawn and
loose and a WBC box holds the whole cell while the purple mask holds mostly the nucleus. For the
defaults the script also says why each missed WBC was missed, from all components of the mask
(before the size and fill tests): no single component overlaps the box enough, the best one fails
the box-size test, or it passes that and fails the fill-rate test. It also prints the WBC box sizes
and how much of the WBC and RBC boxes the mask covers.

`--search` runs a grid. The mask depends only on the normalize/blur/K-means/HSV parameters and the
decision on (min_box, min_fill, fill_holes, connectivity), so the masks are made once per image and
mask configuration (`cell_masks`) and the region configurations are judged on them: `regions_of_masks`
is run once per (mask, fill_holes) with the loosest min_box and min_fill of the grid, and the stricter
configurations are subsets of that result (both tests are thresholds on per-region numbers). The
grid's paper-default point is checked against the `find_regions` run. The defaults are not changed.

Run (from the repository root; CPU is enough):

    python benchmarks/bccd_quality.py                       # paper defaults, all 364 images
    python benchmarks/bccd_quality.py --limit 40            # quick look
    python benchmarks/bccd_quality.py --search --json /tmp/bccd_quality.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activessf_engine.config import FilterConfig, InputConfig, to_dict
from activessf_engine.filter.decode import decode_files
from activessf_engine.filter.regions import StageTimes, TileRegions, cell_masks, find_regions, regions_of_masks
from activessf_engine.inspect.annotations import greedy_match, iou_matrix

CLASSES = ("WBC", "RBC", "Platelets")
LOOSE_IOU = 0.3
BINS = ("wbc", "wbc_dup", "rbc", "platelets", "none")
MIN_PRECISION = 0.5  # the "best by recall" pick of the search needs at least this precision (IoU 0.5)

# The search grid (see the module docstring).
MASK_GRID: dict[str, tuple[Any, ...]] = {
    "hsv_source": ("quantized", "blurred"),
    "normalize": ("minmax", "none"),
}
MIN_FILLS = (0.7, 0.6, 0.5, 0.4, 0.3)
FILL_HOLES = (False, True)
MIN_BOXES = (70, 60, 50, 40)


# ----------------------------------------------------------------------------------------------- data


@dataclass
class Sample:
    """One image and its ground truth: (n, 4) int64 boxes (x0, y0, x1, y1) per class."""

    name: str
    image: Path
    boxes: dict[str, np.ndarray]


def default_data() -> Path:
    """shared/data/bccd found by walking up from this script, else <repo>/tests/data/bccd."""
    here = Path(__file__).resolve()
    repo = here.parents[1]
    candidates = [repo.parent / "shared" / "data" / "bccd"]
    candidates += [p / "shared" / "data" / "bccd" for p in here.parents]
    candidates.append(repo / "tests" / "data" / "bccd")
    for candidate in candidates:
        if (candidate / "Annotations").is_dir():
            return candidate
    return candidates[0]


def parse_voc(path: Path) -> tuple[str, dict[str, np.ndarray], int]:
    """(image file name, boxes per class, number of degenerate boxes skipped) of one VOC XML file.

    VOC corners are used as given, xmax and ymax read as exclusive (a one-pixel difference at most).
    """
    root = ET.parse(path).getroot()
    found: dict[str, list[list[int]]] = {c: [] for c in CLASSES}
    skipped = 0
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        tags = ("xmin", "ymin", "xmax", "ymax")
        corners = [round(float(obj.findtext(f"bndbox/{t}") or 0)) for t in tags]
        if name not in found or corners[2] <= corners[0] or corners[3] <= corners[1]:
            skipped += 1
            continue
        found[name].append(corners)
    boxes = {c: np.asarray(b, dtype=np.int64).reshape(-1, 4) for c, b in found.items()}
    return (root.findtext("filename") or f"{path.stem}.jpg").strip(), boxes, skipped


def load_samples(data: Path, limit: int | None) -> tuple[list[Sample], int]:
    xmls = sorted((data / "Annotations").glob("*.xml"))
    if limit:
        xmls = xmls[:limit]
    samples, skipped = [], 0
    for xml in xmls:
        filename, boxes, bad = parse_voc(xml)
        skipped += bad
        image = data / "JPEGImages" / filename
        if not image.is_file():
            image = data / "JPEGImages" / f"{xml.stem}.jpg"
        samples.append(Sample(xml.stem, image, boxes))
    return samples, skipped


# ------------------------------------------------------------------------------------------- matching


@dataclass
class Counts:
    wbc: int = 0  # WBC boxes
    found: int = 0  # WBC boxes matched by a ROI
    rois: int = 0
    bins: Counter = field(default_factory=Counter)  # ROI bins (BINS)

    def __iadd__(self, other: Counts) -> Counts:
        self.wbc += other.wbc
        self.found += other.found
        self.rois += other.rois
        self.bins.update(other.bins)
        return self

    def metrics(self) -> dict[str, Any]:
        recall = self.found / self.wbc if self.wbc else 0.0
        precision = self.bins["wbc"] / self.rois if self.rois else 0.0
        f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
        shares = {f"share_{b}": (self.bins[b] / self.rois if self.rois else 0.0) for b in BINS}
        return {
            "recall": recall,
            "precision": precision,
            "f1": f1,
            "wbc": self.wbc,
            "found": self.found,
            "rois": self.rois,
            **shares,
        }


def judge(rois: np.ndarray, sample: Sample, threshold: float) -> tuple[Counts, list[str]]:
    """Counts of one image at one IoU threshold, and the bin of every ROI."""
    wbc = sample.boxes["WBC"]
    counts = Counts(wbc=len(wbc), rois=len(rois))
    if not len(rois):
        return counts, []
    matched = greedy_match(iou_matrix(rois, wbc), threshold) if len(wbc) else {}
    counts.found = len(matched)
    gt = np.concatenate([sample.boxes[c] for c in CLASSES])
    gt_class = [c for c in CLASSES for _ in range(len(sample.boxes[c]))]
    best_iou = iou_matrix(rois, gt) if len(gt) else np.zeros((len(rois), 0))
    bins = []
    for r in range(len(rois)):
        if r in matched:
            bins.append("wbc")
            continue
        j = int(np.argmax(best_iou[r])) if best_iou.shape[1] else -1
        if j < 0 or best_iou[r, j] < threshold:
            bins.append("none")
        else:
            bins.append({"WBC": "wbc_dup", "RBC": "rbc", "Platelets": "platelets"}[gt_class[j]])
    counts.bins.update(bins)
    return counts, bins


# ----------------------------------------------------------------------------------------- diagnostics


def miss_reasons(mask: torch.Tensor, sample: Sample, config: FilterConfig, threshold: float) -> tuple[Counter, list]:
    """Why each WBC box is or is not found, judged on all components of the mask.

    `kept`: a component with IoU >= threshold passes both tests; `fill`: one passes the box-size test
    but not the fill-rate test; `size`: those that overlap enough are all smaller than min_box;
    `no_component`: no single component overlaps the box that much (missed, split or merged).
    Also returns the fill rates of the `fill` cases' best components.
    """
    wbc = sample.boxes["WBC"]
    reasons: Counter = Counter()
    fills: list[float] = []
    if not len(wbc):
        return reasons, fills
    every = regions_of_masks(mask[None], dataclasses.replace(config, min_box=1, min_fill=0.0))[0]
    iou = iou_matrix(wbc, every.boxes) if len(every.boxes) else np.zeros((len(wbc), 0))
    sides = np.minimum(every.boxes[:, 2] - every.boxes[:, 0], every.boxes[:, 3] - every.boxes[:, 1])
    big = sides >= config.min_box
    full = every.fill_rates >= config.min_fill
    for i in range(len(wbc)):
        near = iou[i] >= threshold
        if (near & big & full).any():
            reasons["kept"] += 1
        elif (near & big).any():
            reasons["fill"] += 1
            fills.append(float(every.fill_rates[near & big].max()))
        elif near.any():
            reasons["size"] += 1
        else:
            reasons["no_component"] += 1
    return reasons, fills


def mask_coverage(mask: torch.Tensor, sample: Sample) -> dict[str, list[float]]:
    """Share of mask pixels inside each WBC and RBC box."""
    m = mask.cpu().numpy()
    return {c: [float(m[y0:y1, x0:x1].mean()) for x0, y0, x1, y1 in sample.boxes[c]] for c in ("WBC", "RBC")}


def box_sizes(samples: list[Sample]) -> dict[str, dict[str, float]]:
    out = {}
    for c in CLASSES:
        boxes = np.concatenate([s.boxes[c] for s in samples])
        if not len(boxes):
            continue
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        out[c] = {"n": len(boxes)}
        for axis, v in (("width", w), ("height", h)):
            for q, p in (("min", 0), ("p5", 5), ("median", 50), ("p95", 95), ("max", 100)):
                out[c][f"{axis}_{q}"] = float(np.percentile(v, p))
    return out


# ----------------------------------------------------------------------------------------------- runs


def decode_all(samples: list[Sample], input_config: InputConfig) -> list[torch.Tensor]:
    images = []
    for sample, decoded in zip(samples, decode_files([s.image for s in samples], input_config), strict=True):
        if decoded.image is None:
            raise SystemExit(f"cannot decode {sample.image}: {decoded.error}")
        images.append(decoded.image)
    return images


def batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def run_defaults(
    samples: list[Sample],
    images: list[torch.Tensor],
    config: FilterConfig,
    thresholds: tuple[float, ...],
    batch_size: int,
) -> dict[str, Any]:
    """find_regions under `config`; metrics, miss reasons and mask coverage, per threshold."""
    times = StageTimes()
    totals = {t: Counts() for t in thresholds}
    reasons = {t: Counter() for t in thresholds}
    fill_of_misses: dict[float, list[float]] = {t: [] for t in thresholds}
    coverage: dict[str, list[float]] = {"WBC": [], "RBC": []}
    per_image = []
    for chunk in batches(len(samples), batch_size):
        found = find_regions([images[i] for i in chunk], config, times, keep_masks=True)
        for i, regions in zip(chunk, found, strict=True):
            sample = samples[i]
            record: dict[str, Any] = {
                "image": sample.name,
                "rois": regions.boxes.tolist(),
                "fill_rates": [round(float(f), 3) for f in regions.fill_rates],
                "wbc": sample.boxes["WBC"].tolist(),
            }
            for t in thresholds:
                counts, bins = judge(regions.boxes, sample, t)
                totals[t] += counts
                record[f"bins@{t}"] = bins
                record[f"found@{t}"] = counts.found
                why, fills = miss_reasons(regions.mask, sample, config, t)
                reasons[t].update(why)
                fill_of_misses[t].extend(fills)
            for c, v in mask_coverage(regions.mask, sample).items():
                coverage[c].extend(v)
            per_image.append(record)
    return {
        "config": to_dict(config),
        "metrics": {str(t): totals[t].metrics() for t in thresholds},
        "wbc_outcome": {
            str(t): {k: reasons[t][k] for k in ("kept", "fill", "size", "no_component")} for t in thresholds
        },
        "fill_rate_of_fill_misses": {str(t): _summary(v) for t, v in fill_of_misses.items()},
        "mask_coverage": {c: _summary(v) for c, v in coverage.items()},
        "stage_seconds": {k: round(v, 3) for k, v in times.seconds.items()},
        "per_image": per_image,
    }


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = np.asarray(values)
    return {
        "n": len(v),
        "p25": float(np.percentile(v, 25)),
        "median": float(np.median(v)),
        "p75": float(np.percentile(v, 75)),
        "mean": float(v.mean()),
    }


def subset(regions: TileRegions, min_box: int, min_fill: float) -> np.ndarray:
    """Boxes of `regions` that also pass a stricter min_box and min_fill."""
    b = regions.boxes
    keep = ((b[:, 2] - b[:, 0]) >= min_box) & ((b[:, 3] - b[:, 1]) >= min_box) & (regions.fill_rates >= min_fill)
    return b[keep]


def run_search(
    samples: list[Sample],
    images: list[torch.Tensor],
    base: FilterConfig,
    thresholds: tuple[float, ...],
    batch_size: int,
) -> list[dict[str, Any]]:
    """Every (mask config x region config) of the grid, with metrics per threshold."""
    results = []
    region_grid = list(itertools.product(MIN_FILLS, FILL_HOLES, MIN_BOXES))
    for mask_values in itertools.product(*MASK_GRID.values()):
        mask_config = dataclasses.replace(base, **dict(zip(MASK_GRID, mask_values, strict=True)))
        start = time.perf_counter()
        totals = {(f, h, b, t): Counts() for (f, h, b) in region_grid for t in thresholds}
        times = StageTimes()
        for chunk in batches(len(samples), batch_size):
            masks = cell_masks(torch.stack([images[i] for i in chunk]), mask_config, times)[0]
            for j, i in enumerate(chunk):
                for holes in FILL_HOLES:
                    loosest = dataclasses.replace(
                        mask_config, fill_holes=holes, min_box=min(MIN_BOXES), min_fill=min(MIN_FILLS)
                    )
                    candidates = regions_of_masks(masks[j : j + 1], loosest)[0]
                    for fill, box in itertools.product(MIN_FILLS, MIN_BOXES):
                        rois = subset(candidates, box, fill)
                        for t in thresholds:
                            totals[(fill, holes, box, t)] += judge(rois, samples[i], t)[0]
        for fill, holes, box in region_grid:
            config = dataclasses.replace(mask_config, min_fill=fill, fill_holes=holes, min_box=box)
            results.append(
                {
                    "config": {k: getattr(config, k) for k in (*MASK_GRID, "min_fill", "fill_holes", "min_box")},
                    "metrics": {str(t): totals[(fill, holes, box, t)].metrics() for t in thresholds},
                }
            )
        print(
            f"  mask {dict(zip(MASK_GRID, mask_values, strict=True))}: {time.perf_counter() - start:.1f} s",
            flush=True,
        )
    return results


# ---------------------------------------------------------------------------------------------- output


def metric_row(label: str, m: dict[str, Any]) -> str:
    return (
        f"{label:<44} {m['recall']:6.3f} {m['precision']:6.3f} {m['f1']:6.3f} {m['found']:5d}/{m['wbc']:<4d}"
        f" {m['rois']:5d} {m['share_rbc']:6.3f} {m['share_platelets']:6.3f} {m['share_wbc_dup']:6.3f}"
        f" {m['share_none']:6.3f}"
    )


HEADER = (
    f"{'':<44} {'recall':>6} {'prec':>6} {'F1':>6} {'found/WBC':>10} {'ROIs':>5} {'RBC':>6}"
    f" {'plat':>6} {'dup':>6} {'none':>6}"
)


def config_label(c: dict[str, Any]) -> str:
    return (
        f"{c['hsv_source']:<9} {c['normalize']:<6} fill>={c['min_fill']:.1f} "
        f"holes={'y' if c['fill_holes'] else 'n'} box>={c['min_box']}"
    )


def print_defaults(result: dict[str, Any], thresholds: tuple[float, ...]) -> None:
    print(HEADER)
    for t in thresholds:
        print(metric_row(f"paper defaults @ IoU {t}", result["metrics"][str(t)]))
    print("  (RBC/plat/dup/none: shares of all ROIs whose best ground-truth box at that IoU is of that kind)")
    print("\nWBC boxes, judged on all components of the defaults' mask (before size and fill tests):")
    for t in thresholds:
        o = result["wbc_outcome"][str(t)]
        fills = result["fill_rate_of_fill_misses"][str(t)]
        extra = f"; best fill of those: median {fills['median']:.2f}" if fills["n"] else ""
        print(
            f"  IoU {t}: passes both {o['kept']}, fails only fill {o['fill']}, too small {o['size']}, "
            f"no single component {o['no_component']}{extra}"
        )
    cov = result["mask_coverage"]
    print(
        "Mask pixels inside GT boxes (median share): "
        f"WBC {cov['WBC'].get('median', 0):.3f}, RBC {cov['RBC'].get('median', 0):.3f}"
    )
    print("Stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["stage_seconds"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="BCCD folder (Annotations/, JPEGImages/)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument("--search", action="store_true", help="run the parameter grid")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold of a match (0.3 is always added)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = args.data or default_data()
    if not (data / "Annotations").is_dir():
        print(f"no BCCD data at {data} (expected Annotations/ and JPEGImages/)", file=sys.stderr)
        return 2
    thresholds = tuple(sorted({args.iou, LOOSE_IOU}, reverse=True))
    input_config = InputConfig()
    samples, skipped = load_samples(data, args.limit)
    images = decode_all(samples, input_config)
    print(
        f"BCCD at {data}: {len(samples)} images, "
        + ", ".join(f"{sum(len(s.boxes[c]) for s in samples)} {c}" for c in CLASSES)
        + f" boxes ({skipped} degenerate or unknown boxes skipped); torch threads {torch.get_num_threads()}"
    )
    sizes = box_sizes(samples)
    print("\nGT box sizes in pixels (min / p5 / median / p95 / max):")
    for c, s in sizes.items():
        parts = [
            f"{axis} " + " / ".join(f"{s[f'{axis}_{q}']:.0f}" for q in ("min", "p5", "median", "p95", "max"))
            for axis in ("width", "height")
        ]
        print(f"  {c:<9} n={s['n']:<5d} " + "   ".join(parts))

    print("\n== Paper defaults (FilterConfig()) ==")
    defaults = run_defaults(samples, images, FilterConfig(), thresholds, input_config.batch_size)
    print_defaults(defaults, thresholds)
    out: dict[str, Any] = {
        "data": str(data),
        "images": len(samples),
        "thresholds": thresholds,
        "box_sizes": sizes,
        "defaults": defaults,
    }

    if args.search:
        n = len(list(itertools.product(*MASK_GRID.values()))) * len(MIN_FILLS) * len(FILL_HOLES) * len(MIN_BOXES)
        print(
            f"\n== Search: {n} configurations (mask {dict(MASK_GRID)}; min_fill {MIN_FILLS}, "
            f"fill_holes {FILL_HOLES}, min_box {MIN_BOXES}) =="
        )
        grid = run_search(samples, images, FilterConfig(), thresholds, input_config.batch_size)
        out["search"] = grid
        key, loose = str(args.iou), str(LOOSE_IOU)
        paper = FilterConfig()
        point = next(r for r in grid if all(getattr(paper, k) == v for k, v in r["config"].items()))
        same = all(point["metrics"][str(t)] == defaults["metrics"][str(t)] for t in thresholds)
        print(f"grid point of the paper defaults equals the find_regions run: {same}")
        ranked = sorted(grid, key=lambda r: (-r["metrics"][key]["f1"], -r["metrics"][key]["recall"]))
        print(f"\nTop 10 by F1 at IoU {args.iou} (second line of each: IoU {LOOSE_IOU}):")
        print(HEADER)
        for r in ranked[:10]:
            print(metric_row(config_label(r["config"]), r["metrics"][key]))
            print(metric_row(f"  @ IoU {LOOSE_IOU}", r["metrics"][loose]))
        eligible = [r for r in grid if r["metrics"][key]["precision"] >= MIN_PRECISION]
        print(f"\nBest by recall with precision >= {MIN_PRECISION} at IoU {args.iou}:")
        if eligible:
            best = max(eligible, key=lambda r: (r["metrics"][key]["recall"], r["metrics"][key]["f1"]))
            print(HEADER)
            print(metric_row(config_label(best["config"]), best["metrics"][key]))
            print(metric_row(f"  @ IoU {LOOSE_IOU}", best["metrics"][loose]))
            out["best_recall"] = best
        else:
            print("  none")
        ranked_loose = sorted(grid, key=lambda r: (-r["metrics"][loose]["f1"], -r["metrics"][loose]["recall"]))
        print(f"\nBest by F1 at IoU {LOOSE_IOU}:")
        print(HEADER)
        print(metric_row(config_label(ranked_loose[0]["config"]), ranked_loose[0]["metrics"][loose]))
        out["best_f1"] = ranked[0]
        out["best_f1_loose"] = ranked_loose[0]

    seconds = time.perf_counter() - started
    out["seconds"] = seconds
    print(f"\nRun time: {seconds:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
