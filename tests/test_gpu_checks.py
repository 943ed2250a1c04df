"""The checks of the GPU tests, run on the CPU: each passes what the GPU may rightly differ by and fails the
plausible bug it is there for (a truncating resize, a decoder off by one row, a near-tie assignment bug)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BCCD, assert_resized_alike, assert_same_assignment, bccd_crops, profile_shift
from PIL import Image

from activessf_engine.filter.crops import fit_to_square
from activessf_engine.select.nearest import nearest_prototype


def float_resize(image: torch.Tensor, side: int, rounding: str = "round") -> torch.Tensor:
    """CUDA's crop resize (engine/filter/crops.py: through float32, rounded), run on the CPU; `rounding="floor"`
    is the bug of dropping the rounding (a uint8 cast truncates)."""
    chw = image.permute(2, 0, 1)[None].float()
    out = F.interpolate(chw, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    out = out.round() if rounding == "round" else out.floor()
    return out.clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)


@pytest.mark.parametrize("side", [64, 100])
def test_resize_check_passes_the_float_path_and_fails_truncation(side: int) -> None:
    crops = [torch.from_numpy(c) for c in bccd_crops()[:12]]
    cpu = np.stack([fit_to_square(c, side)[0].numpy() for c in crops])  # the CPU's uint8 resize
    assert_resized_alike(np.stack([float_resize(c, side).numpy() for c in crops]), cpu)
    truncated = np.stack([float_resize(c, side, "floor").numpy() for c in crops])
    largest = np.abs(truncated.astype(int) - cpu).max()
    assert largest <= 1 or side != 64  # at 64 px truncation passes a bound on the largest difference alone
    with pytest.raises(AssertionError, match="mean difference" if largest <= 1 else "largest difference"):
        assert_resized_alike(truncated, cpu)


def test_shift_check_finds_a_one_row_shift_that_the_tolerance_check_passes() -> None:
    for path in sorted(BCCD.glob("*.jpg")):
        tile = np.asarray(Image.open(path).convert("RGB"))
        noisy = np.clip(tile + np.random.default_rng(0).integers(-3, 4, tile.shape), 0, 255)  # as decoders differ
        assert profile_shift(noisy, tile) == (0, 0)
        shifted = np.concatenate([tile[:1], tile[:-1]])  # one row down, the first row repeated
        difference = np.abs(shifted.astype(int) - tile)
        # what the decoder test bounded alone: a mean under 2, 99% within 8 levels, none beyond 64
        assert difference.mean() < 2.0 and np.quantile(difference, 0.99) <= 8 and difference.max() <= 64
        assert profile_shift(shifted, tile) == (1, 0)
    assert profile_shift(np.ascontiguousarray(tile[:, 2:]), np.ascontiguousarray(tile[:, :-2])) == (0, -2)  # moved left


def test_assignment_check_fails_a_near_tie_bug() -> None:
    """Features within a hair of the bisector of two centres: the same computation on another device agrees
    exactly; one in float32 (a plausible GPU shortcut) sends some to the other centre."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 64)).astype(np.float32)
    midpoint, axis = (centres[0] + centres[1]) / 2, centres[1] - centres[0]
    along = rng.uniform(-1e-7, 1e-7, size=(200, 1))  # which side of the bisector, by a hair
    features = midpoint.astype(np.float64) + along * axis
    want = nearest_prototype(features, centres)
    assert_same_assignment(nearest_prototype(torch.from_numpy(features), torch.from_numpy(centres)), want)
    x, c = torch.from_numpy(features).float(), torch.from_numpy(centres)
    squared = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)
    in_float32 = squared.clamp_min(0).min(1)
    with pytest.raises(AssertionError, match="another nearest prototype"):
        assert_same_assignment((in_float32.indices.numpy(), in_float32.values.sqrt().numpy()), want)
