"""The numba CPU kernels against their torch / brute-force references: answers must be identical."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from activessf_engine.kernels import blur, components, laplacian, pixel_kmeans
from activessf_engine.kernels.pixel_kmeans import FIXED_POINT

# --- normalize + blur -------------------------------------------------------------------------------


def _random_tiles(batch: int, height: int, width: int, seed: int, low: int = 0, high: int = 256) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (batch, height, width, 3), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("mode", ["minmax", "channel_minmax", "none"])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize(("height", "width"), [(5, 7), (31, 17), (64, 48)])
def test_normalize_blur_equals_reference(mode, kernel, height, width):
    tiles = _random_tiles(2, height, width, seed=height * width + kernel, low=20, high=200)
    got = blur.normalize_blur(tiles, mode, kernel, 1.5)
    tables = blur.normalization_tables(tiles, mode)
    want = blur.reference_normalize_blur(tiles, tables, blur.gaussian_weights(kernel, 1.5))
    assert got.dtype == torch.uint8 and got.shape == tiles.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("mode", ["minmax", "channel_minmax", "none"])
def test_normalize_blur_grey_and_flat_tiles(mode):
    grey = _random_tiles(1, 9, 11, seed=3)[..., :1].expand(-1, -1, -1, 3).contiguous()  # one channel, thrice
    flat = torch.full((1, 9, 11, 3), 77, dtype=torch.uint8)
    for tiles in (grey, flat):
        got = blur.normalize_blur(tiles, mode, 3, 1.5)
        want = blur.reference_normalize_blur(
            tiles, blur.normalization_tables(tiles, mode), blur.gaussian_weights(3, 1.5)
        )
        assert torch.equal(got, want)
        assert torch.equal(got[..., 0], got[..., 1]) and torch.equal(got[..., 1], got[..., 2])
    assert torch.equal(blur.normalize_blur(flat, mode, 3, 1.5), flat)  # nothing to stretch, nothing to blur


def test_gaussian_weights_sum_to_fixed_point_one():
    for kernel in (1, 3, 5, 7):
        w = blur.gaussian_weights(kernel, 1.5)
        assert w.sum() == 1 << blur.WEIGHT_BITS
        assert list(w) == list(w[::-1])
    assert list(blur.gaussian_weights(1, 1.5)) == [1 << blur.WEIGHT_BITS]


def test_minmax_table_stretches_with_one_gain():
    tiles = torch.tensor([[[[40, 100, 235]]]], dtype=torch.uint8).expand(1, 2, 2, 3).contiguous()
    tables = blur.normalization_tables(tiles, "minmax")
    assert tables[0, :, 40].tolist() == [0, 0, 0] and tables[0, :, 235].tolist() == [255, 255, 255]
    assert tables[0, 0, 100].item() == round(60 * 255 / 195)
    per_channel = blur.normalization_tables(tiles, "channel_minmax")  # each channel is flat here: unchanged
    assert per_channel[0, 1].tolist() == list(range(256))


def test_normalize_blur_rejects_bad_input():
    with pytest.raises(ValueError):
        blur.normalize_blur(torch.zeros(1, 4, 4, 3, dtype=torch.int32), "minmax", 3, 1.5)
    with pytest.raises(ValueError):
        blur.normalize_blur(torch.zeros(1, 1, 4, 3, dtype=torch.uint8), "minmax", 3, 1.5)
    with pytest.raises(ValueError):
        blur.normalize_blur(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), "bogus", 3, 1.5)


# --- Laplacian (focus) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(2, 2), (3, 5), (17, 33), (40, 31)])  # bands of 16 rows, partial last
def test_laplacian_sums_equal_reference_and_opencv(height, width):
    import cv2

    tiles = _random_tiles(3, height, width, seed=height + 7 * width)
    got = laplacian.laplacian_sums(tiles)
    assert got.dtype == np.int64 and got.tolist() == laplacian.reference_laplacian_sums(tiles).tolist()
    for tile, (total, squares) in zip(tiles.numpy(), got.tolist(), strict=True):
        lap = cv2.Laplacian(cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY), cv2.CV_64F).astype(np.int64)
        assert (total, squares) == (int(lap.sum()), int((lap * lap).sum()))


def test_grey_is_opencvs_for_every_colour():
    import cv2

    code = np.arange(1 << 24, dtype=np.int64)
    rgb = np.stack([code >> 16, (code >> 8) & 255, code & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)
    weights, shift = np.array(laplacian.GREY_WEIGHTS), laplacian.GREY_SHIFT
    grey = (rgb.astype(np.int64) @ weights + (1 << (shift - 1))) >> shift
    assert np.array_equal(grey, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def test_laplacian_sums_reject_bad_input():
    with pytest.raises(ValueError, match="too small"):
        laplacian.laplacian_sums(torch.zeros(1, 1, 9, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        laplacian.laplacian_sums(torch.zeros(1, 4, 4, 3, dtype=torch.float32))


# --- assignment --------------------------------------------------------------------------------------


def _fixed(centres) -> torch.Tensor:
    return torch.as_tensor(np.asarray(centres), dtype=torch.float32)


def test_assign_equals_reference_on_random_pixels():
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (3, 20_000, 3), dtype=torch.uint8, generator=gen)
    centres = torch.randint(0, 256 * FIXED_POINT, (3, 20, 3), generator=gen).to(torch.float32)
    assert torch.equal(pixel_kmeans.assign(pixels, centres), pixel_kmeans.reference_assign(pixels, centres))


def test_assign_equals_reference_near_boundaries():
    """Pixels at and around the midpoints of pairs of centres, where the cell cache must hand over."""
    rng = np.random.default_rng(2)
    colours = rng.integers(10, 246, size=(16, 3))
    colours[1::2] = np.clip(colours[0::2] + rng.integers(-6, 7, size=(8, 3)) * 2, 0, 255)  # close pairs
    centres = colours * FIXED_POINT
    pixels = []
    for a in range(16):
        for b in range(a + 1, 16):
            mid = (colours[a] + colours[b]) // 2
            for offset in rng.integers(-2, 3, size=(12, 3)):
                pixels.append(np.clip(mid + offset, 0, 255))
            pixels.append(mid)
    pixels = torch.from_numpy(np.array(pixels, dtype=np.uint8)[None])
    got = pixel_kmeans.assign(pixels, _fixed(centres[None]))
    assert torch.equal(got, pixel_kmeans.reference_assign(pixels, _fixed(centres[None])))


def test_assign_ties_go_to_the_lower_index():
    c = np.array([[100, 100, 100], [110, 100, 100], [100, 100, 100]]) * FIXED_POINT  # 0 and 2 coincide
    pixels = torch.tensor([[[105, 100, 100], [100, 100, 100], [99, 100, 100], [106, 100, 100]]], dtype=torch.uint8)
    want = [0, 0, 0, 1]
    assert pixel_kmeans.assign(pixels, _fixed(c[None]))[0].tolist() == want
    assert pixel_kmeans.reference_assign(pixels, _fixed(c[None]))[0].tolist() == want
    swapped = c[[1, 0, 2]]
    assert pixel_kmeans.assign(pixels, _fixed(swapped[None]))[0].tolist() == [0, 1, 1, 0]
    # a whole cell of equidistant colours: every pixel with R = 104 between R-centres 100 and 108
    c2 = np.array([[100, 0, 0], [108, 0, 0]]) * FIXED_POINT
    grid = np.stack(np.meshgrid([104], np.arange(256), np.arange(0, 256, 5), indexing="ij"), -1).reshape(-1, 3)
    grid_t = torch.from_numpy(grid.astype(np.uint8)[None])
    assert pixel_kmeans.assign(grid_t, _fixed(c2[None])).eq(0).all()


def test_assign_lookup_equals_gather_of_assign():
    gen = torch.Generator().manual_seed(4)
    pixels = torch.randint(0, 256, (2, 5000, 3), dtype=torch.uint8, generator=gen)
    centres = torch.randint(0, 256 * FIXED_POINT, (2, 10, 3), generator=gen).to(torch.float32)
    table = torch.randint(0, 2, (2, 10), generator=gen).to(torch.bool)
    got = pixel_kmeans.assign_lookup(pixels, centres, table)
    assert torch.equal(got, torch.gather(table, 1, pixel_kmeans.reference_assign(pixels, centres)))


def test_assign_rejects_bad_pixels():
    with pytest.raises(ValueError):
        pixel_kmeans.assign(torch.zeros(1, 4, 3, dtype=torch.int64), torch.zeros(1, 2, 3))


# --- Lloyd ---------------------------------------------------------------------------------------------


def _reference_lloyd(sample, centres, max_iter, tolerance):
    counts = torch.zeros(centres.shape[:2], dtype=torch.int64)
    for _ in range(max_iter):
        sums, counts = pixel_kmeans.reference_accumulate(sample, centres)
        moved = pixel_kmeans.update_centres(sums, counts, centres)
        shift = (moved - centres).abs().amax().item() / FIXED_POINT
        centres = moved
        if shift <= tolerance:
            break
    return centres, counts


@pytest.mark.parametrize("steps_per_check", [None, 3, 8])  # None: the CPU's every step; 8: CUDA's default
@pytest.mark.parametrize(("max_iter", "tolerance"), [(1, 0.0), (5, 0.0), (20, 0.5), (20, 0.0), (7, 2.0)])
def test_lloyd_equals_reference_loop(max_iter, tolerance, steps_per_check):
    gen = torch.Generator().manual_seed(5)
    base = torch.randint(0, 256, (2, 8, 3), generator=gen)
    which = torch.randint(0, 8, (2, 4000), generator=gen)
    noise = torch.randint(-20, 21, (2, 4000, 3), generator=gen)
    sample = (torch.gather(base, 1, which[..., None].expand(-1, -1, 3)) + noise).clamp(0, 255).to(torch.uint8)
    start = pixel_kmeans.initial_centres(sample, 12)
    got_c, got_n = pixel_kmeans.lloyd(sample, start, max_iter, tolerance, steps_per_check)
    want_c, want_n = _reference_lloyd(sample, start, max_iter, tolerance)
    assert torch.equal(got_c, want_c)
    assert torch.equal(got_n, want_n)
    assert got_n.sum(1).tolist() == [4000, 4000]
    assert torch.equal(got_c, torch.round(got_c))  # fixed point: whole numbers


def test_update_centres_rounds_half_up_and_keeps_empty_clusters():
    sums = torch.tensor([[[3, 0, 1], [0, 0, 0]]])
    counts = torch.tensor([[16, 0]])
    old = torch.tensor([[[0.0, 0.0, 0.0], [40.0, 48.0, 56.0]]])
    new = pixel_kmeans.update_centres(sums, counts, old)
    # 8 * 3 / 16 = 1.5 -> 2; 8 * 1 / 16 = 0.5 -> 1; the empty cluster stays put
    assert new.tolist() == [[[2.0, 0.0, 1.0], [40.0, 48.0, 56.0]]]


def test_initial_centres_deterministic_brightness_ranks():
    gen = torch.Generator().manual_seed(6)
    sample = torch.randint(0, 256, (2, 1000, 3), dtype=torch.uint8, generator=gen)
    a = pixel_kmeans.initial_centres(sample, 20)
    b = pixel_kmeans.initial_centres(sample.clone(), 20)
    assert torch.equal(a, b)
    assert a.shape == (2, 20, 3)
    brightness = a.sum(-1)
    assert (brightness[:, 1:] >= brightness[:, :-1]).all()  # evenly spaced ranks of R+G+B
    ramp = torch.arange(100, dtype=torch.uint8)[None, :, None].expand(1, 100, 3).contiguous()
    assert (pixel_kmeans.initial_centres(ramp, 5)[0, :, 0] / FIXED_POINT).tolist() == [10, 30, 50, 70, 90]
    with pytest.raises(ValueError):
        pixel_kmeans.initial_centres(torch.zeros(1, 0, 3, dtype=torch.uint8), 3)


# --- merging ---------------------------------------------------------------------------------------------


def test_merge_two_separated_pairs():
    centres = np.array([[0, 0, 0], [200, 200, 200], [2, 0, 0], [200, 204, 200]], dtype=float)
    counts = np.array([10, 30, 30, 10])
    mapping, merged, sizes = pixel_kmeans.merge_clusters(centres, counts, 2)
    assert mapping.tolist() == [0, 1, 0, 1]  # numbered by first member
    np.testing.assert_allclose(merged, [[1.5, 0, 0], [200, 201, 200]])  # count-weighted means
    assert sizes.tolist() == [40, 40]


def test_ward_and_centroid_differ_when_counts_matter():
    # centres 0 and 1 are closest (d^2 = 100) but both are big; 2 and 3 are farther (d^2 = 144) but tiny.
    centres = np.array([[0, 0, 0], [10, 0, 0], [100, 0, 0], [112, 0, 0]], dtype=float)
    counts = np.array([1000, 1000, 1, 1])
    ward, _, _ = pixel_kmeans.merge_clusters(centres, counts, 3, "ward")
    centroid, _, _ = pixel_kmeans.merge_clusters(centres, counts, 3, "centroid")
    assert ward.tolist() == [0, 1, 2, 2]
    assert centroid.tolist() == [0, 0, 1, 2]


def test_merge_identity_and_to_one():
    rng = np.random.default_rng(7)
    centres = rng.uniform(0, 255, (6, 3))
    counts = rng.integers(1, 100, 6)
    mapping, merged, sizes = pixel_kmeans.merge_clusters(centres, counts, 6)
    assert mapping.tolist() == list(range(6))
    np.testing.assert_allclose(merged, centres)
    mapping, merged, sizes = pixel_kmeans.merge_clusters(centres, counts, 1)
    assert mapping.tolist() == [0] * 6
    np.testing.assert_allclose(merged[0], (centres * counts[:, None]).sum(0) / counts.sum())
    assert sizes.tolist() == [counts.sum()]


def test_merge_mapping_numbered_by_first_member():
    centres = np.array([[200, 0, 0], [0, 0, 0], [201, 0, 0], [1, 0, 0], [100, 0, 0]], dtype=float)
    mapping, _, _ = pixel_kmeans.merge_clusters(centres, np.ones(5), 3)
    assert mapping.tolist() == [0, 1, 0, 1, 2]


def test_merge_empty_clusters_and_bad_arguments():
    centres = np.array([[0, 0, 0], [50, 0, 0], [51, 0, 0]], dtype=float)
    _, merged, sizes = pixel_kmeans.merge_clusters(centres, np.array([0, 5, 5]), 2, "ward")
    assert sizes.sum() == 10 and len(merged) == 2
    with pytest.raises(ValueError):
        pixel_kmeans.merge_clusters(centres, np.ones(3), 4)
    with pytest.raises(ValueError):
        pixel_kmeans.merge_clusters(centres, np.ones(3), 2, "single")


# --- components ----------------------------------------------------------------------------------------


def _brute_label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Flood fill from each unlabeled pixel in raster order."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    labels = np.zeros(mask.shape, dtype=np.int32)
    count = 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        todo = deque([(y, x)])
        while todo:
            cy, cx = todo.popleft()
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    todo.append((ny, nx))
    return labels, count


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_and_region_stats_equal_brute_force(connectivity, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((37, 53)) < 0.45
    labels, count = components.label(torch.from_numpy(mask), connectivity)
    want_labels, want_count = _brute_label(mask, connectivity)
    assert count == want_count
    assert np.array_equal(labels.numpy(), want_labels)
    boxes, areas = components.region_stats(labels, count)
    for i in range(1, count + 1):
        ys, xs = np.nonzero(want_labels == i)
        assert boxes[i - 1].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert areas[i - 1].item() == len(xs)


def test_label_empty_and_full_masks_and_bad_input():
    labels, count = components.label(torch.zeros(5, 6, dtype=torch.bool))
    assert count == 0 and labels.sum() == 0
    boxes, areas = components.region_stats(labels, count)
    assert boxes.shape == (0, 4) and areas.shape == (0,)
    labels, count = components.label(torch.ones(5, 6, dtype=torch.bool), 4)
    boxes, areas = components.region_stats(labels, count)
    assert count == 1 and boxes.tolist() == [[0, 0, 6, 5]] and areas.tolist() == [30]
    with pytest.raises(ValueError):
        components.label(torch.ones(5, 6, dtype=torch.bool), 6)
    with pytest.raises(ValueError):
        components.label(torch.ones(5, 6, dtype=torch.uint8))


@pytest.mark.parametrize("absent", [0, 3])
def test_region_stats_kernel_matches_scipy_reference(absent: int) -> None:
    """The numba pass gives what find_objects + bincount give, absent labels included (zero boxes)."""
    rng = np.random.default_rng(absent)
    mask = rng.random((97, 131)) < 0.45
    labels, count = components.label(torch.from_numpy(mask), 8)
    boxes, counts = components.region_stats(labels, count + absent)
    ref_boxes, ref_counts = components.reference_region_stats(labels.numpy(), count + absent)
    np.testing.assert_array_equal(boxes.numpy(), ref_boxes)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)


def _per_tile_scipy(masks: np.ndarray, connectivity: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Boxes and counts of each tile labelled on its own by scipy: what the batched pass must give."""
    structure = components.STRUCTURES[connectivity]
    out = []
    for mask in masks:
        labels, count = components.ndi.label(mask, structure=structure)
        out.append(components.reference_region_stats(labels, count))
    return out


@pytest.mark.parametrize("connectivity", [4, 8])
def test_batch_labels_never_join_tiles_and_match_per_tile_scipy(connectivity: int) -> None:
    rng = np.random.default_rng(connectivity)
    masks = rng.random((5, 41, 67)) < 0.5
    masks[:, 0, :] = masks[:, -1, :] = True  # full first and last rows: a 3-D neighbourhood would join tiles
    masks[2] = False  # a tile with no region
    labels, count = components.label(torch.from_numpy(masks), connectivity)
    boxes, counts, tiles = components.batch_region_stats(labels, count)
    expected = _per_tile_scipy(masks, connectivity)
    assert count == sum(len(c) for _, c in expected)
    for tile, (want_boxes, want_counts) in enumerate(expected):
        mine = tiles == tile
        np.testing.assert_array_equal(boxes[mine], want_boxes)
        np.testing.assert_array_equal(counts[mine], want_counts)
    assert np.all(np.diff(tiles) >= 0)  # numbered tile after tile


def test_batch_region_stats_rejects_a_single_tile() -> None:
    labels, count = components.label(torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        components.batch_region_stats(labels, count)


@pytest.mark.parametrize("method", ["ward", "centroid"])
def test_merge_kernel_equals_the_numpy_reference(method: str) -> None:
    """Random palettes, empty clusters, repeated centres (ties) and integer-valued ones: identical answers."""
    rng = np.random.default_rng(0)
    for case in range(300):
        k = int(rng.integers(2, 33))
        target = int(rng.integers(1, k + 1))
        centres = rng.random((k, 3)) * 255
        if case % 3 == 1:
            centres = np.rint(centres / 32) * 32  # few distinct colours: exact ties
        counts = rng.integers(0, 50, k).astype(np.float64)
        if case % 5 == 2:
            counts[rng.random(k) < 0.4] = 0  # empty clusters
        if case % 17 == 0:
            counts[:] = 0
        got = pixel_kmeans.merge_clusters(centres, counts, target, method)
        want = pixel_kmeans.reference_merge_clusters(centres, counts, target, method)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
