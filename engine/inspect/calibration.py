"""`calibrate`: fit the filter to a few tiles with boxes round the cells a person wants, and say how much
better it does on the annotated tiles it did not see.

The search. A found box counts when a one-to-one IoU >= `iou` matching pairs it with an annotated box;
recall, precision and F1 are over all tiles of a set. The annotated tiles are split at random (seeded):
`fit` tiles to search on, the rest held out for the before/after figures. With no more tiles than `fit`,
the search runs on all of them and the figures are leave-one-tile-out: each tile scored under the best
config of the others. On the fit tiles every combination of these is tried, and the one that ranks first
under the `Objective` kept (`f1`: the best F1; `recall-at-precision P`: the best recall among those with
precision >= P, else the best F1; then the plateau; then recall, precision and the summed IoU of the matched
boxes; full ties go to the earlier, nearer the paper's settings). The plateau of a configuration is the mean
F1 of it and its neighbours, the configurations one step away on one of the thresholds (min_fill, min_box,
max_box, box_scale) with the same closed mask. 5 tiles hold a handful of cells, so hundreds of configurations
find all of them; the one amid others that do too is the one least likely to sit on the edge of what the
other tiles need. (Chosen on BCCD's val split, not the test split the figures are on: benchmarks/README.md,
"Calibration".)

* stain and illumination normalization (NORMALIZATIONS): none, or Macenko or Reinhard to a reference measured
  on all the fit tiles' pixels (engine/stain.py), each followed by `minmax`; or no stain normalization and
  `channel_minmax` (each tile's own white balance) or `none`. A stain normalization already brings each tile to
  one colour balance, so it is not paired with the other two;
* the mask: a table of the colours that are a cell's (config.ColourTable), learned from the fit tiles under that
  normalization: the colours of G at least 2^level (LEVELS) times likelier inside the boxes than outside them
  (inspect/cell_colours.py). Each fit tile's counts come from the table learned on the other fit tiles (with one fit
  tile, on itself): a table scored on the tiles it was learned from finds their cells at every level, and a
  search ranked so picks what does not carry to other tiles. The config written holds the table learned on all
  the fit tiles. (The HSV ranges this replaced, the paper's or learned as hue and value quantiles, carried less
  well to held-out tiles: benchmarks/README.md, "Calibration");
* the mask's closing radius (none, or CLOSE_FRACTIONS of the annotated boxes' shorter side: it joins a lobed
  nucleus's parts into one region, whose box then matches the cell's; fill_holes stays as given), min_fill in
  MIN_FILLS, min_box as fractions of the shorter side the smallest cells on other tiles are expected to have (a
  lower prediction bound from the annotated boxes, `_smallest_side`), max_box (no bound, or multiples of their
  longer side): the upper bound drops clumps and smears; and box_scale in BOX_SCALES: the mask holds mostly the
  nucleus, the annotated box the whole cell.

Masks are made once per (tile, normalization, level) and closed once per radius; the size and fill decisions
are thresholds on per-region numbers, so all of them are judged on one loose `regions_of_masks` per closed mask.
Every configuration's counts are kept per tile, so the leave-one-tile-out choice costs no second search.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.special
import torch

from activessf_engine.config import (
    STAIN_VALUES,
    EngineConfig,
    FilterConfig,
    dumps_toml,
    load_config,
    to_dict,
)
from activessf_engine.device import DeviceChoice, as_choice
from activessf_engine.filter import (
    StageTimes,
    TileRegions,
    decode_files,
    find_regions,
    find_sources,
    grow_boxes,
    regions_of_masks,
    smoothed,
)
from activessf_engine.inspect.annotations import iou_matrix, match_boxes, matched, read_annotations
from activessf_engine.inspect.cell_colours import LEVELS, colour_histograms, colour_table, enrichment
from activessf_engine.kernels import close_masks, colour_table_mask
from activessf_engine.progress import Progress, make_progress
from activessf_engine.stain import fit_stain_reference

log = logging.getLogger(__name__)

STAINS = tuple(STAIN_VALUES)  # none, macenko, reinhard
# What `calibrate` searches unless told (`--stain`): with the learned colour table, stain normalization met the
# target on no more BCCD seeds and on fewer test seeds, and a filter with it is 3x slower (benchmarks/README.md).
DEFAULT_STAINS = ("none",)
# (stain normalization, illumination normalization) pairs tried
NORMALIZATIONS = (
    ("none", "minmax"),
    ("none", "channel_minmax"),
    ("none", "none"),
    ("macenko", "minmax"),
    ("reinhard", "minmax"),
)
MIN_FILLS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MIN_BOX_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # of the smallest side expected on other tiles
MAX_BOX_FACTORS = (1.5, 2.0, 3.0)  # of the 90th percentile of the boxes' longer side; no bound is tried too
BOX_SCALES = (1.0, 1.25, 1.5, 1.75)  # kept boxes grown by these: a nucleus's box to its cell's
CLOSE_FRACTIONS = (0.05, 0.1)  # closing radii, of the 10th percentile of the boxes' shorter side; 0 is tried too
SMALLEST_CELL_CONFIDENCE = 0.95  # of the lower prediction bound that min_box is a fraction of (`_smallest_side`)


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

    @classmethod
    def of(cls, counts: np.ndarray) -> Score:
        """The score of one row of `Grid.counts` summed over tiles: found, annotated, kept, summed IoU."""
        found, truth, kept, matched_iou = counts.tolist()
        return cls(round(found), round(truth), round(kept), matched_iou)

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


@dataclass(frozen=True)
class Objective:
    """What the search maximizes: `f1` (then recall), or `recall-at-precision` (the best recall among the
    configurations with precision >= min_precision; where none reaches it, the best F1); then the summed IoU
    of the matched boxes."""

    name: Literal["f1", "recall-at-precision"] = "f1"
    min_precision: float = 0.0

    @classmethod
    def parse(cls, words: Sequence[str]) -> Objective:
        """`["f1"]` or `["recall-at-precision", "0.85"]`, as `--objective` takes them."""
        if list(words) == ["f1"]:
            return cls()
        if len(words) == 2 and words[0] == "recall-at-precision":
            try:
                floor = float(words[1])
            except ValueError:
                floor = -1.0
            if 0 < floor <= 1:
                return cls("recall-at-precision", floor)
        raise ValueError(f"--objective must be `f1` or `recall-at-precision P` with P in (0, 1], got {' '.join(words)}")

    def describe(self) -> str:
        return "F1" if self.name == "f1" else f"recall at precision >= {self.min_precision}"

    def best(self, counts: np.ndarray, neighbours: np.ndarray | None = None) -> int:
        """The index of the first-ranked row of (configs, 4) counts summed over tiles (ties: the earliest);
        `neighbours` (configs, m) lists each row's neighbours for the plateau (-1: none; see the module docstring)."""
        matched_iou = counts[:, 3]
        recall, precision, f1 = _rates(counts)
        primary = (
            [f1]
            if self.name == "f1"
            else [precision >= self.min_precision, np.where(precision >= self.min_precision, recall, f1)]
        )
        keys = [*primary, plateau(f1, neighbours), recall, precision, matched_iou]
        return int(np.lexsort([-np.asarray(k, np.float64) for k in reversed(keys)])[0])  # by its last key first


def _rates(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recall, precision and F1 of each row of (configs, 4) counts."""
    found, truth, kept, _ = counts.T
    recall = np.divide(found, truth, out=np.zeros_like(found), where=truth > 0)
    precision = np.divide(found, kept, out=np.zeros_like(found), where=kept > 0)
    f1 = np.divide(2 * recall * precision, recall + precision, out=np.zeros_like(found), where=recall + precision > 0)
    return recall, precision, f1


def plateau(f1: np.ndarray, neighbours: np.ndarray | None) -> np.ndarray:
    """The mean F1 of each configuration and its neighbours (its own F1 where none are given)."""
    if neighbours is None:
        return f1
    padded = np.append(f1, np.nan)  # index -1: no neighbour
    return np.nanmean(np.concatenate([f1[:, None], padded[neighbours]], axis=1), axis=1)


def split(samples: list[Annotated], fit: int, seed: int) -> tuple[list[Annotated], list[Annotated]]:
    """`fit` tiles drawn at random (seeded) to search on, and the rest, held out."""
    order = np.random.default_rng(seed).permutation(len(samples))
    return [samples[i] for i in sorted(order[:fit])], [samples[i] for i in sorted(order[fit:])]


def evaluate(samples: list[Annotated], config: FilterConfig, iou: float) -> Score:
    """How the filter under `config` does on `samples`."""
    score = Score()
    for sample in samples:
        score.add(find_regions([sample.image], config)[0].boxes, sample.boxes, iou)
    return score


def _shorter_sides(samples: list[Annotated]) -> np.ndarray:
    """The shorter side of every annotated box of `samples`."""
    boxes = np.concatenate([s.boxes for s in samples])
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def _shorter_side(samples: list[Annotated]) -> float | None:
    """The 10th percentile of the annotated boxes' shorter side (None without boxes): what the closing radii are
    fractions of."""
    sides = _shorter_sides(samples)
    return float(np.percentile(sides, 10)) if len(sides) else None


def _smallest_side(samples: list[Annotated]) -> float | None:
    """The shorter side that all but 1 - SMALLEST_CELL_CONFIDENCE (5%) of the cells on other tiles should exceed (None
    without boxes): a lower prediction bound from a log-normal fitted to the annotated boxes' shorter sides,
    exp(mean - t * sd * sqrt(1 + 1/n)) with Student's t of n - 1 degrees of freedom; with one box, its side.
    What min_box is a fraction of. A percentile of the few boxes on 5 tiles is about the smallest of them, and
    1 cell in 6 on other tiles is smaller than the smallest of 5: a min_box near it dropped those cells
    (benchmarks/README.md, "Calibration")."""
    sides = np.log(np.maximum(_shorter_sides(samples), 1).astype(np.float64))
    if not len(sides):
        return None
    if len(sides) == 1:
        return float(np.exp(sides[0]))
    # Student's t quantile; scipy.stats would add 0.7 s of import
    t = scipy.special.stdtrit(len(sides) - 1, SMALLEST_CELL_CONFIDENCE)
    return float(np.exp(sides.mean() - t * sides.std(ddof=1) * np.sqrt(1 + 1 / len(sides))))


def _min_boxes(samples: list[Annotated], base: FilterConfig) -> list[int]:
    smallest = _smallest_side(samples)
    if smallest is None:
        return [base.min_box]
    return _nearest_first({max(4, round(f * smallest)) for f in MIN_BOX_FRACTIONS} | {base.min_box}, base.min_box)


def _nearest_first(values: Iterable[float], start: float) -> list[float]:
    """`values` nearest `start` first: a full tie on the fit tiles goes to the setting nearest the starting one
    (a loose min_box that keeps the same boxes on 5 tiles keeps platelets on the others)."""
    return sorted(values, key=lambda v: (abs(v - start), v))


def _close_radii(samples: list[Annotated], base: FilterConfig) -> list[int]:
    shorter = _shorter_side(samples)
    if shorter is None:
        return [base.close_radius]
    return _nearest_first({round(f * shorter) for f in CLOSE_FRACTIONS} | {base.close_radius}, base.close_radius)


def _max_boxes(samples: list[Annotated]) -> list[int]:
    boxes = np.concatenate([s.boxes for s in samples])
    if not len(boxes):
        return [0]
    longer = np.percentile(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 90)
    return [0, *sorted({round(f * longer) for f in MAX_BOX_FACTORS})]


def _passing(regions: TileRegions, min_box: int, max_box: int, min_fill: float) -> np.ndarray:
    """Which of the loose `regions` pass stricter size and fill tests (a boolean per region)."""
    b = regions.boxes
    widths, heights = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (widths >= min_box) & (heights >= min_box) & (regions.fill_rates >= min_fill)
    if max_box:
        keep &= np.maximum(widths, heights) <= max_box
    return keep


def _counts(kept: np.ndarray, truth: np.ndarray, iou: float) -> tuple[int, int, int, float]:
    found, matched_iou = match_boxes(kept, truth, iou)
    return found, len(truth), len(kept), matched_iou


class _TileCounts:
    """One tile's counts (found, annotated, kept, summed IoU) under each box_scale in `scales`, for any subset
    of its loose regions. The IoU of every grown region with every annotated box is found once, and the
    matching once per distinct subset: the thresholds of a grid give the same few subsets again and again
    (one BCCD seed's search: 20 s, against 90 s matching each configuration's boxes afresh)."""

    def __init__(self, regions: TileRegions, sample: Annotated, scales: Sequence[float], iou: float) -> None:
        height, width = sample.image.shape[:2]
        self.regions, self.truth, self.threshold = regions, sample.boxes, iou
        self.ious = [iou_matrix(grow_boxes(regions.boxes, scale, height, width), sample.boxes) for scale in scales]
        self.cache: dict[bytes, np.ndarray] = {}

    def of(self, keep: np.ndarray) -> np.ndarray:
        """(scales, 4) counts of the regions where `keep` is set."""
        key = np.packbits(keep).tobytes()
        if key not in self.cache:
            rows = []
            for ious in self.ious:
                found, matched_iou = matched(ious[keep], self.threshold)
                rows.append((found, len(self.truth), int(keep.sum()), matched_iou))
            self.cache[key] = np.asarray(rows, dtype=np.float64)
        return self.cache[key]


class GridConfigs(Sequence[FilterConfig]):
    """A search's configurations, the starting one first, each made when asked for from its closed mask's
    settings and its thresholds (making all 300,000 up front took 12 s of the search)."""

    def __init__(self, start: FilterConfig) -> None:
        self.masks = [start]
        self.made: list[tuple[int, tuple[float, int, int, float] | None]] = [(0, None)]

    def add_mask(self, settings: FilterConfig) -> int:
        """A closed mask's settings (thresholds aside); returns its number."""
        self.masks.append(settings)
        return len(self.masks) - 1

    def add(self, mask: int, thresholds: tuple[float, int, int, float]) -> None:
        """A configuration: closed mask `mask` with (min_fill, min_box, max_box, box_scale)."""
        self.made.append((mask, thresholds))

    def __len__(self) -> int:
        return len(self.made)

    def __getitem__(self, index):  # type: ignore[override]  # ints and slices, as a list's
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        mask, thresholds = self.made[index]
        if thresholds is None:
            return self.masks[mask]
        min_fill, min_box, max_box, box_scale = thresholds
        return dataclasses.replace(
            self.masks[mask], min_fill=min_fill, min_box=min_box, max_box=max_box, box_scale=box_scale
        )


@dataclass
class Grid:
    """Every configuration tried, the starting one first, and its counts on each tile."""

    configs: Sequence[FilterConfig]
    counts: np.ndarray  # (configs, tiles, 4): annotated boxes found, annotated boxes, boxes kept, summed IoU
    # Where each configuration lies: its closed mask, then the ranks of its min_fill, min_box, max_box and
    # box_scale among the values tried; None for one outside the grid (the starting one).
    places: list[tuple[int, ...] | None] | None = None

    @functools.cached_property
    def neighbours(self) -> np.ndarray | None:
        """(configs, 2 x axes) indices of each configuration's neighbours on the threshold axes (-1: none); found
        once per grid (seconds for 300,000 configurations), then used by every ranking."""
        if self.places is None:
            return None
        index = {place: i for i, place in enumerate(self.places) if place is not None}
        axes = max((len(place) - 1 for place in self.places if place is not None), default=0)
        found = np.full((len(self.configs), 2 * axes), -1, dtype=np.int64)
        for i, place in enumerate(self.places):
            for j, (axis, step) in enumerate(itertools.product(range(1, axes + 1), (-1, 1))):
                if place is not None:
                    found[i, j] = index.get((*place[:axis], place[axis] + step, *place[axis + 1 :]), -1)
        return found

    def best(self, objective: Objective) -> int:
        return objective.best(self.counts.sum(axis=1), self.neighbours)

    def leave_one_out(self, objective: Objective) -> Score:
        """Each tile scored under the configuration that ranks first on the other tiles, summed."""
        total, score = self.counts.sum(axis=1), np.zeros(4)
        for tile in range(self.counts.shape[1]):
            score += self.counts[objective.best(total - self.counts[:, tile], self.neighbours), tile]
        return Score.of(score)


def search(
    samples: list[Annotated],
    base: FilterConfig,
    iou: float,
    stains: Sequence[str] = STAINS,
    progress: bool | Progress = False,
) -> Grid:
    """Every configuration of the grid (see the module docstring; stain normalizations among `stains`) and its
    counts on each of `samples`; `progress` counts the normalizations."""
    times = StageTimes()
    min_boxes, max_boxes, close_radii = _min_boxes(samples, base), _max_boxes(samples), _close_radii(samples, base)
    min_fills = _nearest_first(MIN_FILLS, base.min_fill)
    references = {method: fit_stain_reference(method, [s.image for s in samples]) for method in stains}
    configs, places = GridConfigs(base), [None]
    rows = [[_counts(find_regions([s.image], base)[0].boxes, s.boxes, iou) for s in samples]]
    ranks = [
        {value: rank for rank, value in enumerate(sorted(values, key=lambda v: (v == 0, v)))}  # max_box 0: no bound
        for values in (min_fills, min_boxes, max_boxes, BOX_SCALES)
    ]
    normalizations = [(stain, normalize) for stain, normalize in NORMALIZATIONS if stain in references]
    bar = make_progress(progress, len(normalizations), "step", "calibrate: search")
    for stain, normalize in normalizations:
        bar.set_postfix_str(f"{stain}/{normalize}")
        settings = dataclasses.replace(base, stain=references[stain], normalize=normalize)
        smooth = [smoothed(s.image[None], settings, times)[0] for s in samples]
        histograms = [colour_histograms(g[0], s.boxes) for g, s in zip(smooth, samples, strict=True)]
        everything = np.sum(histograms, axis=0)
        learned = enrichment(everything)
        # each tile is masked by the table learned on the other fit tiles (see the module docstring)
        others = [enrichment(everything - h) for h in histograms] if len(samples) > 1 else [learned]
        for level in LEVELS:
            masked = dataclasses.replace(settings, cell_colours=colour_table(learned, level))
            masks = [
                colour_table_mask(g.reshape(1, -1, 3), colour_table(enriched, level)).reshape(g.shape[:3])
                for g, enriched in zip(smooth, others, strict=True)
            ]
            for radius in close_radii:
                loose = dataclasses.replace(
                    masked,
                    close_radius=radius,
                    min_box=min(min_boxes),
                    max_box=0,
                    min_fill=min(min_fills),
                    box_scale=1.0,
                )
                closed_mask = configs.add_mask(loose)  # a configuration's neighbours share its closed mask
                regions = [regions_of_masks(close_masks(m, radius), loose)[0] for m in masks]
                tiles = [_TileCounts(r, s, BOX_SCALES, iou) for r, s in zip(regions, samples, strict=True)]
                for min_fill, min_box, max_box in itertools.product(min_fills, min_boxes, max_boxes):
                    if max_box and max_box < min_box:
                        continue
                    counts = [t.of(_passing(t.regions, min_box, max_box, min_fill)) for t in tiles]
                    for k, scale in enumerate(BOX_SCALES):
                        rows.append([c[k] for c in counts])
                        thresholds = (min_fill, min_box, max_box, scale)
                        places.append((closed_mask, *(rank[v] for rank, v in zip(ranks, thresholds, strict=True))))
                        configs.add(closed_mask, thresholds)
        bar.update()
    bar.close()
    return Grid(configs, np.asarray(rows, dtype=np.float64), places)


def _warn_of_a_floor_no_false_box_meets(fitted_on: list[Annotated], objective: Objective) -> None:
    """Warn where the fit tiles hold so few boxes that one false box with all of them found (precision n / (n + 1))
    falls below `recall-at-precision`'s floor: only settings that keep no false box then meet it, and those are
    strict ones (BCCD test seed 2, 5 cells, floor 0.85: half the held-out cells found; benchmarks/README.md)."""
    boxes = sum(len(s.boxes) for s in fitted_on)
    if objective.name == "recall-at-precision" and boxes and objective.min_precision > boxes / (boxes + 1):
        log.warning(
            "the %d fit tiles hold %d annotated boxes, so precision >= %g there allows no false box and ranks only "
            "strict settings first: annotate more tiles and raise --fit, or use --objective f1",
            len(fitted_on),
            boxes,
            objective.min_precision,
        )


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
    objective: Objective = Objective(),
    stains: Sequence[str] = DEFAULT_STAINS,
    device: DeviceChoice | str = "cpu",
    progress: bool | Progress = False,
) -> dict[str, Any]:
    """Search the filter's parameters on `fit` annotated tiles for the best under `objective`, write it as a
    TOML [filter] section to `out`, and score `config.filter` (before) and the result (after) on the held-out
    tiles; with no more than `fit` annotated tiles, on all of them, the after figures leave one tile out."""
    if not 0 < iou <= 1:
        raise ValueError(f"--iou must lie in (0, 1], got {iou}")
    if fit < 1:
        raise ValueError(f"--fit must be >= 1, got {fit}")
    started = time.perf_counter()
    samples = load_annotated(input_path, annotations, labels, config, as_choice(device))
    if len(samples) < 2:
        raise ValueError(f"need at least 2 annotated tiles (found {len(samples)}): one to fit on, one to score on")
    one_out = len(samples) <= fit
    fitted_on, held_out = (samples, []) if one_out else split(samples, fit, seed)
    _warn_of_a_floor_no_false_box_meets(fitted_on, objective)
    grid = search(fitted_on, config.filter, iou, stains, progress)
    pick = grid.best(objective)
    best = grid.configs[pick]
    fit_before, fit_after = Score.of(grid.counts[0].sum(axis=0)), Score.of(grid.counts[pick].sum(axis=0))
    if one_out:
        before, after = fit_before, grid.leave_one_out(objective)
        scored = f"{len(samples)} tiles, each left out of the fit in turn"
    else:
        before, after = evaluate(held_out, config.filter, iou), evaluate(held_out, best, iou)
        scored = f"{len(held_out)} held-out tiles"
    if after.truth and not after.found:
        log.warning(
            "the calibrated config finds none of the %d annotated boxes on the %s: check that each file of boxes "
            "pairs with its tile, that the boxes are in the tile's pixels and on the cells --label names, or annotate "
            "more tiles",
            after.truth,
            scored,
        )
    changed = {k: v for k, v in to_dict(best).items() if to_dict(config.filter)[k] != v}
    comments = [
        f"activessf-engine calibrate: {len(grid.configs)} configurations tried on {len(fitted_on)} tiles "
        f"({', '.join(s.name for s in fitted_on)}), labels {sorted(labels) if labels else 'all'}, IoU >= {iou}, "
        f"objective {objective.describe()}",
        f"fit tiles (each under the colour table of the others): F1 {fit_before.f1:.3f} -> {fit_after.f1:.3f}; "
        f"{scored}: recall "
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
        "scored_by": "leave_one_tile_out" if one_out else "held_out",
        "objective": objective.describe(),
        "configurations_tried": len(grid.configs),
        "iou": iou,
        "fit": {"before": fit_before.to_json(), "after": fit_after.to_json()},
        "held_out": {"before": before.to_json(), "after": after.to_json()},
        "changed": changed,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
