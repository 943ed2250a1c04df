"""The CuPy kernels against the CPU references, on the same random inputs: answers must be identical.

Marked ``gpu``; each test skips itself unless torch sees a GPU and CuPy runs kernels on it.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from activessf_engine.kernels import components, cupy_source, pixel_kmeans

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_gpu")]


def _random_case(batch: int, n: int, clusters: int, centres_kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, n, 3), dtype=torch.uint8, generator=generator)
    if centres_kind == "fixed":  # what Lloyd produces: integers in units of 1/8 colour level
        centres = torch.randint(0, 256 * pixel_kmeans.FIXED_POINT, (batch, clusters, 3), generator=generator)
        centres = centres.to(torch.float32)
    elif centres_kind == "ties":  # few distinct colours, repeated centres: many exact ties
        pixels = pixels // 64 * 64
        centres = (torch.randint(0, 5, (batch, clusters, 3), generator=generator) * 64 * pixel_kmeans.FIXED_POINT).to(
            torch.float32
        )
        centres[:, clusters // 2 :] = centres[:, : clusters - clusters // 2]
    else:  # arbitrary floats: still bit-identical, the operations are the same
        centres = torch.rand((batch, clusters, 3), generator=generator) * 256 * pixel_kmeans.FIXED_POINT
    return pixels, centres


SIZES = [(1, 1), (2, 1000), (3, 2048), (4, 2049), (2, 70_000)]
CLUSTERS = [1, 2, 10, 20, 32]


@pytest.mark.parametrize(("batch", "n"), SIZES)
@pytest.mark.parametrize("clusters", CLUSTERS)
@pytest.mark.parametrize("centres_kind", ["fixed", "ties", "float"])
def test_assign_matches_cpu(batch: int, n: int, clusters: int, centres_kind: str) -> None:
    pixels, centres = _random_case(batch, n, clusters, centres_kind, seed=batch * 1000 + clusters)
    got = pixel_kmeans.assign(pixels.cuda(), centres.cuda())
    assert got.dtype == torch.int64 and got.is_cuda
    assert torch.equal(got.cpu(), pixel_kmeans.reference_assign(pixels, centres))
    if centres_kind != "float":  # the CPU kernels take integer (fixed-point) centres only
        assert torch.equal(got.cpu(), pixel_kmeans.assign(pixels, centres))


@pytest.mark.parametrize(("batch", "n"), SIZES)
@pytest.mark.parametrize("clusters", CLUSTERS)
@pytest.mark.parametrize("centres_kind", ["fixed", "ties", "float"])
def test_accumulate_matches_cpu(batch: int, n: int, clusters: int, centres_kind: str) -> None:
    from activessf_engine.kernels import cupy_pixel_kmeans

    pixels, centres = _random_case(batch, n, clusters, centres_kind, seed=7 * batch + n + clusters)
    got_sums, got_counts = cupy_pixel_kmeans.accumulate(pixels.cuda(), centres.cuda())
    assert got_sums.dtype == got_counts.dtype == torch.int64
    expected = [pixel_kmeans.reference_accumulate(pixels, centres)]
    if centres_kind != "float":
        expected.append(pixel_kmeans._accumulate_cpu(pixels, centres))
    for sums, counts in expected:
        assert torch.equal(got_sums.cpu(), sums)
        assert torch.equal(got_counts.cpu(), counts)


def test_lloyd_matches_cpu() -> None:
    pixels, _ = _random_case(3, 20_000, 1, "fixed", seed=3)
    start = pixel_kmeans.initial_centres(pixels, 20)
    centres, counts = pixel_kmeans.lloyd(pixels, start, max_iter=15, tolerance=0.0)
    got_centres, got_counts = pixel_kmeans.lloyd(pixels.cuda(), start.cuda(), max_iter=15, tolerance=0.0)
    assert torch.equal(got_centres.cpu(), centres)
    assert torch.equal(got_counts.cpu(), counts)


def test_non_contiguous_input_matches_cpu() -> None:
    pixels, centres = _random_case(4, 3000, 10, "fixed", seed=11)
    strided = pixels.cuda()[::2]
    assert not strided.is_contiguous()
    assert torch.equal(
        pixel_kmeans.assign(strided, centres.cuda()[::2]).cpu(),
        pixel_kmeans.assign(pixels[::2], centres[::2]),
    )


@pytest.mark.parametrize(
    ("batch", "n", "limit", "max_images"),
    [
        (5, 300, 3 * 300 * 2 + 1, 65535),  # two whole images per launch
        (5, 300, 1 << 31, 2),  # the grid-y limit alone splits
        (3, 2500, 3 * 1000 + 1, 65535),  # each image cut into ranges of 1000 pixels
        (2, 5000, 3 * 2048 * 2 + 4, 65535),  # ranges that end inside a tile
    ],
)
def test_split_launches_match_cpu(
    monkeypatch: pytest.MonkeyPatch, batch: int, n: int, limit: int, max_images: int
) -> None:
    from activessf_engine.kernels import cupy_pixel_kmeans

    monkeypatch.setattr(cupy_source, "LAUNCH_ELEMENT_LIMIT", limit)
    monkeypatch.setattr(cupy_source, "MAX_GRID_Y", max_images)
    assert len(cupy_source.launch_windows(batch, n, 3)) > 1
    pixels, centres = _random_case(batch, n, 20, "fixed", seed=n)
    assert torch.equal(pixel_kmeans.assign(pixels.cuda(), centres.cuda()).cpu(), pixel_kmeans.assign(pixels, centres))
    sums, counts = pixel_kmeans.reference_accumulate(pixels, centres)
    got_sums, got_counts = cupy_pixel_kmeans.accumulate(pixels.cuda(), centres.cuda())
    assert torch.equal(got_sums.cpu(), sums)
    assert torch.equal(got_counts.cpu(), counts)


def test_bad_inputs_are_rejected() -> None:
    from activessf_engine.kernels import cupy_pixel_kmeans

    pixels, centres = _random_case(2, 100, 33, "fixed", seed=0)
    with pytest.raises(ValueError, match="1 to 32 clusters"):
        cupy_pixel_kmeans.assign(pixels.cuda(), centres.cuda())
    with pytest.raises(ValueError, match="float32"):
        cupy_pixel_kmeans.assign(pixels.cuda(), centres[:, :20].double().cuda())
    with pytest.raises(ValueError, match="are on cpu"):
        cupy_pixel_kmeans.assign(pixels.cuda(), centres[:, :20])


def _masks() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for shape in [(1, 1), (7, 300), (64, 64), (257, 515), (1000, 33)]:
        for density in (0.3, 0.5, 0.7):
            cases.append((f"random{shape}-{density}", rng.random(shape) < density))
    blobs = ndi.gaussian_filter(rng.standard_normal((600, 800)), sigma=6) > 0.02
    cases.append(("blobs", blobs))
    cases.append(("full", np.ones((300, 1000), dtype=bool)))
    cases.append(("empty", np.zeros((300, 1000), dtype=bool)))
    border = np.zeros((50, 290), dtype=bool)
    border[0, 0] = border[0, -1] = border[-1, 0] = border[-1, -1] = border[25, 0] = border[0, 255] = True
    border[49, 256] = border[10, 289] = True
    cases.append(("border-pixels", border))
    return cases


MASKS = _masks()


@pytest.mark.parametrize(("name", "mask"), MASKS, ids=[name for name, _ in MASKS])
@pytest.mark.parametrize("connectivity", [4, 8])
def test_label_and_region_stats_match_cpu(name: str, mask: np.ndarray, connectivity: int) -> None:
    cpu_mask = torch.from_numpy(mask)
    labels, n = components.label(cpu_mask, connectivity)
    got_labels, got_n = components.label(cpu_mask.cuda(), connectivity)
    assert got_n == n
    assert got_labels.dtype == torch.int32 and got_labels.is_cuda
    assert torch.equal(got_labels.cpu(), labels)

    boxes, counts = components.region_stats(labels, n)
    got_boxes, got_counts = components.region_stats(got_labels, n)
    assert got_boxes.dtype == got_counts.dtype == torch.int64
    assert torch.equal(got_boxes.cpu(), boxes)
    assert torch.equal(got_counts.cpu(), counts)


@pytest.mark.parametrize("extra", [0, 3])
def test_region_stats_of_arbitrary_labels_match_cpu(extra: int) -> None:
    rng = np.random.default_rng(extra)
    runs = np.repeat(rng.integers(0, 6, size=(40, 30)), 37, axis=1)  # long runs crossing chunks and segments
    for labels in (rng.integers(0, 6, size=(45, 700)), runs):
        cpu_labels = torch.from_numpy(labels.astype(np.int32))
        boxes, counts = components.region_stats(cpu_labels, 5 + extra)  # labels 6..8 absent: zero boxes
        got_boxes, got_counts = components.region_stats(cpu_labels.cuda(), 5 + extra)
        assert torch.equal(got_boxes.cpu(), boxes)
        assert torch.equal(got_counts.cpu(), counts)


def test_region_stats_in_bands_of_rows_match_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cupy_source, "LAUNCH_ELEMENT_LIMIT", 515 * 7 + 1)  # bands of 7 rows
    monkeypatch.setattr(cupy_source, "MAX_GRID_Y", 3)  # and blocks that walk several rows of a band
    mask = dict(MASKS)["random(257, 515)-0.5"]
    labels, n = components.label(torch.from_numpy(mask), 8)
    boxes, counts = components.region_stats(labels, n)
    got_boxes, got_counts = components.region_stats(labels.cuda(), n)
    assert torch.equal(got_boxes.cpu(), boxes)
    assert torch.equal(got_counts.cpu(), counts)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_batch_label_and_stats_match_cpu(connectivity: int) -> None:
    rng = np.random.default_rng(connectivity)
    masks = rng.random((6, 57, 301)) < 0.5
    masks[:, 0, :] = masks[:, -1, :] = True  # full edge rows: would join tiles if planes were connected
    cpu_masks = torch.from_numpy(masks)
    labels, n = components.label(cpu_masks, connectivity)
    got_labels, got_n = components.label(cpu_masks.cuda(), connectivity)
    assert got_n == n
    assert torch.equal(got_labels.cpu(), labels)
    expected = components.batch_region_stats(labels, n)
    for got, want in zip(components.batch_region_stats(got_labels, got_n), expected, strict=True):
        np.testing.assert_array_equal(got, want)
