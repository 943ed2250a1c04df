"""Cell Region Filtering (section II-B) on tiles with known answers, and on the bundled BCCD tiles."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from conftest import DEEP_BLUE, PINK, RED_CELL, draw_tile
from PIL import Image

from activessf_engine.config import FilterConfig, HsvRange
from activessf_engine.filter.regions import find_regions

DEFAULT = FilterConfig()


def regions(tile: np.ndarray, config: FilterConfig = DEFAULT, keep_masks: bool = False):
    return find_regions([torch.from_numpy(tile)], config, keep_masks=keep_masks)[0]


def mask_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


# --- known regions ----------------------------------------------------------------------------------


def test_disk_found_with_its_box_and_fill_rate():
    cx, cy, r = 160, 120, 50
    found = regions(draw_tile([("disk", cx, cy, r)]), keep_masks=True)
    assert len(found.boxes) == 1
    box = found.boxes[0].tolist()
    assert box == mask_box(found.mask.numpy())  # the box is the mask's box, x1 and y1 exclusive
    analytic = [cx - r, cy - r, cx + r + 1, cy + r + 1]
    assert np.abs(np.array(box) - analytic).max() <= 2, (box, analytic)
    assert found.fill_rates[0] == pytest.approx(math.pi / 4, abs=0.03)
    assert found.areas[0] == int(found.mask.numpy().sum())
    assert found.fill_rates[0] == pytest.approx(found.areas[0] / ((box[2] - box[0]) * (box[3] - box[1])))


def test_blurred_hsv_source_gives_the_same_box():
    tile = draw_tile([("disk", 160, 120, 50)])
    quantized = regions(tile).boxes.tolist()
    blurred = regions(tile, FilterConfig(hsv_source="blurred")).boxes.tolist()
    assert len(quantized) == 1
    assert blurred == quantized


def test_a_mask_read_from_g_runs_no_kmeans():
    """The blurred source and a colour table read G: no K-means is run for them, and no palette of G' is kept."""
    from conftest import hsv_range_table

    from activessf_engine.filter.regions import StageTimes

    tile = torch.from_numpy(draw_tile([("disk", 160, 120, 50)]))
    for config, runs_kmeans in (
        (DEFAULT, True),
        (FilterConfig(hsv_source="blurred"), False),
        (FilterConfig(cell_colours=hsv_range_table()), False),
    ):
        times = StageTimes()
        found = find_regions([tile], config, times)[0]
        assert len(found.boxes) == 1
        assert ("kmeans_fit" in times.seconds) is runs_kmeans and (found.palette is not None) is runs_kmeans


@pytest.mark.parametrize(("side", "kept"), [(69, False), (70, True), (72, True)])
def test_min_box_threshold_on_squares(side, kept):
    tile = draw_tile([("rect", 100, 80, 100 + side, 80 + side)])
    found = regions(tile, keep_masks=True)
    assert mask_box(found.mask.numpy()) == [100, 80, 100 + side, 80 + side]  # blur does not grow a square
    assert (len(found.boxes) == 1) is kept
    if kept:
        assert found.boxes[0].tolist() == [100, 80, 100 + side, 80 + side]


@pytest.mark.parametrize(("side", "kept"), [(69, False), (70, True)])
def test_min_box_threshold_without_blur(side, kept):
    tile = draw_tile([("rect", 100, 80, 100 + side, 80 + side)])
    assert (len(regions(tile, FilterConfig(blur_kernel=1)).boxes) == 1) is kept


@pytest.mark.parametrize(
    ("width", "height", "kept"),
    [(100, 40, False), (40, 100, False), (100, 69, False), (100, 70, True), (70, 100, True)],
)
def test_min_box_holds_on_both_sides(width, height, kept):
    """A long thin region (100x40 with min_box 70) is too small: both sides must reach min_box, not either."""
    found = regions(draw_tile([("rect", 100, 80, 100 + width, 80 + height)]), FilterConfig(min_box=70))
    assert found.found == 1
    assert (found.too_small, len(found.boxes)) == ((0, 1) if kept else (1, 0))


def test_l_shape_rejected_by_fill_rate_then_accepted_with_lower_min_fill():
    mask = np.zeros((240, 320), dtype=bool)
    mask[60:160, 100:130] = True  # vertical arm 30 x 100
    mask[130:160, 100:200] = True  # horizontal arm 100 x 30: box 100 x 100, fill 0.51
    tile = draw_tile([("mask", mask)])
    assert len(regions(tile).boxes) == 0
    found = regions(tile, FilterConfig(min_fill=0.3))
    assert len(found.boxes) == 1
    assert np.abs(found.boxes[0] - np.array([100, 60, 200, 160])).max() <= 1
    assert found.fill_rates[0] == pytest.approx(mask.sum() / 100**2, abs=0.03)


def test_deep_blue_disk_found_and_masks_are_ored():
    tile = draw_tile([("disk", 160, 120, 50)], colour=DEEP_BLUE)
    assert len(regions(tile).boxes) == 1
    # The default deep-blue range is contained in the purple range; narrow purple to show the OR.
    not_purple = HsvRange(h=(120, 140), s=(100, 255), v=(0, 255))
    assert len(regions(tile, FilterConfig(purple=not_purple)).boxes) == 1
    elsewhere = HsvRange(h=(10, 20), s=(150, 255), v=(50, 255))
    assert len(regions(tile, FilterConfig(purple=not_purple, deep_blue=elsewhere)).boxes) == 0


def test_red_cell_disk_not_found():
    assert len(regions(draw_tile([("disk", 160, 120, 50)], colour=RED_CELL)).boxes) == 0


def test_plain_background_finds_nothing():
    assert len(regions(draw_tile([])).boxes) == 0


def test_diagonal_neighbours_join_with_8_connectivity_only():
    tile = draw_tile([("rect", 40, 40, 140, 140), ("rect", 140, 140, 240, 240)])  # touch at one corner
    joined = regions(tile, FilterConfig(min_fill=0.3))  # the union fills half its 200 x 200 box
    assert joined.boxes.tolist() == [[40, 40, 240, 240]]
    split = regions(tile, FilterConfig(connectivity=4))
    assert split.boxes.tolist() == [[40, 40, 140, 140], [140, 140, 240, 240]]


def test_tiles_of_different_shapes_in_one_call():
    a = draw_tile([("disk", 160, 120, 50)])
    b = draw_tile([("rect", 10, 10, 90, 90)], height=200, width=200)
    c = draw_tile([])
    found = find_regions([torch.from_numpy(t) for t in (a, b, c, a)], DEFAULT)
    assert [len(f.boxes) for f in found] == [1, 1, 0, 1]
    assert found[0].boxes.tolist() == found[3].boxes.tolist()
    assert found[1].boxes.tolist() == [[10, 10, 90, 90]]


def test_background_colour_does_not_matter_much():
    tile = draw_tile([("disk", 160, 120, 50)], background=tuple(v - 10 for v in PINK))
    assert len(regions(tile).boxes) == 1


# --- BCCD ---------------------------------------------------------------------------------------------


def _load(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB")))


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _wbc_boxes(xml_path) -> list[list[int]]:
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        if obj.findtext("name") == "WBC":
            bb = obj.find("bndbox")
            boxes.append([int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")])
    return boxes


@pytest.fixture(scope="module")
def bccd_tiles():
    from conftest import BCCD

    paths = sorted(BCCD.glob("*.jpg"))
    assert len(paths) == 6
    return paths, [_load(p) for p in paths]


def test_kmeans_sample_matches_fitting_on_every_pixel(bccd_tiles):
    """The issue's justification of sampling: fitting the 20 colours on 8192 sampled pixels (the default)
    instead of on all 307,200 pixels of a 640x480 tile keeps the same regions.

    The statistic and bound are the ones the whole data set supports: on all 364 BCCD tiles (10 Lloyd steps)
    112 boxes sampled, 108 on every pixel, 95 matched at IoU >= 0.5, i.e. 85-88% of either side. Here, on
    every bundled tile (no tile chosen for agreeing), at least 80% of the boxes of either run must have a
    partner of IoU >= 0.5 in the other.
    """
    _, tiles = bccd_tiles
    sampled = find_regions(tiles, DEFAULT)
    full = find_regions(tiles, FilterConfig(kmeans_sample=0))
    a = [b.tolist() for r in sampled for b in r.boxes]
    b = [b.tolist() for r in full for b in r.boxes]
    assert len(a) >= 4 and len(b) >= 4
    for ours, theirs in ((a, b), (b, a)):
        matched = sum(any(_iou(x, y) >= 0.5 for y in theirs) for x in ours)
        assert matched >= 0.8 * len(ours), (a, b)


def test_bccd_regions_find_the_annotated_white_cells_and_little_else(bccd_tiles):
    """With the paper's defaults each of the four annotated white cells is found at IoU >= 0.5 (measured 0.57 to
    0.70: the mask holds the nucleus, the annotation the whole cell), and at most one region of the five is
    not on an annotated white cell (BloodImage_00135: a cell cut by the tile's edge, not annotated)."""
    paths, tiles = bccd_tiles
    found = find_regions(tiles, DEFAULT)
    annotated, matched, boxes, on_a_cell = 0, 0, 0, 0
    for path, result in zip(paths, found, strict=True):
        wbc = _wbc_boxes(path.parent / "Annotations" / (path.stem + ".xml"))
        annotated += len(wbc)
        matched += sum(any(_iou(box, w) >= 0.5 for box in result.boxes.tolist()) for w in wbc)
        for box in result.boxes.tolist():
            assert 0 <= box[0] < box[2] <= 640 and 0 <= box[1] < box[3] <= 480
            boxes += 1
            on_a_cell += any(_iou(box, w) >= 0.3 for w in wbc)
    assert annotated == 4 and matched == 4
    assert boxes - on_a_cell <= 1


def test_empty_cluster_does_not_flood_the_background():
    tile = draw_tile([("rect", 100, 60, 180, 140)])
    tile[100, 140] = (0, 255, 0)  # one odd pixel: no stretch by min-max, and a few mixed colours
    found = regions(tile, FilterConfig(kmeans_sample=2048))
    assert found.boxes.tolist() == [[100, 60, 180, 140]]  # got [[0, 0, 320, 240], [100, 60, 180, 140]]


def test_rejection_counts_say_why_each_region_went():
    mask = np.zeros((240, 320), dtype=bool)
    mask[20:120, 200:230] = True  # an L: box 100 x 100, fill 0.51 -> rejected for fill rate
    mask[90:120, 200:300] = True
    tile = draw_tile([("mask", mask), ("disk", 80, 120, 50), ("rect", 20, 200, 40, 220), ("rect", 250, 180, 300, 230)])
    found = regions(tile)
    # four components: the disk passes, the L fails the fill test, the 20x20 and 50x50 squares the size test
    assert (found.found, found.too_small, found.low_fill, len(found.boxes)) == (4, 2, 1, 1)
    looser = regions(tile, FilterConfig(min_box=50, min_fill=0.3))
    assert (looser.found, looser.too_small, looser.low_fill, len(looser.boxes)) == (4, 1, 0, 3)
    empty = regions(draw_tile([]))
    assert (empty.found, empty.too_small, empty.low_fill) == (0, 0, 0)


def test_max_box_drops_regions_longer_than_it_and_refuses_a_resume():
    import json

    from activessf_engine.config import EngineConfig, output_differences, replace_section, to_dict

    tile = draw_tile([("rect", 20, 20, 100, 100), ("rect", 150, 40, 290, 200)])  # 80 x 80 and 140 x 160
    assert len(regions(tile).boxes) == 2
    bounded = regions(tile, FilterConfig(max_box=150))
    assert bounded.boxes.tolist() == [[20, 20, 100, 100]] and bounded.too_small == 1  # the size test rejects it
    stored = json.loads(json.dumps(to_dict(EngineConfig())))  # as a store keeps it
    assert output_differences(stored, to_dict(replace_section(EngineConfig(), "filter", max_box=150))) == [
        "filter.max_box 0 -> 150"
    ]
    with pytest.raises(ValueError, match="max_box"):
        FilterConfig(min_box=70, max_box=50)


def test_a_store_begun_before_a_field_existed_resumes_under_its_default_only():
    """A store made before filter.close_radius and filter.stain existed lacks them: the defaults (what the engine
    did then) resume it, another value does not."""
    import json

    from activessf_engine.config import EngineConfig, output_differences, replace_section, to_dict

    stored = json.loads(json.dumps(to_dict(EngineConfig())))
    for name in ("close_radius", "stain"):
        del stored["filter"][name]
    assert output_differences(stored, to_dict(EngineConfig())) == []
    closed = to_dict(replace_section(EngineConfig(), "filter", close_radius=4))
    assert output_differences(stored, closed) == ["filter.close_radius 0 -> 4"]
    from activessf_engine.select.framing import framing_differences  # prototypes of then, candidates of now

    as_stored = json.loads(json.dumps(to_dict(EngineConfig())))
    assert framing_differences({"filter": stored["filter"]}, as_stored) == []
    assert framing_differences({"filter": stored["filter"]}, json.loads(json.dumps(closed))) == [
        "filter.close_radius 0 (prototypes) vs 4 (candidates)"
    ]


def test_box_scale_grows_kept_boxes_about_their_centre_within_the_tile():
    tile = draw_tile([("rect", 100, 80, 180, 160), ("rect", 230, 150, 310, 230)])  # 80 x 80 each, one near a corner
    assert regions(tile).boxes.tolist() == [[100, 80, 180, 160], [230, 150, 310, 230]]
    grown = regions(tile, FilterConfig(box_scale=1.5))
    assert grown.boxes.tolist() == [[80, 60, 200, 180], [210, 130, 320, 240]]  # the second clipped at 320 x 240
    assert grown.fill_rates.tolist() == regions(tile).fill_rates.tolist()  # the tests judge the region's own box


def test_sharpness_is_opencv_variance_of_laplacian_and_min_sharpness_drops_blurred_tiles(tmp_path, capsys):
    import json

    import cv2
    from PIL import Image

    from activessf_engine.cli import main

    sharp = draw_tile([("disk", 80, 120, 50), ("rect", 180, 60, 260, 140)])
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4)
    for tile in (sharp, blurred):
        grey = cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY)
        assert regions(tile).sharpness == pytest.approx(cv2.Laplacian(grey, cv2.CV_64F).var(), rel=1e-9)
    threshold = (regions(sharp).sharpness + regions(blurred).sharpness) / 2
    strict = FilterConfig(min_sharpness=threshold)
    assert len(regions(sharp, strict).boxes) == 2 and not regions(sharp, strict).out_of_focus
    assert len(regions(blurred).boxes) == 2  # found when focus is not asked about
    dropped = regions(blurred, strict)
    assert len(dropped.boxes) == 0 and dropped.out_of_focus and dropped.found == 2
    Image.fromarray(sharp).save(tmp_path / "sharp.png")
    Image.fromarray(blurred).save(tmp_path / "blurred.png")
    assert main(["filter", "--input", str(tmp_path), "--limit", "2", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["out_of_focus"] == []
    assert main(["filter", "--input", str(tmp_path), "--limit", "2", "--min-sharpness", str(threshold), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out_of_focus"] == ["blurred.png"]


# --- closing the mask (close_radius) -----------------------------------------------------------------


@pytest.mark.parametrize("radius", [1, 2, 5, 9, 40])  # 40: a window wider than the mask
def test_close_masks_is_scipys_closing_with_the_outside_set_for_the_erosion(radius):
    import scipy.ndimage as ndi

    from activessf_engine.kernels import close_masks
    from activessf_engine.kernels.morphology import reference_close_masks

    masks = np.random.default_rng(radius).random((3, 41, 57)) > 0.8
    square = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    expected = [ndi.binary_erosion(ndi.binary_dilation(m, square), square, border_value=1) for m in masks]
    closed = close_masks(torch.from_numpy(masks), radius)  # the numba kernel
    assert closed.dtype == torch.bool and np.array_equal(closed.numpy(), np.stack(expected))
    assert np.array_equal(reference_close_masks(torch.from_numpy(masks), radius).numpy(), np.stack(expected))  # CUDA's
    assert close_masks(torch.from_numpy(masks), 0).numpy().tolist() == masks.tolist()


def test_closing_joins_the_lobes_of_one_nucleus_into_one_box():
    """Three lobes 6 px apart, each under min_box: no region passes unclosed; closed by radius 4 they are one
    region whose box holds all three (the box of the cell an annotator draws)."""
    lobes = [("disk", 120, 120, 16), ("disk", 158, 120, 16), ("disk", 139, 152, 16)]
    config = FilterConfig(min_box=60, min_fill=0.5)
    assert len(regions(draw_tile(lobes), config).boxes) == 0
    closed = regions(draw_tile(lobes), FilterConfig(min_box=60, min_fill=0.5, close_radius=4))
    assert len(closed.boxes) == 1
    x0, y0, x1, y1 = closed.boxes[0].tolist()
    assert abs(x0 - 104) <= 2 and abs(x1 - 175) <= 2 and abs(y0 - 104) <= 2 and abs(y1 - 169) <= 2
