"""Hostile inputs are refused one by one, with a reason, and never stop, hang or blow up a run: FIFOs, names that
are not UTF-8 beside their look-alikes, truncated slides, files padded far beyond their pixels, names that a
spreadsheet would run as formulas, and configs whose values no machine could honour."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import synthetic_store, tile_folder
from PIL import Image

from activessf_engine.cli import main
from activessf_engine.config import InputConfig
from activessf_engine.feed.export import export_store
from activessf_engine.filter.decode import decode_files
from activessf_engine.filter.run import run_filter
from activessf_engine.filter.slide_readers import TiffSlideReader
from activessf_engine.store.reader import RoiStore

TRAILER = 64 << 20  # bytes of zeros after a small JPEG: far more than its metadata could take


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_like_an_image_is_skipped_instead_of_hanging_the_run(tmp_path: Path, small_config) -> None:
    tiles = tile_folder(tmp_path / "tiles", 2)
    fifos = [tiles / "pipe.jpg", tiles / "scan.svs"]  # a tile's name and a slide's
    for fifo in fifos:
        os.mkfifo(fifo)
    done: list = []
    run = threading.Thread(target=lambda: done.append(run_filter(tiles, tmp_path / "s", small_config)), daemon=True)
    run.start()
    run.join(timeout=120)
    if run.is_alive():  # blocked opening a FIFO: give each a writer, so that the run ends, then fail
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the run hung on a FIFO")
    (summary,) = done
    assert summary.sources_read == 2 and summary.sources_skipped == 2
    assert sorted(s["path"] for s in summary.skipped) == ["pipe.jpg", "scan.svs"]
    assert all("not a regular file (a FIFO)" in s["error"] for s in summary.skipped)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not UTF-8")
def test_a_name_that_is_not_utf8_never_takes_its_valid_look_alike_down_with_it(tmp_path: Path, small_config) -> None:
    tiles = tile_folder(tmp_path / "tiles", 2)
    shutil.copyfile(tiles / "tile_00.png", tiles / "zz_\\xff.png")  # a valid name: backslash, x, f, f
    shutil.copyfile(tiles / "tile_00.png", os.path.join(os.fsencode(tiles), b"zz_\xff.png"))  # byte 0xff
    summary = run_filter(tiles, tmp_path / "s", small_config)
    assert summary.sources_total == 4 and summary.sources_skipped == 1
    assert summary.skipped[0]["error"].startswith("file name is not valid UTF-8")
    read = {s["path"]: s["status"] for s in RoiStore(tmp_path / "s").sources()}
    assert read["zz_\\xff.png"] == "ok"


def test_a_slide_tile_read_past_the_end_of_a_truncated_file_is_an_error_not_glass(tmp_path: Path) -> None:
    path = tmp_path / "slide.tif"
    pixels = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(256, 256), compression="zlib")
    reader = TiffSlideReader(path)
    last = reader._pages[0]
    os.truncate(path, int(last.dataoffsets[-1]))  # the last tile's bytes are gone
    assert np.array_equal(reader.read(0, 0, 0, 256, 256), pixels[:256, :256])  # the tiles still there read
    with pytest.raises(OSError, match="truncated slide"):
        reader.read(0, 256, 256, 256, 256)
    reader.close()


def test_a_file_padded_far_beyond_its_pixels_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "padded.jpg"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    with open(path, "r+b") as fh:  # a trailer of zeros past the image (sparse: no disk is used)
        fh.truncate(TRAILER)
    tracemalloc.start()
    try:
        (record,) = decode_files([path], InputConfig(threads=1), "cpu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert record.image is None and "more than its pixels can take" in record.error
    assert peak < 4 << 20  # the header was read, never the trailer


def test_cells_a_spreadsheet_would_run_are_escaped_in_the_manifest_and_export(tmp_path: Path, capsys) -> None:
    store = synthetic_store(tmp_path / "store", counts=(2,))
    parts = store / "parts" / "p000000" / "zarr.json"
    meta = parts.read_text().replace("pat0/tile0.png", '=HYPERLINK(\\"http://x\\")')
    parts.write_text(meta)
    assert main(["manifest", str(store)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["source"] == '\'=HYPERLINK("http://x")'
    export_store(store, tmp_path / "out")
    with open(tmp_path / "out" / "metadata.csv", newline="") as fh:
        exported = list(csv.DictReader(fh))
    assert exported[0]["source"] == '\'=HYPERLINK("http://x")' and exported[1]["source"] == "pat0/tile0b.png"


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[input]\nbatch_size = 1000000000\n", "input.batch_size"),
        ("[features]\nbatch_size = 1000000000\n", "features.batch_size"),
        ("[filter]\nmin_box = 100000000000000000000000\n", "filter.min_box"),
        ("[crop]\nsize = 100000\n", "crop.size"),
        ("[store]\nrois_per_shard = 100000000\n", "store.rois_per_shard"),
        ("[prototypes]\nseed = 100000000000\n", "prototypes.seed"),
        ("[input]\nextensions = " + "[" * 5000 + "]" * 5000 + "\n", "deep"),
    ],
)
def test_configs_no_machine_could_honour_are_refused_with_exit_2(tmp_path, capsys, toml: str, named: str) -> None:
    tiles = tile_folder(tmp_path / "tiles", 1)
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    assert main(["filter", "--input", str(tiles), "--out", str(tmp_path / "s"), "--config", str(config)]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_an_image_under_max_pixels_but_over_pillows_own_limit_is_read_from_a_fresh_process(tmp_path, monkeypatch):
    """The first look at the inputs (before any decode) judges size by max_pixels, not by Pillow's default
    bomb limit (89.5 MP, an error past twice that): a 14000x14000 tile (196 MP) is not "over 800000000"."""
    from activessf_engine.filter.decode import why_unreadable

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default, as in a fresh process
    path = tmp_path / "wide.png"
    Image.new("1", (14000, 14000), 1).save(path)
    assert why_unreadable(path, InputConfig()) is None
    assert "14000x14000 pixels exceeds max_pixels=100000000" in why_unreadable(path, InputConfig(max_pixels=10**8))
