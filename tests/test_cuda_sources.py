"""CPU checks of the CUDA sources: each compiles with nvcc as CuPy would get it, and launches split right."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from activessf_engine.kernels import cupy_source

KERNELS = {
    "pixel_kmeans": ["activessf_pixel_kmeans_assign", "activessf_pixel_kmeans_accumulate"],
    "components": ["activessf_region_stats"],
}


def test_every_source_has_its_defines_and_known_kernels() -> None:
    assert cupy_source.source_names() == sorted(KERNELS)
    assert sorted(cupy_source.DEFINES) == sorted(KERNELS)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_source_compiles_with_nvcc(name: str, tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    source = tmp_path / f"{name}.cu"
    source.write_text(cupy_source.source_text(name))
    ptx = tmp_path / f"{name}.ptx"
    result = subprocess.run(
        [nvcc, "-ptx", "-Werror", "all-warnings", str(source), "-o", str(ptx)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = ptx.read_text()
    for kernel in KERNELS[name]:
        assert f".entry {kernel}(" in text, f"{kernel} missing from the PTX of {name}.cu"
    assert "fma.rn.f32" not in text  # the distance must not be contracted (exactness)


def test_preamble_defines_every_constant() -> None:
    text = cupy_source.preamble("pixel_kmeans")
    assert "#define ACTIVESSF_FIXED_POINT 8" in text
    assert "#define ACTIVESSF_MAX_CLUSTERS 32" in text


def test_unknown_source_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown CUDA source 'nope'; valid: \['components', 'pixel_kmeans'\]"):
        cupy_source.source_text("nope")


def _covered(windows: list[tuple[int, int, int, int]], batch: int, n: int) -> list[tuple[int, int]]:
    return [(b, p) for b0, b1, p0, p1 in windows for b in range(b0, b1) for p in range(p0, p1)]


@pytest.mark.parametrize(
    ("batch", "n", "per_item", "limit", "max_images"),
    [
        (5, 7, 3, 1 << 31, 65535),  # everything in one launch
        (5, 7, 3, 64, 65535),  # 3 images per launch (63 elements)
        (5, 7, 3, 63, 65535),  # 2 images per launch: 63 is not below the limit
        (7, 2, 3, 1 << 31, 3),  # the grid-y limit alone splits
        (3, 50, 3, 40, 65535),  # one image is too big: ranges of 13 items
        (2, 39, 1, 40, 65535),  # one image just fits
        (2, 40, 1, 40, 65535),  # one image just does not fit
        (0, 9, 3, 64, 65535),  # empty batch
        (3, 0, 3, 64, 65535),  # empty images
    ],
)
def test_launch_windows_cover_everything_once_below_the_limits(
    monkeypatch: pytest.MonkeyPatch, batch: int, n: int, per_item: int, limit: int, max_images: int
) -> None:
    monkeypatch.setattr(cupy_source, "LAUNCH_ELEMENT_LIMIT", limit)
    monkeypatch.setattr(cupy_source, "MAX_GRID_Y", max_images)
    windows = cupy_source.launch_windows(batch, n, per_item)
    assert _covered(windows, batch, n) == [(b, p) for b in range(batch) for p in range(n)]
    for b0, b1, p0, p1 in windows:
        assert (b1 - b0) * (p1 - p0) * per_item < limit
        assert 1 <= b1 - b0 <= max_images
        assert (p0, p1) == (0, n) or b1 - b0 == 1  # contiguous in a C-ordered array


def test_launch_windows_reject_a_limit_below_one_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cupy_source, "LAUNCH_ELEMENT_LIMIT", 3)
    with pytest.raises(ValueError, match="below one item"):
        cupy_source.launch_windows(1, 10, 3)
