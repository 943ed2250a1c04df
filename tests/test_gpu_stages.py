"""Whole stages on CUDA against the CPU path on the same inputs (marked ``gpu``; skipped without one).

Blur, masks and boxes must be identical (every step is exact integer arithmetic or a lookup).
Features run in bf16 autocast on CUDA, so they are compared by relative error: bf16 keeps 8 bits of
mantissa, and a ResNet's error grows over its layers to about 1e-2 relative; 3e-2 is the bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BCCD

from activessf_engine import kernels
from activessf_engine.config import FeatureConfig, FilterConfig, InputConfig
from activessf_engine.decode import decode_files
from activessf_engine.features import extract, load_backbone
from activessf_engine.regions import find_regions
from activessf_engine.selection import nearest_prototype
from activessf_engine.sources import find_sources

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


def test_hsv_of_every_colour_identical() -> None:
    code = torch.arange(1 << 24, dtype=torch.int64)
    rgb = torch.stack([code >> 16, (code >> 8) & 255, code & 255]).to(torch.uint8).reshape(3, 4096, 4096)
    assert torch.equal(kernels.hsv_opencv(rgb.cuda()).cpu(), kernels.hsv_opencv(rgb))


@pytest.mark.parametrize("hsv_source", ["quantized", "blurred"])
def test_find_regions_identical(hsv_source: str) -> None:
    config = FilterConfig(hsv_source=hsv_source, min_fill=0.4)
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
    mean absolute difference below 2, and so does this one."""
    paths = [s.path for s in find_sources(BCCD, (".jpg",))]
    cpu = [d.image for d in decode_files(paths, InputConfig())]
    gpu = [d for d in decode_files(paths, InputConfig(), device="cuda")]
    for a, b in zip(cpu, gpu, strict=True):
        assert b.image.is_cuda and b.image.shape == a.shape
        assert (b.image.cpu().int() - a.int()).abs().float().mean() < 2.0


def test_decoder_routes_a_mixed_batch_on_the_gpu(tmp_path) -> None:
    from PIL import Image

    jpeg = find_sources(BCCD, (".jpg",))[0].path
    png = tmp_path / "tile.png"
    Image.open(jpeg).save(png)
    records = list(decode_files([jpeg, png, jpeg], InputConfig(), device="cuda"))
    assert all(r.image.is_cuda for r in records)
    assert records[1].decoder == "pillow" and records[0].decoder.endswith("-gpu")
    assert torch.equal(records[0].image, records[2].image)


def test_features_fp32_on_cuda_close_to_cpu() -> None:
    config = FeatureConfig(model="resnet18", weights="random", batch_size=32, dtype="float32")
    rois = torch.randint(0, 256, (32, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cpu = extract(load_backbone(config, "cpu"), rois)
    gpu_backbone = load_backbone(config, "cuda")
    assert gpu_backbone.dtype == torch.float32
    gpu = extract(gpu_backbone, rois)
    assert np.linalg.norm(gpu - cpu) / np.linalg.norm(cpu) < 1e-2  # TF32 convolutions allowed, nothing worse


def test_features_bf16_close_to_cpu_and_assignment_identical() -> None:
    config = FeatureConfig(model="resnet18", weights="random", batch_size=32)
    rois = torch.randint(0, 256, (64, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = extract(load_backbone(config, "cpu"), rois)
    gpu = extract(load_backbone(config, "cuda"), rois)
    rel = np.linalg.norm(gpu - cpu) / np.linalg.norm(cpu)
    assert rel < 3e-2
    centres = cpu[:11]
    c_cpu, d_cpu = nearest_prototype(cpu, centres)
    c_gpu, d_gpu = nearest_prototype(torch.from_numpy(cpu).cuda(), centres)
    np.testing.assert_array_equal(c_cpu, c_gpu)
    np.testing.assert_allclose(d_cpu, d_gpu, rtol=1e-6, atol=1e-6)
