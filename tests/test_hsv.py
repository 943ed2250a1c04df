"""HSV in OpenCV's 8-bit units: identical to cv2.cvtColor on every 8-bit colour, and the range masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import DEEP_BLUE, PURPLE, RED_CELL

from activessf_engine.config import FilterConfig, HsvRange
from activessf_engine.kernels.hsv import hsv_mask, hsv_opencv, in_hsv_ranges

DEFAULT = FilterConfig()


def hsv_of(*colours: tuple[int, int, int]) -> list[list[int]]:
    rgb = torch.tensor(colours, dtype=torch.uint8).T[:, None, :]  # (3, 1, n)
    return hsv_opencv(rgb)[:, 0, :].T.tolist()


def every_colour() -> np.ndarray:
    """All 2^24 8-bit RGB colours as a (4096, 4096, 3) uint8 image."""
    code = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([code >> 16, (code >> 8) & 255, code & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)


def test_every_colour_equals_opencv() -> None:
    rgb = every_colour()
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    got = hsv_opencv(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    differ = np.argwhere((got != expected).any(-1))
    assert len(differ) == 0, [(rgb[y, x].tolist(), expected[y, x].tolist(), got[y, x].tolist()) for y, x in differ[:5]]


@pytest.mark.parametrize(
    "ranges",
    [
        [DEFAULT.purple, DEFAULT.deep_blue],
        [HsvRange(h=(170, 179), s=(5, 10), v=(3, 250))],
        [HsvRange(h=(0, 179), s=(0, 255), v=(0, 255))],
        [],
    ],
)
def test_the_cpu_mask_kernel_equals_the_ranges_of_hsv_opencv_on_every_colour(ranges: list[HsvRange]) -> None:
    pixels = torch.from_numpy(every_colour()).reshape(1, -1, 3)
    want = in_hsv_ranges(hsv_opencv(pixels.permute(0, 2, 1)[..., None]), ranges)[..., 0]
    got = hsv_mask(pixels, ranges)
    assert got.dtype == torch.bool and got.shape == (1, 1 << 24)
    assert torch.equal(got, want), int((got != want).sum())


def test_on_the_purple_edge_that_float_hsv_got_wrong_on_cuda() -> None:
    # 281 degrees = 140.5 OpenCV units: Kornia's float HSV gave 140 on the CPU and 141 on CUDA; OpenCV
    # rounds half up to 141, just outside the purple range (H <= 140), on every device
    assert hsv_of((41, 0, 60)) == [[141, 255, 60]]
    hsv = torch.tensor([[141, 255, 60]], dtype=torch.int32).T[:, None, :]
    assert in_hsv_ranges(hsv, [DEFAULT.purple]).tolist() == [[False]]


def test_rejects_what_is_not_8_bit_rgb() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        hsv_opencv(torch.zeros((3, 2, 2), dtype=torch.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        hsv_opencv(torch.zeros((4, 2, 2), dtype=torch.uint8))


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        # V = max, S = round(255 (V - min) / V), H = round(hue_degrees / 2), hand-computed
        ((255, 0, 0), (0, 255, 255)),
        ((0, 0, 255), (120, 255, 255)),
        ((0, 255, 0), (60, 255, 255)),
        ((128, 0, 128), (150, 255, 128)),  # 300 degrees
        ((255, 128, 0), (15, 255, 255)),  # 60 * 128 / 255 = 30.1 degrees
        ((0, 170, 255), (100, 255, 255)),  # 240 - 60 * 170 / 255 = 200 degrees
        ((200, 80, 90), (178, 153, 200)),  # 355 degrees -> 177.5 -> 178 (cv2 gives 178 too); S = 255 * 120 / 200
        ((255, 255, 255), (0, 0, 255)),
        ((0, 0, 0), (0, 0, 0)),
        ((255, 0, 1), (0, 255, 255)),  # 359.8 degrees wraps to 0, never 180
    ],
)
def test_hsv_opencv_known_values(rgb, expected):
    assert hsv_of(rgb) == [list(expected)]


def test_synthetic_colours_fall_where_the_tests_assume():
    # PURPLE after the tile's min-max stretch (low 40, high 235 on a PINK tile)
    stretched = tuple(round((v - 40) * 255 / 195) for v in PURPLE)
    assert stretched == (65, 0, 144)
    purple, pink, blue, red = hsv_of(stretched, (255, 209, 222), DEEP_BLUE, RED_CELL)
    hsv = torch.tensor([purple, pink, blue, red], dtype=torch.int32).T[:, None, :]
    assert in_hsv_ranges(hsv, [DEFAULT.purple])[0].tolist() == [True, False, True, False]
    assert in_hsv_ranges(hsv, [DEFAULT.deep_blue])[0].tolist() == [False, False, True, False]


def test_in_hsv_ranges_bounds_are_inclusive():
    r = HsvRange(h=(30, 140), s=(100, 255), v=(10, 200))
    values = [
        (30, 100, 10, True),
        (140, 255, 200, True),
        (29, 150, 100, False),
        (141, 150, 100, False),
        (90, 99, 100, False),
        (90, 100, 9, False),
        (90, 100, 201, False),
    ]
    hsv = torch.tensor([v[:3] for v in values], dtype=torch.int32).T[:, None, :]
    assert in_hsv_ranges(hsv, [r])[0].tolist() == [v[3] for v in values]
    other = HsvRange(h=(0, 10), s=(0, 255), v=(0, 255))
    assert in_hsv_ranges(hsv, [r, other])[0].tolist() == [v[3] for v in values]  # OR: none has H <= 10
    assert in_hsv_ranges(hsv, [])[0].tolist() == [False] * len(values)
