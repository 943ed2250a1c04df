"""Clean crops: a square window moved inside the tile, padding only where the tile is too small, recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import draw_tile, write_image

from activessf_engine.config import CropConfig
from activessf_engine.filter.crops import crop_box, cut_rois, fit_to_square, resize_all
from activessf_engine.filter.run import run_filter
from activessf_engine.store.reader import RoiStore

W, H = 320, 240


def _ramp_tile() -> torch.Tensor:
    """A tile with no black pixel (values 20-255), so any black row in a ROI is padding."""
    yy, xx = np.mgrid[:H, :W]
    tile = np.stack([20 + xx * 235 // W, 20 + yy * 235 // H, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    return torch.from_numpy(tile)


@pytest.mark.parametrize(
    "box",
    [(0, 0, 40, 30), (290, 200, 320, 240), (5, 100, 60, 180), (250, 0, 320, 20), (100, 100, 140, 120)],
)
def test_windows_near_edges_are_square_inside_the_tile_and_hold_the_box(box) -> None:
    x0, y0, x1, y1 = crop_box(box, W, H, margin=0.1)
    longer = max(box[2] - box[0], box[3] - box[1])
    assert x1 - x0 == y1 - y0 == longer + 2 * round(0.1 * longer)  # the full window, margin included
    assert 0 <= x0 <= box[0] and box[2] <= x1 <= W and 0 <= y0 <= box[1] and box[3] <= y1 <= H


def test_margin_gives_way_before_padding() -> None:
    box = (50, 10, 150, 230)  # 220 high: with its margin 264 > H, but 220 <= H
    x0, y0, x1, y1 = crop_box(box, W, H, margin=0.1)
    assert (y0, y1) == (0, H) and x1 - x0 == H and x0 <= 50 and x1 >= 150
    rois, _, padding = cut_rois(_ramp_tile(), np.array([box]), CropConfig(size=64))
    assert padding.tolist() == [[0, 0, 0, 0]] and rois.min() > 0


def test_a_box_longer_than_the_tile_is_padded_only_across() -> None:
    box = (0, 60, W, 140)  # 320 wide in a 240-high tile: no square window fits
    rois, cut, padding = cut_rois(_ramp_tile(), np.array([box]), CropConfig(size=64))
    assert cut.tolist() == [[0, 0, W, H]]
    assert padding.tolist() == [[0, 8, 0, 8]]  # 320x240 -> 64x48, 8 rows above and below
    roi = rois[0]
    assert (roi[:8] == 0).all() and (roi[-8:] == 0).all() and roi[8:-8].min() > 0
    edge, _, edge_pad = cut_rois(_ramp_tile(), np.array([box]), CropConfig(size=64, pad="edge"))
    assert edge_pad.tolist() == padding.tolist()
    assert np.array_equal(edge[0][:8], np.repeat(edge[0][8:9], 8, axis=0))


def test_roi_is_the_window_resized() -> None:
    tile = _ramp_tile()
    rois, cut, _ = cut_rois(tile, np.array([[10, 10, 90, 60]]), CropConfig(size=48))
    x0, y0, x1, y1 = cut[0]
    window = tile[y0:y1, x0:x1].permute(2, 0, 1)[None].float()
    want = torch.nn.functional.interpolate(window, size=(48, 48), mode="bilinear", antialias=True)
    assert np.abs(rois[0].astype(int) - want[0].permute(1, 2, 0).round().numpy().astype(int)).max() <= 1
    same, padding = fit_to_square(tile[y0:y1, x0:x1], 48)
    assert padding == (0, 0, 0, 0) and np.array_equal(same.numpy(), rois[0])


def test_filtered_rois_near_tile_edges_carry_no_padding(tmp_path, small_config) -> None:
    shapes = [("disk", 30, 30, 45), ("rect", 240, 165, 320, 240), ("disk", 160, 120, 45)]
    write_image(draw_tile(shapes), tmp_path / "in" / "edges.png")
    run_filter(tmp_path / "in", tmp_path / "store", small_config)
    store = RoiStore(tmp_path / "store")
    cols = store.columns()
    assert len(store) == 3
    for i in range(len(store)):
        x0, y0, x1, y1 = cols["crop_box"][i].tolist()
        assert x1 - x0 == y1 - y0 and x0 >= 0 and x1 <= W and y0 >= 0 and y1 <= H
        assert cols["pad"][i].tolist() == [0, 0, 0, 0]
        roi = store.roi(i)
        for border in (roi[0], roi[-1], roi[:, 0], roi[:, -1]):
            assert border.max() > 0  # no black bar on any side


@pytest.mark.parametrize("pad", ["constant", "edge"])
def test_batched_resize_is_within_one_level_of_each_window_resized(pad) -> None:
    """`resize_all` (CUDA's path, run here on the CPU) against `fit_to_square` per window (the CPU's path):
    the same padding, and pixels at most one level apart (torch's uint8 kernel rounds after each pass)."""
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.integers(0, 256, (1, 3, H, W)).astype(np.float32))
    tile = torch.nn.functional.avg_pool2d(noise, 5, 1, 2)[0].permute(1, 2, 0).round().to(torch.uint8).contiguous()
    starts = rng.integers(0, (W - 8, H - 8), (30, 2))
    boxes = np.concatenate([starts, starts + rng.integers(4, 200, (30, 2))], axis=1).clip(0, (W, H, W, H))
    boxes = np.concatenate([boxes, [[0, 60, W, 140], [100, 0, 140, H], [5, 5, 9, 9]]])  # padded; full height; tiny
    config = CropConfig(size=64, pad=pad, pad_value=7)
    windows = np.array([crop_box(tuple(map(int, box)), W, H, config.margin) for box in boxes])
    batched, padding = resize_all(tile, windows, config)
    for i, (x0, y0, x1, y1) in enumerate(windows):
        want, want_padding = fit_to_square(tile[y0:y1, x0:x1], 64, pad, 7)
        assert tuple(padding[i]) == want_padding
        assert (batched[i].int() - want.int()).abs().max() <= 1, i
    assert padding[-3, 1] > 0  # the padded case is covered
