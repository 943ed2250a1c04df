"""Shared fixtures: synthetic tiles with known answers, image writers, a small config, the BCCD samples."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activessf_engine.config import ColourTable, EngineConfig, FilterConfig, replace_section

DATA = Path(__file__).parent / "data"
BCCD = DATA / "bccd"

# Colours of the synthetic tiles. After the default min-max normalization (one gain for all channels,
# low 40, high 235) PURPLE becomes (65, 0, 144): OpenCV HSV (134, 255, 144), inside the purple range
# H 30-140, S 100-255 (test_regions checks this through hsv_opencv). PINK stays outside both ranges.
PINK = (235, 200, 210)
PURPLE = (90, 40, 150)
# H 200 degrees -> OpenCV H 100, S 255, V 255: inside the deep-blue range (H 95-105, S 150+, V 50+).
# The deep-blue range lies wholly inside the purple range, so no colour is deep blue without being purple.
DEEP_BLUE = (0, 170, 255)
RED_CELL = (200, 80, 90)  # OpenCV HSV (178, 153, 200): in neither range

Shape = tuple  # ("disk", cx, cy, r) | ("rect", x0, y0, x1, y1) | ("mask", bool array (H, W))


def draw_tile(
    shapes: Sequence[Shape],
    height: int = 240,
    width: int = 320,
    background: tuple[int, int, int] = PINK,
    colour: tuple[int, int, int] = PURPLE,
) -> np.ndarray:
    """An (H, W, 3) uint8 tile: `background` with each shape filled in `colour` (or the shape's own colour,
    given as a last element). A disk holds the pixels with (x - cx)^2 + (y - cy)^2 <= r^2; a rect
    [x0, x1) x [y0, y1)."""
    tile = np.empty((height, width, 3), dtype=np.uint8)
    tile[:] = background
    yy, xx = np.mgrid[:height, :width]
    for shape in shapes:
        kind, *args = shape
        fill = colour
        if kind == "disk":
            if len(args) == 4:
                *args, fill = args
            cx, cy, r = args
            tile[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = fill
        elif kind == "rect":
            if len(args) == 5:
                *args, fill = args
            x0, y0, x1, y1 = args
            tile[y0:y1, x0:x1] = fill
        elif kind == "mask":
            if len(args) == 2:
                *args, fill = args
            tile[args[0]] = fill
        else:
            raise ValueError(f"unknown shape {kind!r}")
    return tile


def hsv_range_table() -> ColourTable:
    """A colour table of the cells whose middle colour the paper's HSV ranges hold: a table a filter finds BCCD's
    nuclei with."""
    import torch

    from activessf_engine.kernels import hsv_mask

    levels = torch.arange(4, 256, 8, dtype=torch.uint8)  # each cell's middle level
    middles = torch.cartesian_prod(levels, levels, levels)[None]  # R major, as the table's cells
    config = FilterConfig()
    return ColourTable.of_packed(np.packbits(hsv_mask(middles, (config.purple, config.deep_blue))[0].numpy()).tobytes())


@pytest.fixture
def make_tile() -> Callable[..., np.ndarray]:
    """The synthetic-tile factory (see `draw_tile`)."""
    return draw_tile


def write_image(array: np.ndarray, path: Path, **save_args) -> Path:
    """Write a numpy image with Pillow; the format follows the suffix (.png .jpg .tif .bmp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_args)
    return path


@pytest.fixture
def write_tile(tmp_path: Path) -> Callable[..., Path]:
    """write_tile(array, "name.png") -> path under tmp_path (sub-folders allowed)."""

    def write(array: np.ndarray, name: str, **save_args) -> Path:
        return write_image(array, tmp_path / name, **save_args)

    return write


def tile_folder(folder: Path, count: int, suffix: str = ".png") -> Path:
    """`count` synthetic tiles, each with 0-2 purple disks at positions that depend on its index."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shapes = [("disk", 60 + 7 * i, 70, 45)] if i % 3 != 2 else []
        if i % 2 == 0:
            shapes.append(("rect", 180, 100 + 3 * i, 260, 180 + 3 * i))
        write_image(draw_tile(shapes), folder / f"tile_{i:02d}{suffix}")
    return folder


@pytest.fixture
def small_config() -> EngineConfig:
    """Fast and small: K-means fitted on 2048 pixels, 2 sources per part, 64x64 ROIs, one decode thread."""
    config = EngineConfig()
    config = replace_section(config, "filter", kmeans_sample=2048)
    config = replace_section(config, "store", sources_per_part=2, rois_per_shard=4)
    config = replace_section(config, "crop", size=64)
    config = replace_section(config, "input", batch_size=4, threads=1)
    return config


@pytest.fixture
def bccd_dir() -> Path:
    """The six bundled BCCD tiles (tests/data/bccd, MIT licence, see SOURCE.md there)."""
    return BCCD


def with_filter(config: EngineConfig, **changes) -> EngineConfig:
    return dataclasses.replace(config, filter=dataclasses.replace(config.filter, **changes))


@pytest.fixture()
def needs_gpu() -> None:
    """Skip unless torch sees a GPU and CuPy runs kernels on it (the `gpu` tests)."""
    from activessf_engine import device

    ok, reason = device.cupy_usable()
    if not ok:
        pytest.skip(f"no usable GPU + CuPy: {reason}")


def store_contents(root: Path) -> list[tuple]:
    """Every ROI of a store in store order: all its columns (but the part number) and its pixel bytes."""
    from activessf_engine.store.reader import RoiStore

    store = RoiStore(root)
    cols = store.columns()
    keys = sorted(k for k in cols if k != "part")
    return [(tuple(str(cols[k][i]) for k in keys), store.roi(i).tobytes()) for i in range(len(store))]


def bccd_crops() -> np.ndarray:
    """54 real 224x224 crops of the six bundled BCCD tiles (a 3x3 grid on each 640x480 tile)."""
    tiles = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(BCCD.glob("*.jpg"))]
    return np.stack([t[y : y + 224, x : x + 224] for t in tiles for y in (0, 128, 256) for x in (0, 208, 416)])


def per_roi_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Relative error of each row of `got` against the same row of `want` (features: one row per ROI)."""
    return np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)


# Largest per-ROI relative error allowed for bf16 features against float32 ones (resnet18, BCCD crops:
# measured 0.0035 on the CPU). Wrong features sit far above it: tests/test_features.py checks that
# channels swapped, rows shuffled and the batch mean all have a median error over 3 times this bound.
BF16_FEATURE_BOUND = 1.5e-2


# --- checks of the GPU tests (tests/test_gpu_stages.py), each shown on the CPU to catch its bug (test_gpu_checks.py)


def assert_resized_alike(got: np.ndarray, want: np.ndarray) -> None:
    """ROI pixels resized another way (CUDA: through float32, rounded) against the CPU's uint8 resize: within
    one level, and off by one about as often either way and no more often than rounding makes them (the float
    path on the CPU: 10-12% of pixels, mean difference -0.007). A truncating resize is off on 44-50% of
    pixels with a mean of -0.5, which a bound on the largest difference alone lets through."""
    difference = got.astype(np.int64) - want.astype(np.int64)
    assert np.abs(difference).max() <= 1, f"largest difference {np.abs(difference).max()}"
    assert abs(difference.mean()) < 0.1, f"mean difference {difference.mean():.3f}: biased (truncated?)"
    assert (difference != 0).mean() < 0.25, f"{(difference != 0).mean():.0%} of pixels differ"


def profile_shift(got: np.ndarray, want: np.ndarray, most: int = 3) -> tuple[int, int]:
    """(rows, columns) by which `got` is shifted against `want` (two (H, W, ...) images): the shifts at which
    their row profiles and their column profiles (mean levels) correlate best, within `most` pixels."""
    best = []
    for axis in (0, 1):
        others = tuple(i for i in range(got.ndim) if i != axis)
        g, w = got.astype(np.float64).mean(axis=others), want.astype(np.float64).mean(axis=others)
        n = len(g)
        score = {
            s: np.corrcoef(g[max(s, 0) : n + min(s, 0)], w[max(-s, 0) : n + min(-s, 0)])[0, 1]
            for s in range(-most, most + 1)
        }
        best.append(max(score, key=score.get))
    return best[0], best[1]


def assert_same_assignment(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    """Two (cluster, distance) results of `nearest_prototype` on the same features: the same cluster for every
    row, near-ties included, and distances equal to float rounding."""
    np.testing.assert_array_equal(got[0], want[0], err_msg="another nearest prototype")
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)


def pytest_terminal_summary(terminalreporter) -> None:
    """Say loudly what went unchecked: CUDA sources not compiled (no nvcc), GPU tests not run (no GPU)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if any("test_source_compiles_with_nvcc" in report.nodeid for report in skipped):
        terminalreporter.write_sep("!", "CUDA sources NOT compiled: nvcc is not on PATH (tests/test_cuda_sources.py)")
    gpu = sum("gpu" in report.keywords for report in skipped)
    if gpu:
        terminalreporter.write_sep(
            "-", f"{gpu} gpu tests skipped: no usable GPU here (run benchmarks/gpu_check.sh on one)"
        )


def synthetic_store(
    root: Path,
    counts: Sequence[int] = (7, 0, 9, 5),
    rois_per_shard: int = 4,
    size: int = 16,
    kind: str = "candidates",
    columns: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
    pixels: np.ndarray | None = None,
) -> Path:
    """A store written directly, without the filter: part k holds counts[k] ROIs from the sources
    `pat{k % 2}/tile{k}.png` and `pat{k % 2}/tile{k}b.png` (alternating). ROI i (global index) is random
    noise seeded by i, or `pixels[i]` when given. `columns(global indices)` adds per-ROI columns (e.g. a
    selected store's `cluster`)."""
    from activessf_engine.config import StoreConfig
    from activessf_engine.store.writer import PartData, StoreWriter

    plan = [[f"pat{k % 2}/tile{k}.png", f"pat{k % 2}/tile{k}b.png"] for k in range(len(counts))]
    layout = StoreConfig(rois_per_shard=rois_per_shard)
    first = 0
    with StoreWriter.create(root, kind, {"config": {}}, plan, layout=layout) as writer:
        for k, n in enumerate(counts):
            indices = np.arange(first, first + n)
            rois = np.zeros((n, size, size, 3), np.uint8)
            for row, i in enumerate(indices):
                rois[row] = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
            if pixels is not None:
                rois = pixels[first : first + n]
            source = (indices % 2).astype(np.int32)
            cols = {
                "box": np.tile(np.array([[0, 0, 8, 8]], np.int32), (n, 1)),
                "crop_box": np.tile(np.array([[0, 0, 10, 10]], np.int32), (n, 1)),
                "area": np.full(n, 50, np.int64),
                "fill_rate": np.full(n, 0.8, np.float32),
                "source": source,
                "pad": np.zeros((n, 4), np.int16),
                **(columns(indices) if columns else {}),
            }
            table = [{"path": p, "status": "ok", "rois": int((source == j).sum())} for j, p in enumerate(plan[k])]
            writer.commit_part(k, PartData(rois, cols, table))
            first += n
    return root


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`activessf-engine ARGV` in this process: (exit code, what it printed on stdout)."""
    import io
    import sys

    from activessf_engine.cli import main

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", stdout)
        code = main(argv)
    return code, stdout.getvalue()


def selected_store(root: Path, keep: np.ndarray) -> Path:
    """A selected store over a candidates store of `len(keep)` ROIs: candidate i is assigned cluster i % 3 and
    kept where `keep[i]`; its decisions group as `select` writes it."""
    import zarr

    kept = np.flatnonzero(keep)
    synthetic_store(root, (len(kept),), kind="selected", columns=lambda i: {"cluster": (kept[i] % 3).astype(np.int32)})
    group = zarr.open_group(str(root / "decisions"), mode="w", zarr_format=3)
    for name, values in (("cluster", (np.arange(len(keep)) % 3).astype(np.int32)), ("selected", keep)):
        group.create_array(name, shape=values.shape, dtype=values.dtype)[:] = values
    return root
