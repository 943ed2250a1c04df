"""`calibrate`: fit the filter to a few tiles with boxes round the cells a person wants, and say how much
better it does on the annotated tiles it did not see.

The search. A found box counts when a one-to-one IoU >= `iou` matching pairs it with an annotated box;
recall, precision and F1 are over all tiles of a set. The annotated tiles are split at random (seeded):
`fit` tiles to search on, the rest held out for the before/after figures. On the fit tiles every
combination of these is tried, and the one with the best F1 kept (then recall, then the summed IoU of
the matched boxes; full ties go to the earlier, nearer the paper's settings):

* illumination normalization: `minmax`, `channel_minmax` (each tile's own white balance), `none`;
* K-means settings (kmeans_clusters, merged_clusters): KMEANS;
* HSV source (`quantized` G' or `blurred` G) and HSV ranges: the paper's, or ranges learned from the fit
  tiles under that normalization: the saturation floor at a quantile of the background's saturation
  (pixels outside every box), the hue range that of the pixels inside the boxes above that floor. Learning
  the ranges from the user's own tiles (after per-tile normalization) is what makes the search carry over
  to other stains and scanners, where the paper's purple range does not fit;
* fill holes or not, min_fill in MIN_FILLS, and min_box as fractions of the annotated boxes' shorter side.

Masks are made once per (tile, normalization, K-means, source, ranges); the size and fill decisions are
thresholds on per-region numbers, so all of them are judged on one loose `regions_of_masks` per mask.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activessf_engine.config import EngineConfig, FilterConfig, HsvRange, dumps_toml, load_config, to_dict
from activessf_engine.device import DeviceChoice, as_choice
from activessf_engine.filter import (
    Quantized,
    StageTimes,
    TileRegions,
    decode_files,
    find_regions,
    find_sources,
    hsv_masks,
    quantize,
    regions_of_masks,
)
from activessf_engine.inspect.annotations import match_boxes, read_annotations
from activessf_engine.kernels import hsv_opencv

log = logging.getLogger(__name__)

NORMALIZE = ("minmax", "channel_minmax", "none")
KMEANS = ((20, 10), (16, 6), (12, 4))  # (kmeans_clusters, merged_clusters)
HSV_SOURCES = ("quantized", "blurred")
BACKGROUND_QUANTILES = (0.9, 0.97, 0.995)  # saturation floors of the learned HSV ranges
HUE_QUANTILES = (0.01, 0.99)  # hue range of the wanted pixels above the floor
MIN_WANTED_PIXELS = 50  # fewer pixels above a floor: no range learned from it
MIN_FILLS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MIN_BOX_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # of the 10th percentile of the boxes' shorter side


@dataclass
class Annotated:
    """One decoded tile and the boxes drawn on it."""

    name: str
    image: torch.Tensor  # (H, W, 3) uint8
    boxes: np.ndarray  # (n, 4) int64


@dataclass
class Score:
    """Annotated boxes found, all annotated boxes, boxes the filter kept."""

    found: int = 0
    truth: int = 0
    kept: int = 0
    matched_iou: float = 0.0  # sum of the IoUs of the matched pairs: breaks ties towards boxes that fit better

    def add(self, kept: np.ndarray, truth: np.ndarray, iou: float) -> None:
        found, matched_iou = match_boxes(kept, truth, iou)
        self.found += found
        self.matched_iou += matched_iou
        self.truth += len(truth)
        self.kept += len(kept)

    def rank(self) -> tuple[float, float, float]:
        """What the search maximizes: F1, then recall, then how well the matched boxes fit."""
        return self.f1, self.recall, self.matched_iou

    @property
    def recall(self) -> float:
        return self.found / self.truth if self.truth else 0.0

    @property
    def precision(self) -> float:
        return self.found / self.kept if self.kept else 0.0

    @property
    def f1(self) -> float:
        r, p = self.recall, self.precision
        return 2 * r * p / (r + p) if r + p else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "recall": round(self.recall, 4),
            "precision": round(self.precision, 4),
            "f1": round(self.f1, 4),
            "found": self.found,
            "annotated": self.truth,
            "kept": self.kept,
        }


def load_annotated(
    input_path: str | Path, annotations: str | Path, labels: set[str] | None, config: EngineConfig, device: DeviceChoice
) -> list[Annotated]:
    """The tiles under `input_path` that have annotations (matched by file name without suffix), decoded."""
    boxes = read_annotations(annotations, labels)
    sources = find_sources(input_path, config.input.extensions)
    paired = [s for s in sources if Path(s.relpath).stem in boxes]
    if not paired:
        example = next(iter(boxes), "none")
        raise ValueError(
            f"no tile under {input_path} has boxes in {annotations} (tiles and annotations are paired by file "
            f"name without suffix; e.g. annotation {example!r}, tile {sources[0].relpath if sources else 'none'!r})"
        )
    samples = []
    for source, image in zip(paired, decode_files([s.path for s in paired], config.input, device), strict=True):
        if image.image is None:
            log.warning("skipped %s: %s", source.relpath, image.error)
            continue
        samples.append(Annotated(source.relpath, image.image, boxes[Path(source.relpath).stem]))
    return samples


def split(samples: list[Annotated], fit: int, seed: int) -> tuple[list[Annotated], list[Annotated]]:
    """`fit` tiles drawn at random (seeded) to search on, and the rest, held out."""
    if fit < 1 or len(samples) <= fit:
        raise ValueError(
            f"need more annotated tiles than --fit {fit} (found {len(samples)}), so that some are held out to score on"
        )
    order = np.random.default_rng(seed).permutation(len(samples))
    return [samples[i] for i in sorted(order[:fit])], [samples[i] for i in sorted(order[fit:])]


def evaluate(samples: list[Annotated], config: FilterConfig, iou: float) -> Score:
    """How the filter under `config` does on `samples`."""
    score = Score()
    for sample in samples:
        score.add(find_regions([sample.image], config)[0].boxes, sample.boxes, iou)
    return score


def learned_ranges(quantized: list[Quantized], samples: list[Annotated]) -> list[HsvRange]:
    """HSV ranges of the pixels inside the boxes that are more saturated than most of the background."""
    inside_hsv, outside_s = [], []
    for q, sample in zip(quantized, samples, strict=True):
        hsv = hsv_opencv(q.smooth[0].permute(2, 0, 1)).cpu().numpy()  # (3, H, W)
        inside = np.zeros(hsv.shape[1:], dtype=bool)
        for x0, y0, x1, y1 in sample.boxes:
            inside[y0:y1, x0:x1] = True
        inside_hsv.append(hsv[:, inside])
        outside_s.append(hsv[1, ~inside])
    wanted, background = np.concatenate(inside_hsv, axis=1), np.concatenate(outside_s)
    ranges = []
    for quantile in BACKGROUND_QUANTILES:
        floor = int(np.quantile(background, quantile)) if len(background) else 0
        hues = wanted[0, wanted[1] >= floor]
        if len(hues) < MIN_WANTED_PIXELS:
            continue
        low, high = (int(v) for v in np.quantile(hues, HUE_QUANTILES))
        found = HsvRange(h=(low, high), s=(min(floor, 255), 255), v=(0, 255))
        if found not in ranges:
            ranges.append(found)
    return ranges


def _min_boxes(samples: list[Annotated], base: FilterConfig) -> list[int]:
    boxes = np.concatenate([s.boxes for s in samples])
    if not len(boxes):
        return [base.min_box]
    shorter = np.percentile(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 10)
    return sorted({max(4, round(f * shorter)) for f in MIN_BOX_FRACTIONS} | {base.min_box})


def _passing(regions: TileRegions, min_box: int, min_fill: float) -> np.ndarray:
    b = regions.boxes
    keep = ((b[:, 2] - b[:, 0]) >= min_box) & ((b[:, 3] - b[:, 1]) >= min_box) & (regions.fill_rates >= min_fill)
    return b[keep]


def search(samples: list[Annotated], base: FilterConfig, iou: float) -> tuple[FilterConfig, Score, int]:
    """The best config for `samples` (see the module docstring), its score and how many were tried."""
    times = StageTimes()
    min_boxes = _min_boxes(samples, base)
    best, best_score, tried = base, evaluate(samples, base, iou), 0
    for normalize, (clusters, merged) in itertools.product(NORMALIZE, KMEANS):
        settings = dataclasses.replace(base, normalize=normalize, kmeans_clusters=clusters, merged_clusters=merged)
        quantized = [quantize(s.image[None], settings, times) for s in samples]
        ranges = [(base.purple, base.deep_blue)] + [(r, r) for r in learned_ranges(quantized, samples)]
        sources = HSV_SOURCES if (clusters, merged) == KMEANS[0] else ("quantized",)  # G does not depend on K-means
        for source, (purple, deep_blue) in itertools.product(sources, ranges):
            masked = dataclasses.replace(settings, hsv_source=source, purple=purple, deep_blue=deep_blue)
            masks = [hsv_masks(q, masked, times) for q in quantized]
            for holes in (False, True):
                loose = dataclasses.replace(masked, fill_holes=holes, min_box=min_boxes[0], min_fill=MIN_FILLS[0])
                regions = [regions_of_masks(m, loose)[0] for m in masks]
                for min_fill, min_box in itertools.product(MIN_FILLS, min_boxes):
                    score = Score()
                    for found, sample in zip(regions, samples, strict=True):
                        score.add(_passing(found, min_box, min_fill), sample.boxes, iou)
                    tried += 1
                    if score.rank() > best_score.rank():
                        best = dataclasses.replace(loose, min_box=min_box, min_fill=min_fill)
                        best_score = score
    return best, best_score, tried


def write_filter_toml(path: Path, config: FilterConfig, comments: list[str]) -> None:
    """A TOML file with the [filter] section of `config`, checked by loading it back as `filter --config` does."""
    header = "".join(f"# {c}\n" for c in comments)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + dumps_toml({"filter": to_dict(config)}), encoding="utf-8")
    if load_config(path).filter != config:
        raise RuntimeError(f"{path} does not load back as the calibrated config")


def calibrate(
    input_path: str | Path,
    annotations: str | Path,
    out: str | Path,
    config: EngineConfig,
    *,
    labels: set[str] | None = None,
    fit: int = 5,
    seed: int = 0,
    iou: float = 0.5,
    device: DeviceChoice | str = "cpu",
) -> dict[str, Any]:
    """Search the filter's parameters on `fit` annotated tiles, write the best as a TOML [filter] section to
    `out`, and score `config.filter` (before) and the result (after) on the held-out tiles."""
    if not 0 < iou <= 1:
        raise ValueError(f"--iou must lie in (0, 1], got {iou}")
    started = time.perf_counter()
    samples = load_annotated(input_path, annotations, labels, config, as_choice(device))
    fitted_on, held_out = split(samples, fit, seed)
    fit_before = evaluate(fitted_on, config.filter, iou)
    best, fit_after, tried = search(fitted_on, config.filter, iou)
    before, after = evaluate(held_out, config.filter, iou), evaluate(held_out, best, iou)
    changed = {k: v for k, v in to_dict(best).items() if to_dict(config.filter)[k] != v}
    comments = [
        f"activessf-engine calibrate: {tried} configurations tried on {len(fitted_on)} tiles "
        f"({', '.join(s.name for s in fitted_on)}), labels {sorted(labels) if labels else 'all'}, IoU >= {iou}",
        f"fit tiles: F1 {fit_before.f1:.3f} -> {fit_after.f1:.3f}; {len(held_out)} held-out tiles: recall "
        f"{before.recall:.3f} -> {after.recall:.3f}, precision {before.precision:.3f} -> {after.precision:.3f}, "
        f"F1 {before.f1:.3f} -> {after.f1:.3f}",
        f"changed from the starting config: {', '.join(changed) or 'nothing'}",
        "use: activessf-engine filter --config THIS_FILE --input TILES --out STORE",
    ]
    write_filter_toml(Path(out), best, comments)
    return {
        "out": str(out),
        "fit_tiles": [s.name for s in fitted_on],
        "held_out_tiles": len(held_out),
        "configurations_tried": tried,
        "iou": iou,
        "fit": {"before": fit_before.to_json(), "after": fit_after.to_json()},
        "held_out": {"before": before.to_json(), "after": after.to_json()},
        "changed": changed,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
