"""Whole stages on CUDA against the CPU path on the same inputs (marked ``gpu``; skipped without one).

Blur, masks and boxes must be identical (every step is exact integer arithmetic or a lookup). Features
run in bf16 autocast on CUDA, so they are compared ROI by ROI with a relative bound that wrong features
are shown to exceed (tests/test_features.py); the assignment is compared where its margin allows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    BCCD,
    BF16_FEATURE_BOUND,
    assert_resized_alike,
    assert_same_assignment,
    bccd_crops,
    hsv_range_table,
    per_roi_error,
    profile_shift,
)

from activessf_engine import kernels
from activessf_engine.config import FeatureConfig, FilterConfig, InputConfig
from activessf_engine.filter.decode import decode_files
from activessf_engine.filter.regions import find_regions
from activessf_engine.filter.sources import find_sources
from activessf_engine.select.features import extract, load_backbone
from activessf_engine.select.nearest import nearest_prototype

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_gpu")]


def _tiles() -> list[torch.Tensor]:
    paths = [s.path for s in find_sources(BCCD, (".jpg",))]
    return [d.image for d in decode_files(paths, InputConfig())]


@pytest.mark.parametrize("mode", ["minmax", "channel_minmax", "none"])
def test_normalize_blur_identical(mode: str) -> None:
    tiles = torch.stack(_tiles())
    cpu = kernels.normalize_blur(tiles, mode, 3, 1.5)
    gpu = kernels.normalize_blur(tiles.cuda(), mode, 3, 1.5)
    assert torch.equal(gpu.cpu(), cpu)


def test_laplacian_sums_identical() -> None:
    tiles = torch.stack(_tiles())
    assert kernels.laplacian_sums(tiles.cuda()).tolist() == kernels.laplacian_sums(tiles).tolist()


def test_hsv_of_every_colour_identical() -> None:
    code = torch.arange(1 << 24, dtype=torch.int64)
    rgb = torch.stack([code >> 16, (code >> 8) & 255, code & 255]).to(torch.uint8).reshape(3, 4096, 4096)
    assert torch.equal(kernels.hsv_opencv(rgb.cuda()).cpu(), kernels.hsv_opencv(rgb))


@pytest.mark.parametrize("mask", ["quantized", "blurred", "colour table"])
def test_find_regions_identical(mask: str) -> None:
    if mask == "colour table":
        config = FilterConfig(cell_colours=hsv_range_table(), min_fill=0.4)
    else:
        config = FilterConfig(hsv_source=mask, min_fill=0.4)
    tiles = _tiles()
    cpu = find_regions(tiles, config, keep_masks=True)
    gpu = find_regions([t.cuda() for t in tiles], config, keep_masks=True)
    assert sum(len(r.boxes) for r in cpu) > 0
    for a, b in zip(cpu, gpu, strict=True):
        assert torch.equal(a.mask, b.mask.cpu())
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.areas, b.areas)
        np.testing.assert_array_equal(a.palette, b.palette)


def test_gpu_decoder_matches_cpu_within_jpeg_tolerance() -> None:
    """nvJPEG and libjpeg-turbo upsample 4:2:0 chroma differently; torchvision's own GPU-vs-CPU test allows a
    mean absolute difference below 2, and so does this one; 99% of values within 8 levels, none beyond 64.
    Those bounds pass an image one row off (tests/test_gpu_checks.py): its row and column profiles must also
    match best unshifted. The GPU decoder must have run: a silent fallback to Pillow followed by a copy to the
    GPU fails."""
    paths = [s.path for s in find_sources(BCCD, (".jpg",))]
    cpu = [d.image for d in decode_files(paths, InputConfig())]
    gpu = list(decode_files(paths, InputConfig(), device="cuda"))
    for a, b in zip(cpu, gpu, strict=True):
        assert b.image.is_cuda and b.image.shape == a.shape
        assert b.decoder in ("dali-gpu", "torchvision-gpu"), b.decoder
        difference = (b.image.cpu().int() - a.int()).abs().float()
        assert difference.mean() < 2.0
        assert torch.quantile(difference.flatten()[::7], 0.99) <= 8 and difference.max() <= 64
        assert profile_shift(b.image.cpu().numpy(), a.numpy()) == (0, 0)


def test_decoder_routes_a_mixed_batch_on_the_gpu(tmp_path) -> None:
    from PIL import Image

    jpeg = find_sources(BCCD, (".jpg",))[0].path
    png = tmp_path / "tile.png"
    Image.open(jpeg).save(png)
    records = list(decode_files([jpeg, png, jpeg], InputConfig(), device="cuda"))
    assert all(r.image.is_cuda for r in records)
    assert records[1].decoder == "pillow" and records[0].decoder.endswith("-gpu")
    assert torch.equal(records[0].image, records[2].image)


def _features(dtype: str, device: str) -> np.ndarray:
    return extract(load_backbone(FeatureConfig(model="resnet18", weights="random", dtype=dtype), device), bccd_crops())


def test_features_on_cuda_match_the_cpu_roi_by_roi() -> None:
    """Real BCCD crops; every ROI's features within the bound, in bf16 (the default on CUDA) and in float32
    (TF32 convolutions allowed). tests/test_features.py shows the bound rejects wrong features."""
    reference = _features("float32", "cpu")
    assert per_roi_error(_features("bfloat16", "cuda"), reference).max() < BF16_FEATURE_BOUND
    assert per_roi_error(_features("float32", "cuda"), reference).max() < 1e-2


def test_nearest_prototype_of_gpu_features_is_the_cpus_where_the_margin_allows() -> None:
    """The GPU's own bf16 features assigned on the GPU against centres made on the CPU: the same prototype for
    every ROI whose two nearest centres are further apart than its feature error can reorder them (twice the
    distance it moved), and distances that moved no more than the features did. That comparison leaves the
    near-ties out by construction, so the GPU's assignment of its own features is also compared with the CPU's
    assignment of the same features, exactly, near-ties included."""
    reference = _features("float32", "cpu")
    gpu = _features("bfloat16", "cuda")
    centres = reference[::5]  # 11 real crops as prototypes
    cpu_cluster, cpu_distance = nearest_prototype(reference, centres)
    gpu_cluster, gpu_distance = nearest_prototype(torch.from_numpy(gpu).cuda(), centres)
    distances = np.linalg.norm(reference[:, None] - centres[None], axis=2)
    margin = np.sort(distances, axis=1)[:, 1] - np.sort(distances, axis=1)[:, 0]
    moved = 2 * np.linalg.norm(gpu - reference, axis=1)
    clear = margin > moved
    assert clear.sum() >= len(reference) // 2  # the comparison is not vacuous
    np.testing.assert_array_equal(gpu_cluster[clear], cpu_cluster[clear])
    shift = moved / 2  # |d(x', c) - d(x, c)| <= |x' - x| for every centre c (triangle inequality)
    assert np.all(np.abs(gpu_distance[clear] - cpu_distance[clear]) <= shift[clear] * 1.001 + 1e-5)
    assert_same_assignment((gpu_cluster, gpu_distance), nearest_prototype(gpu, centres))


def test_filter_on_cuda_makes_the_cpu_store(tmp_path) -> None:
    """`run_filter` end to end on both devices, from lossless copies of the BCCD tiles (so both decode the
    same pixels): the same ROIs with the same columns; pixels of the resized crops within one level, and off by
    one no more often, nor more one way, than rounding makes them (a truncating resize is not)."""
    from PIL import Image

    from activessf_engine.config import EngineConfig, replace_section
    from activessf_engine.filter.run import run_filter
    from activessf_engine.store.reader import RoiStore

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for path in sorted(BCCD.glob("*.jpg")):
        Image.open(path).save(tiles / f"{path.stem}.png")
    config = replace_section(EngineConfig(), "filter", min_fill=0.4)
    run_filter(tiles, tmp_path / "cpu", config, device="cpu")
    run_filter(tiles, tmp_path / "cuda", config, device="cuda")
    cpu, gpu = RoiStore(tmp_path / "cpu"), RoiStore(tmp_path / "cuda")
    assert len(cpu) == len(gpu) > 0
    for name in ("box", "crop_box", "area", "fill_rate", "source"):
        np.testing.assert_array_equal(gpu.columns()[name], cpu.columns()[name], err_msg=name)
    assert_resized_alike(*(np.concatenate([store.part_rois(part) for part in store.parts]) for store in (gpu, cpu)))


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_stain_normalization_on_cuda_is_the_cpus_within_a_level(method: str) -> None:
    from activessf_engine.stain import StainNormalizer, fit_stain_reference

    tiles = _tiles()
    normalizer = StainNormalizer(fit_stain_reference(method, tiles[:2]))
    for tile in tiles[2:5]:
        cpu, gpu = normalizer.image(tile), normalizer.image(tile.cuda())
        assert gpu.is_cuda
        difference = (gpu.cpu().int() - cpu.int()).abs()
        assert int(difference.max()) <= 1 and float((difference > 0).float().mean()) < 0.01


def test_closing_on_cuda_is_the_cpus() -> None:
    from activessf_engine.kernels import close_masks

    masks = torch.from_numpy(np.random.default_rng(0).random((2, 480, 640)) > 0.7)
    assert torch.equal(close_masks(masks.cuda(), 7).cpu(), close_masks(masks, 7))
