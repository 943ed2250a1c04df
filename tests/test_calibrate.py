"""calibrate: the three annotation formats, the search on real tiles with boxes, the TOML that `filter` takes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw_tile

from activessf_engine.cli import main
from activessf_engine.cli.demo import SAMPLE_DATA
from activessf_engine.config import ColourTable, FilterConfig, HsvRange, load_config
from activessf_engine.filter.regions import StageTimes, smoothed
from activessf_engine.inspect import calibration, cell_colours
from activessf_engine.inspect.annotations import read_annotations

TILES, VOC = SAMPLE_DATA / "tiles" / "bccd", SAMPLE_DATA / "annotations"


def _voc_as_coco_and_csv(tmp_path: Path) -> tuple[Path, Path]:
    """The sample's VOC boxes (all labels) written as a COCO JSON and as a CSV."""
    every = read_annotations(VOC)
    wbc = read_annotations(VOC, {"WBC"})
    images, annotations, rows = [], [], []
    for i, (stem, boxes) in enumerate(sorted(every.items())):
        images.append({"id": i, "file_name": f"{stem}.jpg"})
        wanted = {tuple(b) for b in wbc[stem].tolist()}
        for x0, y0, x1, y1 in boxes.tolist():
            label = 1 if (x0, y0, x1, y1) in wanted else 2
            annotations.append({"image_id": i, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            rows.append([f"{stem}.jpg", x0, y0, x1, y1, "WBC" if label == 1 else "other"])
    coco = tmp_path / "boxes.json"
    categories = [{"id": 1, "name": "WBC"}, {"id": 2, "name": "other"}]
    coco.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    table = tmp_path / "boxes.csv"
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows([["filename", "xmin", "ymin", "xmax", "ymax", "class"], *rows])
    return coco, table


def test_voc_coco_and_csv_give_the_same_boxes(tmp_path):
    voc = read_annotations(VOC, {"WBC"})
    assert len(voc) == 16 and all(len(b) == 1 for b in voc.values())  # one WBC per sample tile
    for other in _voc_as_coco_and_csv(tmp_path):
        got = read_annotations(other, {"WBC"})
        assert got.keys() == voc.keys()
        for stem, boxes in voc.items():
            np.testing.assert_array_equal(got[stem], boxes)
    assert sum(len(b) for b in read_annotations(VOC).values()) > 16 * 5  # all labels: red cells and platelets too


def test_unknown_label_names_the_labels_found():
    with pytest.raises(ValueError, match=r"labels found: \['Platelets', 'RBC', 'WBC'\]"):
        read_annotations(VOC, {"wbc"})


def _learned_table(tiles: list[np.ndarray], boxes: list[list[list[int]]], level: float) -> ColourTable:
    """The colour table `calibrate` learns from tiles and their boxes under the default normalization."""
    import torch

    histograms = [
        cell_colours.colour_histograms(smoothed(torch.from_numpy(t)[None], FilterConfig(), StageTimes())[0][0], b)
        for t, b in zip(tiles, np.asarray(boxes), strict=True)
    ]
    return cell_colours.colour_table(cell_colours.enrichment(np.sum(histograms, axis=0)), level)


def test_a_learned_colour_table_finds_a_stain_the_hsv_ranges_miss():
    """A green cell on pink: a range that misses its hue finds nothing, the table learned from its box finds it."""
    import torch

    tile = draw_tile([("disk", 50, 60, 30)], height=120, width=160, colour=(40, 150, 60))  # OpenCV hue about 64
    sample = calibration.Annotated("green", torch.from_numpy(tile), np.array([[18, 28, 83, 93]]))
    missing = FilterConfig(purple=HsvRange((140, 179), (0, 255), (0, 255)), min_box=40)
    assert calibration.evaluate([sample], missing, 0.5).found == 0
    for level in cell_colours.LEVELS:
        table = _learned_table([tile], [[[18, 28, 83, 93]]], level)
        assert calibration.evaluate([sample], FilterConfig(cell_colours=table, min_box=40), 0.5).found == 1, level


@pytest.mark.parametrize(
    "stain",
    [(40, 150, 60), (20, 10, 35), (150, 170, 230)],  # green; a dark purple nucleus; a pale blue close to the pink
)
def test_the_table_holds_the_boxed_stain_and_not_the_background(stain):
    """A cell of one stain on pink, boxed with a margin as a person draws it: at every level the table holds the
    stain's colour (as G has it) and not the background's, though the box holds more pink than stain."""
    import torch

    from activessf_engine.kernels import colour_table_mask

    tile = draw_tile([("disk", 100, 100, 45)], height=200, width=320, colour=stain)
    smooth = smoothed(torch.from_numpy(tile)[None], FilterConfig(), StageTimes())[0][0]
    colours = torch.stack([smooth[100, 100], smooth[5, 300]])[None]  # the cell's centre, the background
    for level in cell_colours.LEVELS:
        table = _learned_table([tile], [[[50, 50, 151, 151]]], level)
        assert colour_table_mask(colours, table)[0].tolist() == [True, False], level


def test_each_fit_tile_is_scored_by_the_table_learned_on_the_others(monkeypatch):
    """Two tiles with a green cell and one with a blue cell: the blue tile's counts come from a table learned on
    the green tiles, which finds no blue cell; the table written, learned on all three, finds it. (Under
    channel_minmax both cells would become black: only the one-gain minmax is searched.)"""
    import torch

    monkeypatch.setattr(calibration, "NORMALIZATIONS", (("none", "minmax"),))
    green, blue = (40, 150, 60), (30, 60, 200)
    box = np.array([[18, 28, 83, 93]])
    samples = [
        calibration.Annotated(name, torch.from_numpy(draw_tile([("disk", 50, 60, 30)], 120, 160, colour=c)), box)
        for name, c in (("g1", green), ("g2", green), ("b", blue))
    ]
    base = FilterConfig(min_box=40)
    grid = calibration.search(samples, base, 0.5, stains=("none",))
    learned = range(1, len(grid.configs))
    assert grid.counts[learned, :2, 0].max() == 1  # a green tile's cell is found under the others' table
    assert grid.counts[learned, 2, 0].max() == 0  # never the blue tile's
    best = grid.configs[grid.best(calibration.Objective())]
    assert calibration.evaluate(samples[2:], best, 0.5).found == 1


def test_a_box_past_the_tile_edge_counts_its_part_inside():
    """Annotations may run past the tile (COCO boxes at x -1, say): the part inside the tile is what counts, as
    if the box had been clipped, not a slice that wraps round from the far edge."""
    import torch

    smooth = torch.from_numpy(draw_tile([("disk", 40, 40, 30)], height=120, width=160))
    clipped = cell_colours.colour_histograms(smooth, np.array([[0, 0, 75, 75]]))
    np.testing.assert_array_equal(cell_colours.colour_histograms(smooth, np.array([[-6, -3, 75, 75]])), clipped)
    np.testing.assert_array_equal(cell_colours.colour_histograms(smooth, np.array([[-9, -9, -1, 50]]))[0], 0)


def test_no_table_is_learned_without_pixels_inside_a_box():
    assert cell_colours.enrichment(np.zeros((2, 1 << 15))) is None
    empty = cell_colours.colour_table(None, 1.0)
    assert empty.cells and not any(empty.packed())


def test_the_search_judges_size_and_fill_as_the_filter_does():
    """The search thresholds one loose pass of regions; each (min_box, min_fill) must keep what the filter keeps
    with those settings: a 100x40 region is too small for min_box 70 there too."""
    import torch

    from activessf_engine.filter.regions import regions_of_masks

    mask = np.zeros((1, 240, 320), dtype=bool)
    mask[0, 10:50, 10:110] = True  # 100 x 40
    mask[0, 100:180, 20:100] = True  # 80 x 80
    mask[0, 60:160, 200:230] = mask[0, 130:160, 200:300] = True  # an L, box 100 x 100, fill 0.51
    loose = regions_of_masks(torch.from_numpy(mask), FilterConfig(min_box=1, min_fill=0.0))[0]
    assert len(loose.boxes) == 3
    for min_box, min_fill in ((30, 0.3), (30, 0.7), (70, 0.3), (70, 0.7), (90, 0.3)):
        filtered = regions_of_masks(torch.from_numpy(mask), FilterConfig(min_box=min_box, min_fill=min_fill))[0]
        passing = loose.boxes[calibration._passing(loose, min_box, 0, min_fill)]  # no max_box
        assert passing.tolist() == filtered.boxes.tolist(), (min_box, min_fill)


def _boxed(shorter_sides: list[float]) -> list[calibration.Annotated]:
    """One blank tile per box, each box `side` wide and taller than wide."""
    tile = torch.zeros((8, 8, 3), dtype=torch.uint8)
    return [
        calibration.Annotated(f"t{i}", tile, np.array([[0, 0, round(side), round(side) + 20]]))
        for i, side in enumerate(shorter_sides)
    ]


def test_min_box_is_tried_only_below_the_smallest_cell_expected_on_other_tiles():
    """BCCD test seed 2's 5 fit boxes: their 10th percentile (117) let the search try and keep min_box 94,
    which dropped 8 of the 66 held-out cells (the smallest were 93 px). As fractions of the lower prediction
    bound (about 70 for these), no min_box tried is above the starting 70."""
    samples = _boxed([117, 117, 217, 240, 271])
    assert 65 < calibration._smallest_side(samples) < 75
    assert max(calibration._min_boxes(samples, FilterConfig(min_box=70))) == 70
    assert calibration._smallest_side(_boxed([90])) == 90
    no_boxes = calibration.Annotated("t", torch.zeros((8, 8, 3), dtype=torch.uint8), np.zeros((0, 4), np.int64))
    assert calibration._smallest_side([no_boxes]) is None


def test_the_smallest_side_is_a_95_percent_prediction_bound():
    """Of cells drawn from the same sizes as 5 annotated ones, about 5% fall below the bound (1 in 6 fall below
    the smallest of the 5, about what their 10th percentile was)."""
    rng = np.random.default_rng(0)
    draws = np.exp(rng.normal(np.log(150), 0.25, size=(4000, 6)))
    below = [draw[5] < calibration._smallest_side(_boxed(draw[:5].tolist())) for draw in draws]
    assert 0.04 < np.mean(below) < 0.06


def test_calibrate_improves_held_out_f1_and_filter_takes_its_toml(tmp_path, capsys, monkeypatch):
    # a smaller grid keeps the test short; the full grid is what the README's BCCD figures used
    monkeypatch.setattr(calibration, "NORMALIZATIONS", (("none", "minmax"),))
    toml = tmp_path / "calibrated.toml"
    args = ["calibrate", "--input", str(TILES), "--annotations", str(VOC), "--label", "WBC", "--out", str(toml)]
    assert main([*args, "--fit", "5", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["held_out_tiles"] == 11 and len(summary["fit_tiles"]) == 5
    fit, held = summary["fit"], summary["held_out"]
    assert fit["after"]["f1"] >= fit["before"]["f1"]
    assert held["after"]["f1"] > held["before"]["f1"]  # better on tiles it did not see
    calibrated = load_config(toml).filter
    assert calibrated != FilterConfig() and set(summary["changed"]) <= set(FilterConfig.__dataclass_fields__)
    assert calibrated.cell_colours.cells and calibrated.stain.method == "none"  # no stain normalization unless asked
    assert main([*args, "--fit", "5", "--quiet"]) == 0  # the text summary names the table, not its bits
    printed = capsys.readouterr()
    changed = next(line for line in (printed.out + printed.err).splitlines() if line.startswith("changed"))
    assert "cell_colours=a table of " in changed and " of 32768 colour cells" in changed and len(changed) < 300, changed
    store = tmp_path / "store"
    assert main(["filter", "--config", str(toml), "--input", str(TILES), "--out", str(store), "--quiet"]) == 0
    assert "next: look at it" in capsys.readouterr().err


def test_recall_at_precision_ranks_recall_above_the_floor_and_f1_below_it():
    # rows: found, annotated, kept, summed IoU
    counts = np.array([[6, 10, 6, 4.0], [9, 10, 10, 6.0], [10, 10, 20, 7.0]])  # F1 .75 / .9 / .67
    assert calibration.Objective().best(counts) == 1
    assert calibration.Objective("recall-at-precision", 0.85).best(counts) == 1  # recall .9 at precision .9
    assert calibration.Objective("recall-at-precision", 0.5).best(counts) == 2  # recall 1.0 at precision .5
    assert calibration.Objective("recall-at-precision", 0.95).best(counts) == 0  # precision 1.0
    assert calibration.Objective("recall-at-precision", 1.0).best(counts[1:]) == 0  # none reaches it: best F1
    assert calibration.Objective.parse(["recall-at-precision", "0.85"]).min_precision == 0.85
    with pytest.raises(ValueError, match="recall-at-precision P"):
        calibration.Objective.parse(["recall", "2"])


def test_leave_one_out_scores_each_tile_by_the_pick_of_the_others():
    counts = np.zeros((3, 2, 4))
    counts[:, :, 1] = 1  # one annotated box per tile
    counts[1] = [[1, 1, 1, 1.0], [0, 1, 0, 0.0]]  # finds tile 0's box only
    counts[2] = [[0, 1, 0, 0.0], [1, 1, 3, 1.0]]  # finds tile 1's box only, with 2 more boxes
    grid = calibration.Grid([FilterConfig()] * 3, counts)
    assert grid.best(calibration.Objective()) == 1  # F1 1/1.5 (config 1) vs 1/2.5 (config 2)
    score = grid.leave_one_out(calibration.Objective())  # tile 0 under config 2, tile 1 under config 1
    assert (score.found, score.truth, score.kept) == (0, 2, 0)  # each pick misses the tile left out


def test_a_tie_on_the_fit_tiles_goes_to_the_configuration_amid_others_that_do_as_well():
    """Rows 1 and 2 both find every box; row 1's neighbour (one min_fill step up) finds none, row 2's (one
    step down) all: the plateau ranks row 2 first though row 1 is earlier. Places in another mask group, or two
    steps away, are not neighbours."""
    one = [1, 1, 1, 1.0]
    counts = np.array([[[0, 1, 0, 0.0]], [one], [one], [[0, 1, 0, 0.0]], [one], [[0, 1, 3, 0.0]]])
    places = [None, (1, 2, 0, 0, 0), (1, 5, 0, 0, 0), (1, 3, 0, 0, 0), (1, 4, 0, 0, 0), (2, 1, 0, 0, 0)]
    grid = calibration.Grid([FilterConfig()] * 6, counts, places)
    neighbours = grid.neighbours
    assert sorted(neighbours[1][neighbours[1] >= 0]) == [3] and sorted(neighbours[2][neighbours[2] >= 0]) == [4]
    assert (neighbours[5] == -1).all() and (neighbours[0] == -1).all()
    assert grid.best(calibration.Objective()) == 2
    assert calibration.Objective().best(counts.sum(axis=1)) == 1  # without the plateau: the earlier


def test_calibrate_on_exactly_fit_tiles_scores_by_leaving_one_tile_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(calibration, "NORMALIZATIONS", (("none", "minmax"),))
    listing = tmp_path / "five.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(TILES.glob("*.jpg"))[:5]))
    toml = tmp_path / "c.toml"
    args = ["calibrate", "--input", str(listing), "--annotations", str(VOC), "--label", "WBC", "--out", str(toml)]
    assert main([*args, "--objective", "recall-at-precision", "0.8", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # the search's progress goes to stderr, the summary alone to stdout
    assert "calibrate: search" in err and "1/1" in err
    assert summary["scored_by"] == "leave_one_tile_out" and len(summary["fit_tiles"]) == 5
    assert summary["objective"] == "recall at precision >= 0.8"
    assert summary["held_out"]["after"]["annotated"] == 5 and toml.exists()
    assert main([*args, "--objective", "recall"]) == 2
    assert "--objective must be" in capsys.readouterr().err


def test_dumps_toml_loads_back_as_the_same_config(tmp_path):
    from activessf_engine.config import EngineConfig, dumps_toml, replace_section, to_dict

    purple = {"h": [100, 150], "s": [40, 255], "v": [0, 200]}
    config = replace_section(EngineConfig(), "filter", purple=purple, min_fill=0.45)
    config = replace_section(config, "features", weights='C:\\weights "v2".pt')  # quotes and backslashes survive
    path = tmp_path / "all.toml"
    path.write_text(dumps_toml(to_dict(config)))
    assert load_config(path) == config


def _three_cells_boxed_at(folder: Path, box: str) -> list[str]:
    """Three tiles with one drawn cell each (a disk of radius 40 at (80, 120)) and a CSV with one WBC box `box`
    (x0,y0,x1,y1) on each; returns calibrate's arguments for them, all but --out."""
    from PIL import Image

    rows = ["image,x0,y0,x1,y1,label"]
    for i in range(3):
        Image.fromarray(draw_tile([("disk", 80, 120, 40)])).save(folder / f"t{i}.png")
        rows.append(f"t{i}.png,{box},WBC")
    (folder / "boxes.csv").write_text("\n".join(rows) + "\n")
    return ["calibrate", "--input", str(folder), "--annotations", str(folder / "boxes.csv"), "--label", "WBC"]


def test_a_calibration_that_finds_no_box_is_warned_about(tmp_path, caplog, monkeypatch):
    """Boxes drawn beside the cells, not on them: the calibrated config finds none, and calibrate says so and why."""
    monkeypatch.setattr(calibration, "NORMALIZATIONS", (("none", "minmax"),))
    args = _three_cells_boxed_at(tmp_path, "200,60,300,180")  # on the pink background, right of the cell
    assert main([*args, "--out", str(tmp_path / "c.toml"), "--json", "--quiet"]) == 0
    assert any("finds none of the 3 annotated boxes" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("floor", "warned"), [("0.8", True), ("0.75", False)])
def test_a_precision_floor_that_allows_no_false_box_on_the_fit_tiles_is_warned_about(
    tmp_path, caplog, monkeypatch, floor, warned
):
    """3 annotated cells: all found with one false box is precision 0.75, under a floor of 0.8 and not 0.75."""
    monkeypatch.setattr(calibration, "NORMALIZATIONS", (("none", "minmax"),))
    args = _three_cells_boxed_at(tmp_path, "40,80,120,160")  # round the cell
    objective = ["--objective", "recall-at-precision", floor]
    assert main([*args, *objective, "--out", str(tmp_path / "c.toml"), "--json", "--quiet"]) == 0
    assert any("allows no false box" in r.getMessage() for r in caplog.records) == warned
