"""Nothing already written is lost: safe overwrite, the store lock, checksums found by `verify`, repair,
resume only under the same settings, hostile file names, clean shutdown of the decoder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
import pytest
import zarr
from conftest import BCCD, tile_folder

from activessf_engine.cli import main
from activessf_engine.config import (
    FILTER_SECTIONS,
    RESUME_FREE,
    ColourTable,
    EngineConfig,
    HsvRange,
    output_differences,
    replace_section,
    to_dict,
)
from activessf_engine.filter.run import run_filter
from activessf_engine.store.layout import committed_parts, part_name
from activessf_engine.store.lock import LOCK_NAME, StoreLock, StoreLockedError
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.verify import verify_store
from activessf_engine.store.writer import StoreWriter

FAST = ["--quiet", "--roi-size", "64", "--threads", "1", "--sources-per-part", "2", "--kmeans-sample", "2048"]


@pytest.fixture
def tiles(tmp_path: Path) -> Path:
    return tile_folder(tmp_path / "tiles", 6)


@pytest.fixture
def store(tiles: Path, tmp_path: Path, small_config) -> Path:
    run_filter(tiles, tmp_path / "store", small_config)
    return tmp_path / "store"


def pixel_rows(root: Path) -> list[bytes]:
    rois = RoiStore(root)
    return [rois.roi(i).tobytes() for i in range(len(rois))]


# --- overwrite never deletes what is not a store ------------------------------------------------------


def test_overwrite_into_the_input_folder_deletes_nothing(tiles: Path, capsys) -> None:
    before = sorted(p.name for p in tiles.iterdir())
    assert main(["filter", "--input", str(tiles), "--out", str(tiles), "--overwrite", *FAST]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert sorted(p.name for p in tiles.iterdir()) == before


def test_overwrite_of_a_folder_that_is_not_a_store_deletes_nothing(tiles: Path, tmp_path: Path, capsys) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert main(["filter", "--input", str(tiles), "--out", str(precious), "--overwrite", *FAST]) == 2
    assert "not an activessf-engine store" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_out_above_the_input_is_refused_and_out_inside_it_is_not_read_as_input(tiles: Path, tmp_path: Path) -> None:
    assert main(["filter", "--input", str(tiles), "--out", str(tmp_path), "--overwrite", *FAST]) == 2
    inside = tiles / "store"
    assert main(["filter", "--input", str(tiles), "--out", str(inside), *FAST]) == 0
    (inside / "stray.png").write_bytes((tiles / "tile_00.png").read_bytes())  # would change the plan if read
    assert main(["filter", "--input", str(tiles), "--out", str(inside), *FAST]) == 0
    assert all("store" not in s["path"] for s in RoiStore(inside).sources())


def test_overwrite_replaces_a_store(store: Path, tiles: Path, small_config) -> None:
    old_part = store / "parts" / part_name(99)  # a part of an older plan: the engine's own, so replaced
    shutil.copytree(store / "parts" / part_name(0), old_part)
    run_filter(tiles, store, small_config, overwrite=True)
    assert not old_part.exists()
    assert verify_store(store, deep=True) == []


# --- one run at a time -------------------------------------------------------------------------------


def test_a_second_run_is_refused_while_the_first_holds_the_store(store: Path, tiles: Path, small_config) -> None:
    half_written = store / "parts" / ".tmp-p000009-inflight"
    with StoreLock(store):
        half_written.mkdir()  # the first run's part in progress
        with pytest.raises(StoreLockedError, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
            run_filter(tiles, store, small_config)
        assert half_written.exists()  # the second run cleaned nothing up
    shutil.rmtree(half_written)
    assert not (store / LOCK_NAME).exists()


def test_the_lock_is_released_after_a_run_and_after_an_interruption(tiles, tmp_path, small_config, monkeypatch):
    run_filter(tiles, tmp_path / "s", small_config)
    assert not (tmp_path / "s" / LOCK_NAME).exists()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("activessf_engine.filter.run.filter_batch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_filter(tiles, tmp_path / "t", small_config)
    assert not (tmp_path / "t" / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over_and_another_hosts_lock_is_not(store: Path, tiles, small_config) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    lock = store / LOCK_NAME
    lock.write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "started": "earlier"}))
    assert run_filter(tiles, store, small_config).parts_already_done == 3
    assert not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": "another-host.example", "started": "earlier"}))
    with pytest.raises(StoreLockedError, match=f"remove {lock}"):
        run_filter(tiles, store, small_config)
    assert lock.exists()  # not ours to remove


def test_locked_store_exits_2_through_the_cli(store: Path, tiles: Path, capsys) -> None:
    with StoreLock(store):
        assert main(["filter", "--input", str(tiles), "--out", str(store), *FAST]) == 2
    assert "in use by another run" in capsys.readouterr().err


def test_writers_close_and_release(tmp_path: Path) -> None:
    with StoreWriter.create(tmp_path / "s", "candidates", {}, [["a.png"]]):
        assert (tmp_path / "s" / LOCK_NAME).exists()
        with pytest.raises(StoreLockedError):
            StoreWriter.create(tmp_path / "s", "candidates", {}, [["a.png"]])
    assert not (tmp_path / "s" / LOCK_NAME).exists()


def test_a_store_killed_while_its_root_metadata_is_written_is_created_again(tiles, tmp_path, small_config, monkeypatch):
    """The root zarr.json appears whole or not at all: a kill before its rename leaves only the partial
    file (and no half-written metadata), which the next run replaces."""
    real_replace = os.replace

    def killed_at_the_root(source, target):
        if Path(target).name == "zarr.json" and Path(target).parent == tmp_path / "s":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr("activessf_engine.store.writer.os.replace", killed_at_the_root)
    with pytest.raises(KeyboardInterrupt):
        run_filter(tiles, tmp_path / "s", small_config)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".zarr.json.partial"]
    monkeypatch.undo()
    summary = run_filter(tiles, tmp_path / "s", small_config)
    assert summary.parts_already_done == 0 and summary.sources_read == summary.sources_total > 0
    assert not verify_store(tmp_path / "s", deep=True)


# --- verify finds damage, repair sets it aside, resume redoes it ----------------------------------------


def shard_files(root: Path, part: int) -> list[Path]:
    return sorted(p for p in (root / "parts" / part_name(part) / "rois" / "c").rglob("*") if p.is_file())


def test_a_flipped_byte_in_the_pixels_is_found_by_deep_verify(store: Path) -> None:
    shard = shard_files(store, 0)[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x40
    shard.write_bytes(bytes(data))
    assert verify_store(store) == []  # columns intact: only the pixels tell
    problems = verify_store(store, deep=True)
    assert any(p.startswith("p000000: ") and ("ROI(s) differ" in p or "unreadable" in p) for p in problems), problems


def test_a_deleted_shard_is_found_with_its_rows(store: Path) -> None:
    shard_files(store, 1)[0].unlink()  # reads back as zeros
    problems = verify_store(store, deep=True)
    assert any(p.startswith("p000001: ") and "differ from their checksums" in p and "rows 0" in p for p in problems)


def test_edited_and_truncated_columns_are_found_without_deep(store: Path) -> None:
    area = zarr.open_array(str(store / "parts" / part_name(0) / "area"), mode="r+")
    area[0] = int(area[0]) + 1
    column = next(p for p in (store / "parts" / part_name(2) / "crop_box" / "c").rglob("*") if p.is_file())
    column.write_bytes(column.read_bytes()[:5])
    problems = verify_store(store)
    assert any("p000000: column 'area' differs from its checksum" in p for p in problems), problems
    assert any(p.startswith("p000002: column 'crop_box'") for p in problems), problems


def test_repair_sets_damaged_parts_aside_and_a_resume_redoes_them(store, tiles, small_config, capsys) -> None:
    clean = pixel_rows(store)
    shard_files(store, 1)[0].unlink()
    (store / "parts" / part_name(2) / "zarr.json").unlink()  # a part folder without its metadata
    with pytest.raises(ValueError, match="verify --repair"):
        run_filter(tiles, store, small_config)
    assert main(["verify", str(store), "--repair"]) == 1
    out = capsys.readouterr().out
    assert "repaired: p000001: moved to quarantine/" in out and "repaired: p000002" in out
    assert committed_parts(store) == [0]
    assert run_filter(tiles, store, small_config).parts_already_done == 1
    assert verify_store(store, deep=True) == []
    assert pixel_rows(store) == clean
    assert len(list((store / "quarantine").iterdir())) == 2  # nothing deleted


def test_repair_waits_for_the_run_that_holds_the_store(store: Path, capsys) -> None:
    """A damaged part of a store another run holds is left where it is: `verify --repair` exits 2 and moves
    nothing to quarantine (the holder may be writing that very part)."""
    shard_files(store, 1)[0].unlink()
    with StoreLock(store):
        assert main(["verify", str(store), "--repair"]) == 2
        assert "in use by another run" in capsys.readouterr().err
        assert not (store / "quarantine").exists() and committed_parts(store) == [0, 1, 2]
    assert main(["verify", str(store), "--repair"]) == 1  # once it is free, the repair goes ahead
    assert committed_parts(store) == [0, 2]


# --- resume only under the same settings ---------------------------------------------------------------


def test_resume_with_other_output_settings_is_refused_naming_them(store: Path, tiles: Path, small_config) -> None:
    shutil.rmtree(store / "parts" / part_name(2))  # an incomplete store
    for section, field, value in (("crop", "size", 32), ("filter", "min_fill", 0.5)):
        changed = replace_section(small_config, section, **{field: value})
        with pytest.raises(ValueError, match=rf"{section}\.{field} .* -> {value}"):
            run_filter(tiles, store, changed)
    faster = replace_section(small_config, "input", batch_size=1, threads=2)  # changes no output
    assert run_filter(tiles, store, faster).parts_already_done == 2
    assert verify_store(store, deep=True) == []


# Fields a resume may change, reviewed: none of them changes which sources are read, which regions are kept or
# how a ROI is cut or stored pixel for pixel. A field added to config.RESUME_FREE must be reviewed here too.
REVIEWED_RESUME_FREE = {
    "input": {"batch_size", "threads", "torch_threads", "processes", "max_batch_pixels"},
    "store": {"rois_per_shard", "codec", "compression_level", "write_threads"},  # how, not what, is written
}


# Fields whose generic other value is not valid (max_box: 0 is "no bound", a bound is at least min_box; box_scale >= 1)
OTHER_VALUES = {
    ("filter", "max_box"): 200,
    ("filter", "box_scale"): 1.5,
    ("filter", "stain"): {"method": "reinhard", "values": [70.0, 5.0, 0.0, 8.0, 7.0, 9.0]},
    ("filter", "cell_colours"): {"cells": ColourTable.of_packed(bytes(1 << 12)).cells},  # an empty table
}


def another_value(value: Any, hint: Any) -> Any:
    """A valid value of a config field other than `value`."""
    if get_origin(hint) is Literal:
        return next(choice for choice in get_args(hint) if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 2  # odd stays odd (blur_kernel)
    if isinstance(value, float):
        return value / 2 if value else 0.25
    if isinstance(value, HsvRange):
        return dataclasses.replace(value, h=(value.h[0], value.h[1] - 1))
    if isinstance(value, tuple):
        return (*value, ".webp")
    raise TypeError(f"no other value known for {value!r}")


def test_every_field_that_shapes_the_rois_refuses_a_resume() -> None:
    """Each field of the filter's sections, changed alone: named as a difference unless it is reviewed as free."""
    assert RESUME_FREE == REVIEWED_RESUME_FREE
    config = EngineConfig()
    stored = json.loads(json.dumps(to_dict(config)))  # as the store keeps it
    for section in FILTER_SECTIONS:
        current = getattr(config, section)
        hints = get_type_hints(type(current))
        for field in dataclasses.fields(current):
            value = getattr(current, field.name)
            other = OTHER_VALUES.get((section, field.name)) or another_value(value, hints[field.name])
            changed = replace_section(config, section, **{field.name: other})
            named = [
                d for d in output_differences(stored, to_dict(changed)) if d.startswith(f"{section}.{field.name} ")
            ]
            free = field.name in REVIEWED_RESUME_FREE.get(section, set())
            assert (not named) is free, f"{section}.{field.name}: {'refuses' if named else 'allows'} a resume"


def test_a_complete_store_refuses_new_settings_instead_of_ignoring_them(store, tiles, small_config) -> None:
    with pytest.raises(ValueError, match=r"filter\.min_box 70 -> 50"):
        run_filter(tiles, store, replace_section(small_config, "filter", min_box=50))


def test_resume_from_another_input_folder_is_refused(store: Path, tiles: Path, tmp_path, small_config) -> None:
    shutil.copytree(tiles, tmp_path / "copy")
    with pytest.raises(ValueError, match="input"):
        run_filter(tmp_path / "copy", store, small_config)


# --- hostile inputs -----------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not UTF-8")
def test_a_file_name_that_is_not_utf8_is_skipped_and_named(tiles: Path, tmp_path: Path, small_config) -> None:
    bad = os.path.join(os.fsencode(tiles), b"bad\xff name.png")
    shutil.copyfile(tiles / "tile_00.png", bad)
    summary = run_filter(tiles, tmp_path / "s", small_config)
    assert summary.sources_read == 6 and summary.sources_skipped == 1
    assert summary.skipped[0]["path"] == "bad\\xff name.png (name not UTF-8)"
    assert summary.skipped[0]["error"].startswith("file name is not valid UTF-8")
    assert verify_store(tmp_path / "s", deep=True) == []


def test_stored_errors_hold_no_memory_addresses(tiles: Path, tmp_path: Path, small_config) -> None:
    (tiles / "tile_01.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    summary = run_filter(tiles, tmp_path / "s", small_config)
    assert summary.skipped and "0x" not in summary.skipped[0]["error"]


def test_an_interrupted_run_ends_its_decoder_thread(tiles, tmp_path, small_config, monkeypatch) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("activessf_engine.filter.run.filter_batch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_filter(tiles, tmp_path / "s", replace_section(small_config, "input", batch_size=1))
    assert not [t for t in threading.enumerate() if t.name == "decode"]


def test_a_decoder_failure_reaches_the_caller_instead_of_hanging(tiles, tmp_path, small_config, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr("activessf_engine.filter.run.make_decoder", broken)
    with pytest.raises(RuntimeError, match="decoder exploded"):
        run_filter(tiles, tmp_path / "s", small_config)
    assert not (tmp_path / "s" / LOCK_NAME).exists()


def test_exif_orientation_is_never_applied_and_is_recorded(tmp_path: Path, small_config) -> None:
    from PIL import Image

    folder = tmp_path / "exif"
    folder.mkdir()
    source = Image.open(BCCD / "BloodImage_00016.jpg").crop((0, 0, 320, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    source.save(folder / "rgb.jpg", exif=exif)  # decoded by DALI
    source.convert("CMYK").save(folder / "cmyk.jpg", exif=exif)  # decoded by Pillow
    run_filter(folder, tmp_path / "s", small_config)
    table = {s["path"]: s for s in RoiStore(tmp_path / "s").sources()}
    for name, decoder in (("rgb.jpg", "dali-cpu"), ("cmyk.jpg", "pillow")):
        assert (table[name]["width"], table[name]["height"]) == (320, 200)  # as stored, not rotated
        assert table[name]["exif_orientation"] == 6 and table[name]["decoder"] == decoder


def test_decode_batches_are_bounded_in_pixels(tmp_path: Path) -> None:
    from activessf_engine.config import InputConfig
    from activessf_engine.filter.decode import decode_batches

    paths = [tile_folder(tmp_path / "t", 5) / f"tile_{i:02d}.png" for i in range(5)]  # 320x240 each
    config = InputConfig(batch_size=4, threads=1, max_batch_pixels=2 * 320 * 240)
    sizes = [len(batch) for batch in decode_batches(paths, config)]
    assert sizes == [2, 2, 1]
    alone = InputConfig(batch_size=4, threads=1, max_batch_pixels=1000)  # each tile is over the cap: one by one
    assert [len(b) for b in decode_batches(paths, alone)] == [1] * 5


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[filter]\nblur_sigma = nan\n", "blur_sigma"),
        ("[crop]\nsize = 0\n", "size"),
        ("[crop]\nmargin = -1.0\n", "margin"),
        ("[input]\nbatch_size = 0\n", "batch_size"),
        ("[input]\nthreads = -1\n", "threads"),
        ("[filter]\nkmeans_iterations = 0\n", "kmeans_iterations"),
        ("[input]\nmax_pixels = 0\n", "max_pixels"),
        ("[store]\ncompression_level = 99\n", "compression_level"),
        ('[input]\nextensions = ".png"\n', "extensions"),
        ("[filter]\nmin_box = true\n", "min_box"),
        ("[selection]\nalpha = inf\n", "alpha"),
    ],
)
def test_bad_values_are_refused_before_any_store_is_made(tiles, tmp_path, capsys, toml: str, named: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    assert main(["filter", "--input", str(tiles), "--out", str(tmp_path / "s"), "--config", str(config)]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_roi_checksums_match_the_pixels(store: Path) -> None:
    """Each stored crc32 is zlib's crc32 of that ROI's whole (S, S, 3) pixels, as zarr reads them back."""
    for part in committed_parts(store):
        folder = store / "parts" / part_name(part)
        pixels = np.asarray(zarr.open_array(str(folder / "rois"), mode="r")[:])
        stored = np.asarray(zarr.open_array(str(folder / "roi_crc32"), mode="r")[:])
        assert len(pixels) == len(stored) > 0
        assert stored.tolist() == [zlib.crc32(roi.tobytes()) for roi in pixels]


def test_a_list_of_paths_is_an_input(tiles: Path, tmp_path: Path, small_config) -> None:
    listing = tmp_path / "index.txt"
    lines = ["# an archive's index", str(tiles / "tile_03.png"), "", "tiles/tile_00.png", "tiles/tile_00.png"]
    listing.write_text("\n".join([*lines, "tiles/missing.png"]) + "\n")
    summary = run_filter(listing, tmp_path / "s", small_config)
    assert summary.sources_total == 3 and summary.sources_read == 2 and summary.sources_skipped == 1
    assert summary.skipped[0]["path"] == "tiles/missing.png" and summary.skipped[0]["error"].startswith("unreadable")
    paths = {s["path"] for s in RoiStore(tmp_path / "s").sources()}
    assert paths == {str(tiles / "tile_03.png"), "tiles/tile_00.png", "tiles/missing.png"}
