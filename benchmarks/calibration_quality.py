"""How well `calibrate` carries from 5 annotated tiles to the rest: BCCD's test split, WBC boxes, IoU 0.5.

For each seed, 5 of the 72 test tiles are drawn (`calibration.split`, as `calibrate --fit 5 --seed S` does),
the grid is searched once on them (`calibration.search`), and the configuration each objective ranks first
is scored on the other 67 tiles, next to the paper's defaults ("before"). Objectives: `f1` and
`recall-at-precision P` (`--precision`, default 0.85), each ranked over the whole grid (every stain
normalization: `calibrate --stain none --stain macenko --stain reinhard`) and over its part without stain
normalization (what `calibrate` ranks by default). Wall seconds of the search are printed per seed.
`--split val` draws from BCCD's val split (87 tiles) instead: where the ranking's rules are chosen, so that
the test split's figures are not the ones a rule was tuned on; `--split train` (205 tiles) checks a rule on tiles
none was chosen on.

Run (from the repository root; CPU is enough):

    python benchmarks/calibration_quality.py --seeds 0 1 2 3 4 --json /tmp/calibration_quality.json
    python benchmarks/calibration_quality.py --split val --json /tmp/calibration_quality_val.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bccd_quality import default_data  # this folder is on sys.path when the script runs

from activessf_engine.config import EngineConfig, FilterConfig, to_dict
from activessf_engine.device import as_choice
from activessf_engine.inspect.calibration import Grid, Objective, evaluate, load_annotated, search, split


def split_list(data: Path, folder: Path, name: str = "test") -> Path:
    """A .txt list of the JPEGs of one of BCCD's splits (what `--input` takes)."""
    names = (data / "ImageSets" / "Main" / f"{name}.txt").read_text().split()
    listing = folder / f"{name}.txt"
    listing.write_text("".join(f"{data / 'JPEGImages' / name}.jpg\n" for name in names))
    return listing


def restricted(grid: Grid, keep: Callable[[FilterConfig], bool]) -> Grid:
    """The part of a grid whose configurations `keep` accepts (the starting one always): what the search would
    have ranked had it tried only those (`calibrate --stain none`, for the figures without stain normalization)."""
    rows = [i for i, config in enumerate(grid.configs) if i == 0 or keep(config)]
    places = [grid.places[i] for i in rows] if grid.places is not None else None
    return Grid([grid.configs[i] for i in rows], grid.counts[rows], places)


def measure(
    data: Path, seeds: list[int], fit: int, precision: float, iou: float, split_name: str = "test"
) -> list[dict[str, Any]]:
    config = EngineConfig()
    objectives = [Objective(), Objective("recall-at-precision", precision)]
    with tempfile.TemporaryDirectory() as folder:
        listing = split_list(data, Path(folder), split_name)
        samples = load_annotated(listing, data / "Annotations", {"WBC"}, config, as_choice("cpu"))
    rows = []
    for seed in seeds:
        fitted_on, held_out = split(samples, fit, seed)
        started = time.perf_counter()
        grid = search(fitted_on, config.filter, iou)
        searched = time.perf_counter() - started
        row: dict[str, Any] = {
            "seed": seed,
            "fit_tiles": [s.name for s in fitted_on],
            "held_out_tiles": len(held_out),
            "configurations": len(grid.configs),
            "search_seconds": round(searched, 1),
            "before": evaluate(held_out, config.filter, iou).to_json(),
        }
        grids = {"": grid, "no stain normalization, ": restricted(grid, lambda c: c.stain.method == "none")}
        for (name, part), objective in itertools.product(grids.items(), objectives):
            best = part.configs[part.best(objective)]
            row[name + objective.describe()] = {**evaluate(held_out, best, iou).to_json(), "config": to_dict(best)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "fit_tiles"}, default=str), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="BCCD (default: shared/data/bccd)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "val", "train"],
        help="BCCD split to draw from (val: rules are chosen there; train: a check on tiles no rule was chosen on)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--fit", type=int, default=5)
    parser.add_argument("--precision", type=float, default=0.85, help="the floor of recall-at-precision")
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows = measure(args.data or default_data(), args.seeds, args.fit, args.precision, args.iou, args.split)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
