"""Whole slides as input: readers, level choice, tissue mask, overlapping tiles with centre ownership, and a
slide run that gives the ROIs of its tiles read alone as files, with no cell counted twice."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from slide_data import GLASS, MOSAIC_SIZE, mosaic, pyramid, write_slide

from activessf_engine.cli import main
from activessf_engine.config import EngineConfig, InputConfig, replace_section
from activessf_engine.feed.datasets import RoiDataset
from activessf_engine.filter.run import run_filter
from activessf_engine.filter.slide_readers import list_slide_readers, open_slide, slide_reader_for
from activessf_engine.filter.slides import (
    choose_level,
    expand_slides,
    otsu_threshold,
    read_tile_batches,
    saturation,
    thumbnail,
    tile_spans,
)
from activessf_engine.filter.sources import Source
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.verify import verify_store

HAS_OPENSLIDE = "openslide" in list_slide_readers()
# Level 1 of the mosaic (0.5 um/px) read with the filter's sizes stated at 0.25 um/px: min_box 70 -> 35 and
# overlap 256 -> 128 at level 1; tiles of 384, so the tile cores meet where slide_data.MOSAIC_LAYOUT says.
CPU = torch.device("cpu")
SLIDE_INPUT = {"mpp": 0.5, "reference_mpp": 0.25, "slide_tile": 384, "slide_overlap": 256}


def slide_config(**changes) -> EngineConfig:
    return replace_section(EngineConfig(), "input", **{**SLIDE_INPUT, **changes})


@pytest.fixture(scope="module")
def level0() -> np.ndarray:
    return mosaic()


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory, level0):
    folder = tmp_path_factory.mktemp("slides")
    write_slide(folder / "smear.tif", level0)
    return folder


@pytest.fixture(scope="module")
def slide_store(tmp_path_factory, slide_dir):
    out = tmp_path_factory.mktemp("store") / "store"
    summary = run_filter(slide_dir, out, slide_config())
    return out, summary


def rois_by_level0_box(root, slide: str = "smear.tif") -> dict[tuple, tuple]:
    """Each ROI of `slide` in a store keyed by its level-0 box: (area, fill rate, pixels)."""
    store = RoiStore(root)
    cols = store.columns()
    keyed = {}
    for i in np.flatnonzero(cols["slide"] == slide):
        key = tuple(cols["level0_box"][i].tolist())
        assert key not in keyed, f"two ROIs with the level-0 box {key}"
        keyed[key] = (int(cols["area"][i]), float(cols["fill_rate"][i]), store.roi(i).tobytes())
    return keyed


def iou(a, b) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(100, 384, 128), (384, 384, 128), (1000, 384, 128), (2048, 384, 128), (997, 64, 7)]
)
def test_tile_spans_overlap_by_at_least_the_overlap_and_cores_tile_the_axis(length, tile, overlap):
    spans = tile_spans(length, tile, overlap)
    assert spans[0][2] == 0 and spans[-1][3] == length
    for (start, end, core0, core1), nxt in zip(spans, [*spans[1:], None], strict=True):
        assert end - start == min(tile, length) and start >= 0 and end <= length
        assert start <= core0 < core1 <= end
        if nxt is not None:
            assert nxt[2] == core1  # cores meet: every pixel has one owner
            assert end - nxt[0] >= overlap  # windows overlap by at least the overlap
            assert end - core1 >= overlap // 2 and nxt[2] - nxt[0] >= overlap // 2


@pytest.mark.parametrize(
    ("layout", "reader"),
    [("tiff", "tifffile"), ("ome", "tifffile"), ("svs", "tifffile"), ("tiff", "openslide"), ("svs", "openslide")],
)
def test_readers_give_the_pixels_levels_and_mpp_written(tmp_path, level0, layout, reader):
    if reader == "openslide" and not HAS_OPENSLIDE:
        pytest.skip("OpenSlide's wheels are not installed (pip install 'activessf-engine[slides]')")
    path = tmp_path / ("smear.svs" if layout == "svs" else "smear.tif")
    planes = write_slide(path, level0[:900, :1500], layout=layout, mpp=0.25)
    slide = open_slide(path, reader)
    try:
        assert slide.sizes == [(1500, 900), (750, 450), (375, 225)]
        assert slide.downsamples == pytest.approx([1.0, 2.0, 4.0], rel=1e-3)
        assert slide.mpp == pytest.approx(0.25)
        for level, (x, y, w, h) in [(0, (250, 100, 600, 300)), (1, (0, 0, 750, 450)), (2, (300, 200, 75, 25))]:
            assert np.array_equal(slide.read(level, x, y, w, h), planes[level][y : y + h, x : x + w])
    finally:
        slide.close()


def test_level_is_chosen_by_mpp_and_a_slide_without_mpp_needs_a_level_or_base_mpp(tmp_path, level0):
    write_slide(tmp_path / "a.tif", level0[:512, :512], mpp=0.25)
    write_slide(tmp_path / "b.tif", level0[:512, :512], mpp=None)
    with_mpp = open_slide(tmp_path / "a.tif", "tifffile")
    without = open_slide(tmp_path / "b.tif", "tifffile")
    slide = Source("b.tif", tmp_path / "b.tif")
    try:
        for mpp, level in [(0.1, 0), (0.25, 0), (0.27, 0), (0.5, 1), (0.54, 1), (0.7, 1), (1.0, 2), (8.0, 2)]:
            found, level_mpp, scale = choose_level(slide, with_mpp, InputConfig(mpp=mpp))
            assert (found, level_mpp, scale) == (level, 0.25 * 2**level, pytest.approx(mpp / (0.25 * 2**level)))
        assert choose_level(slide, with_mpp, InputConfig(mpp=1.0, reference_mpp=0.25))[2] == pytest.approx(0.25)
        assert without.mpp is None
        with pytest.raises(ValueError, match=r"no microns per pixel.*--base-mpp.*--slide-level"):
            choose_level(slide, without, InputConfig(mpp=0.5))
        assert choose_level(slide, without, InputConfig(slide_level=2)) == (2, None, 1.0)
        assert choose_level(slide, without, InputConfig(mpp=0.5, base_mpp=0.25))[:2] == (1, 0.5)
        with pytest.raises(ValueError, match="has 3 level"):
            choose_level(slide, without, InputConfig(slide_level=3))
    finally:
        with_mpp.close()
        without.close()


def test_only_pyramidal_tiffs_are_slides_and_a_missing_reader_is_named(tmp_path, level0, monkeypatch):
    Image.fromarray(level0[:300, :400]).save(tmp_path / "tile.tif")
    write_slide(tmp_path / "slide.tif", level0[:512, :512])
    (tmp_path / "scan.mrxs").write_bytes(b"not really")
    suffixes = InputConfig().slide_extensions
    assert slide_reader_for(tmp_path / "tile.tif", "auto", suffixes) is None
    assert slide_reader_for(tmp_path / "tile.jpg", "auto", suffixes) is None
    assert slide_reader_for(tmp_path / "slide.tif", "auto", suffixes) == "tifffile"
    assert slide_reader_for(tmp_path / "scan.svs", "auto", suffixes) == "tifffile"  # whatever is installed
    if HAS_OPENSLIDE:
        assert slide_reader_for(tmp_path / "scan.ndpi", "auto", suffixes) == "openslide"
        assert slide_reader_for(tmp_path / "slide.tif", "openslide", suffixes) == "openslide"
    monkeypatch.setattr("activessf_engine.filter.slide_readers.list_slide_readers", lambda: ["tifffile"])
    with pytest.raises(ValueError, match=r"scan.mrxs.*openslide.*activessf-engine\[slides\]"):
        slide_reader_for(tmp_path / "scan.mrxs", "auto", suffixes)


def test_otsu_and_saturation_match_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(saturation(rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1])
    values = np.concatenate([rng.normal(20, 5, 3000), rng.normal(90, 15, 1000)]).clip(0, 255).astype(np.uint8)
    assert otsu_threshold(values) == int(cv2.threshold(values, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])


def test_background_tiles_are_skipped_and_smear_tiles_read(slide_store, level0):
    out, summary = slide_store
    store = RoiStore(out)
    (slide,) = store.meta["slides"]
    assert slide["level"] == 1 and slide["mpp"] == 0.5 and slide["scale"] == 0.5 and slide["overlap"] == 128
    assert summary.slides == 1 and summary.background_tiles == slide["background_tiles"] > 0
    read = {tuple(row["window"]) for row in store.sources()}
    assert summary.sources_total == len(read) == slide["tiles"] - slide["background_tiles"]
    level1 = pyramid(level0, 2)[1]
    glass = np.all(level1 == GLASS, axis=-1)
    for y in tile_spans(level1.shape[0], 384, 128):
        for x in tile_spans(level1.shape[1], 384, 128):
            smear = 1 - glass[y[0] : y[1], x[0] : x[1]].mean()
            if smear == 0:
                assert (x[0], y[0], x[1], y[1]) not in read  # bare glass is never read
            elif smear > 0.05:
                assert (x[0], y[0], x[1], y[1]) in read


def test_slide_gives_the_rois_of_its_tiles_read_alone_and_none_twice(slide_store, level0, tmp_path):
    out, summary = slide_store
    assert summary.sources_skipped == 0 and summary.decoders == {"tifffile": summary.sources_read}
    level1 = pyramid(level0, 2)[1]
    rows = RoiStore(out).sources()
    files = tmp_path / "tiles"
    files.mkdir()
    for row in rows:  # the same windows, cut from the pixels the test wrote, as lossless files
        x0, y0, x1, y1 = row["window"]
        Image.fromarray(level1[y0:y1, x0:x1]).save(files / f"{x0:05d}_{y0:05d}.png")
    tiles_alone = tmp_path / "tiles-store"
    run_filter(files, tiles_alone, replace_section(EngineConfig(), "filter", min_box=35))
    cores = {f"{r['window'][0]:05d}_{r['window'][1]:05d}.png": r["core"] for r in rows}
    alone = RoiStore(tiles_alone)
    cols = alone.columns()
    expected, every_region = {}, []
    for i in range(len(alone)):
        name = cols["source_path"][i]
        x, y = (int(v) for v in name[:-4].split("_"))
        box = cols["box"][i] + [x, y, x, y]  # in level-1 pixels
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        every_region.append((name, tuple(box * 2)))
        c0, c1, c2, c3 = cores[name]
        if c0 <= cx < c2 and c1 <= cy < c3:
            expected[tuple((box * 2).tolist())] = (
                int(cols["area"][i]),
                float(cols["fill_rate"][i]),
                alone.roi(i).tobytes(),
            )
    # cells across tile borders: some region lies whole in two tiles, so reading tiles alone finds it twice
    twice = [
        (a, b)
        for i, a in enumerate(every_region)
        for b in every_region[i + 1 :]
        if a[0] != b[0] and iou(a[1], b[1]) > 0.5
    ]
    assert twice, "the mosaic should put cells where tiles overlap"
    got = rois_by_level0_box(out)
    assert len(got) >= 2 and got.keys() == expected.keys()
    for key in got:
        assert got[key][:2] == pytest.approx(expected[key][:2]) and got[key][2] == expected[key][2]
    boxes = list(got)
    assert all(iou(a, b) < 0.2 for i, a in enumerate(boxes) for b in boxes[i + 1 :])  # no cell counted twice
    assert len(got) < len(every_region)


def test_slide_store_records_provenance_and_verifies(slide_store, capsys):
    out, _ = slide_store
    assert verify_store(out, deep=True) == []
    dataset = RoiDataset(out, with_meta=True)
    _, meta = dataset[0]
    assert meta["slide"] == "smear.tif" and meta["level"] == 1
    store = RoiStore(out)
    row = store.sources()[int(store.columns()["source"][0])]
    x0, y0 = row["window"][:2]
    assert meta["source"] == f"smear.tif#L1_x{x0}_y{y0}"
    assert meta["level0_box"] == [2 * (v + o) for v, o in zip(meta["box"], [x0, y0, x0, y0], strict=True)]
    assert main(["manifest", str(out)]) == 0
    header, first = list(csv.reader(io.StringIO(capsys.readouterr().out)))[:2]
    at = header.index("slide")
    assert header[at : at + 6] == ["slide", "level", "l0_x0", "l0_y0", "l0_x1", "l0_y1"]
    assert first[at : at + 6] == ["smear.tif", "1", *map(str, meta["level0_box"])]


def test_parts_hold_one_slide_and_a_run_resumes_without_duplicates(slide_dir, slide_store, tmp_path, level0):
    out, _ = slide_store
    folder = tmp_path / "in"
    write_slide(folder / "b_smear.tif", level0[:, :1536])
    Image.fromarray(level0[200:680, 400:1040]).save(folder / "a_tile.png")
    (folder / "c_smear.tif").symlink_to(slide_dir / "smear.tif")
    config = replace_section(slide_config(), "store", sources_per_part=5)
    run_filter(folder, tmp_path / "s", config)
    store = RoiStore(tmp_path / "s")
    assert store.part_attrs(0)["sources"] == [store.sources()[0]] and store.sources()[0]["path"] == "a_tile.png"
    for part in store.parts:
        assert len({row.get("slide") for row in store.part_attrs(part)["sources"]}) == 1  # one slide, or files
    before = {name: rois_by_level0_box(tmp_path / "s", name) for name in ("a_tile.png", "b_smear.tif", "c_smear.tif")}
    assert all(before.values())
    assert before["c_smear.tif"] == rois_by_level0_box(out)  # the same slide gives the same ROIs in other parts
    for part in store.parts[2:]:
        shutil.rmtree(tmp_path / "s" / "parts" / f"p{part:06d}")
    again = run_filter(folder, tmp_path / "s", config)
    assert again.parts_already_done == 2 and again.parts_total == len(store.parts)
    assert {name: rois_by_level0_box(tmp_path / "s", name) for name in before} == before
    assert len(RoiStore(tmp_path / "s")) == sum(len(v) for v in before.values())
    assert verify_store(tmp_path / "s", deep=True) == []


def test_openslide_reads_the_same_rois(slide_dir, slide_store, tmp_path):
    if not HAS_OPENSLIDE:
        pytest.skip("OpenSlide's wheels are not installed (pip install 'activessf-engine[slides]')")
    out, _ = slide_store
    summary = run_filter(slide_dir, tmp_path / "os", slide_config(slide_reader="openslide"))
    assert summary.decoders == {"openslide": summary.sources_read}
    assert rois_by_level0_box(tmp_path / "os") == rois_by_level0_box(out)


def test_cli_filters_slides_and_skips_a_damaged_one(slide_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "smear.tif").symlink_to(slide_dir / "smear.tif")
    data = (slide_dir / "smear.tif").read_bytes()
    (folder / "zz_damaged.svs").write_bytes(data[:4000])
    args = ["filter", "--input", str(folder), "--out", str(tmp_path / "o"), "--json", "--quiet"]
    flags = ["--mpp", "0.5", "--reference-mpp", "0.25", "--slide-tile", "384", "--slide-overlap", "256"]
    assert main([*args, *flags]) == 3
    summary = json.loads(capsys.readouterr().out)
    assert summary["slides"] == 2 and summary["background_tiles"] > 0 and summary["sources_skipped"] == 1
    assert summary["skipped"][0]["path"] == "zz_damaged.svs" and "slide unreadable" in summary["skipped"][0]["error"]
    write_slide(folder / "no_mpp.tif", np.zeros((64, 64, 3), np.uint8) + 200, mpp=None, levels=2, tile=16)
    assert main([*args, "--overwrite", *flags]) == 2
    assert "no_mpp.tif states no microns per pixel" in capsys.readouterr().err


def test_slide_on_dask_equals_the_threaded_run(slide_dir, slide_store, tmp_path):
    pytest.importorskip("distributed")
    from activessf_engine.distributed import run_filter_on_dask

    out, _ = slide_store
    config = replace_section(slide_config(), "store", sources_per_part=8)
    summary = run_filter_on_dask(slide_dir, tmp_path / "dask", config, workers=1)
    assert summary.background_tiles > 0
    assert rois_by_level0_box(tmp_path / "dask") == rois_by_level0_box(out)


def test_mosaic_is_the_documented_size(level0):
    assert level0.shape[:2] == MOSAIC_SIZE[::-1]


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])
def test_cucim_reads_what_tifffile_reads(tmp_path, level0, compression):
    pytest.importorskip("cucim", reason="cuCIM is optional and not installed")
    path = tmp_path / "smear.tif"
    write_slide(path, level0[:900, :1500], mpp=0.25, compression=compression)
    cucim, tiff = open_slide(path, "cucim"), open_slide(path, "tifffile")
    try:
        assert cucim.sizes == tiff.sizes and cucim.downsamples == tiff.downsamples and cucim.mpp == pytest.approx(0.25)
        for level, (x, y, w, h) in [(0, (250, 100, 600, 300)), (2, (300, 200, 75, 25))]:
            assert np.array_equal(cucim.read(level, x, y, w, h), tiff.read(level, x, y, w, h))
    finally:
        cucim.close()
        tiff.close()


def test_thumbnail_reads_strips_never_a_whole_level(tmp_path, level0, monkeypatch):
    monkeypatch.setattr("activessf_engine.filter.slides.STRIP_PIXELS", 1 << 20)  # strips of 256 rows of this slide
    write_slide(tmp_path / "flat.tif", level0, levels=1)  # one level: the thumbnail must come from level 0
    slide = open_slide(tmp_path / "flat.tif", "tifffile")
    try:
        tracemalloc.start()
        thumb, downsample = thumbnail(slide, 256)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        slide.close()
    assert max(thumb.shape[:2]) <= 256 and downsample == 16
    assert np.array_equal(thumb, level0[::16, ::16])
    assert peak < level0.nbytes / 4  # strips, not the 22 MB level


def test_tiles_read_in_parallel_are_the_tiles_read_one_by_one(slide_dir, level0):
    config = slide_config(batch_size=5)
    tiles, _ = expand_slides([Source("smear.tif", slide_dir / "smear.tif")], config.input)
    level1 = pyramid(level0, 2)[1]
    serial = [i for b in read_tile_batches(tiles, replace_section(config, "input", threads=1).input, CPU) for i in b]
    parallel = read_tile_batches(tiles, replace_section(config, "input", threads=4).input, CPU)
    batches = list(parallel)
    assert [len(b) for b in batches] == [5] * (len(tiles) // 5) + ([len(tiles) % 5] if len(tiles) % 5 else [])
    for tile, one, image in zip(tiles, serial, [i for b in batches for i in b], strict=True):
        x0, y0, x1, y1 = tile.tile.window
        assert torch.equal(one.image, image.image) and np.array_equal(image.image.numpy(), level1[y0:y1, x0:x1])


@pytest.mark.gpu
def test_slide_on_cuda_makes_the_cpu_store(needs_gpu, slide_dir, slide_store, tmp_path):
    out, _ = slide_store
    summary = run_filter(slide_dir, tmp_path / "cuda", slide_config(), device="cuda")
    assert summary.background_tiles > 0 and summary.decoders == {"tifffile": summary.sources_read}
    cpu, gpu = RoiStore(out), RoiStore(tmp_path / "cuda")
    assert len(cpu) == len(gpu) > 0
    for name in ("box", "level0_box", "area", "fill_rate", "source_path"):
        np.testing.assert_array_equal(gpu.columns()[name], cpu.columns()[name], err_msg=name)
    for i in range(len(cpu)):
        assert np.abs(gpu.roi(i).astype(int) - cpu.roi(i).astype(int)).max() <= 1  # resized on another device


def test_a_tile_left_out_of_a_sparse_tiff_reads_as_bare_glass(tmp_path, level0):
    path = tmp_path / "sparse.tif"
    planes = write_slide(path, level0[:512, :512], levels=2)
    with tifffile.TiffFile(path) as tf:  # empty the first tile of level 0, as scanners do where they saw nothing
        tag = tf.pages[0].tags["TileByteCounts"]
        offset, width = tag.valueoffset, tag.valuebytecount // tag.count
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(width))
    slide = open_slide(path, "tifffile")
    try:
        region = slide.read(0, 128, 128, 256, 256)
    finally:
        slide.close()
    assert (region[:128, :128] == 255).all()
    assert np.array_equal(region[128:, 128:], planes[0][256:384, 256:384])


def test_dry_run_of_a_slide_keeps_what_the_store_keeps(slide_dir, slide_store):
    """`filter --limit`: the slide's tiles filtered with its scaled filter, each keeping the regions it owns."""
    from activessf_engine.filter.run import dry_run_filter

    out, summary = slide_store
    rows = RoiStore(out).sources()
    dry = dry_run_filter(slide_dir, slide_config(), limit=len(rows))
    assert dry.rois == summary.rois == len(RoiStore(out)) > 0
    for name in ("regions_found", "rejected_size", "rejected_fill"):
        assert getattr(dry, name) == getattr(summary, name) == sum(r[name] for r in rows), name
    assert dry.sources_without_roi == summary.sources_without_roi


def test_mpp_of_tile_files_scales_min_box_as_a_slide_level_does(tmp_path, capsys):
    from conftest import draw_tile

    Image.fromarray(draw_tile([("rect", 100, 80, 150, 130)])).save(tmp_path / "tile.png")  # a 50 x 50 cell
    dry_run = ["filter", "--input", str(tmp_path), "--limit", "1", "--json", "--quiet"]
    kept = []
    for sizes in ([], ["--mpp", "0.5", "--reference-mpp", "0.25"]):  # min_box 70 px at 0.25 um/px is 35 px here
        assert main([*dry_run, *sizes]) == 0
        kept.append(json.loads(capsys.readouterr().out)["rois"])
    assert kept == [0, 1]
    from activessf_engine.config import EngineConfig, InputConfig, replace_section
    from activessf_engine.filter.slides import scaled_filter

    config = replace_section(EngineConfig(input=InputConfig(mpp=0.5, reference_mpp=0.25)), "filter", close_radius=8)
    assert scaled_filter(config, None).close_radius == 4
