"""`--overwrite` replaces only what the engine wrote, of the kind the command writes, and never an input of the
same command; an interrupted export or select leaves nothing that a rerun cannot finish or clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import synthetic_store, tile_folder
from test_curate import _config, candidates, labeled  # noqa: F401 (fixtures)

from activessf_engine.cli import main
from activessf_engine.feed.export import export_store
from activessf_engine.select import run as curate
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.verify import verify_store
from activessf_engine.store.writer import StoreWriter

FAST = ["--quiet", "--roi-size", "64", "--threads", "1", "--sources-per-part", "2", "--kmeans-sample", "2048"]
MODEL = ["--model", "test_resnet", "--weights", "random", "--roi-size", "64", "--quiet"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- select ------------------------------------------------------------------------------------------


def test_select_onto_its_own_candidate_store_deletes_nothing(tmp_path, labeled, candidates, capsys) -> None:  # noqa: F811
    assert main(["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), "--clusters", "3", *MODEL]) == 0
    before = snapshot(candidates)
    select = ["select", "--candidates", str(candidates), "--prototypes", str(tmp_path / "p"), *MODEL[:4]]
    assert main([*select, "--out", str(candidates), "--overwrite", "--quiet"]) == 2
    assert "an input of this command" in capsys.readouterr().err
    assert snapshot(candidates) == before


def test_select_overwrite_replaces_only_a_selected_store(tmp_path: Path) -> None:
    other = synthetic_store(tmp_path / "other")  # a candidates store, not an input of this selection
    with pytest.raises(FileExistsError, match="is not a selected store"):
        curate.check_select_out(other, True, (tmp_path / "c", tmp_path / "p"))
    selected = synthetic_store(tmp_path / "selected", kind="selected")
    (selected / "parts" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt, which the engine does not write"):
        curate.check_select_out(selected, True, ())
    (selected / "parts" / "notes.txt").unlink()
    assert curate.check_select_out(selected, True, ()) is True
    (tmp_path / "empty").mkdir()  # nothing in it to lose
    assert curate.check_select_out(tmp_path / "empty", True, ()) is True


def test_a_killed_select_finishes_when_run_again(tmp_path, labeled, candidates, monkeypatch) -> None:  # noqa: F811
    config = _config()
    curate.run_prototypes(labeled, tmp_path / "protos", config)
    whole = curate.run_select(candidates, tmp_path / "protos", tmp_path / "whole", config)
    original_commit = StoreWriter.commit_part

    def killed_after_the_first_part(self, index, data, attrs=None):
        if index == 1:
            raise KeyboardInterrupt
        original_commit(self, index, data, attrs)

    monkeypatch.setattr(StoreWriter, "commit_part", killed_after_the_first_part)
    with pytest.raises(KeyboardInterrupt):
        curate.run_select(candidates, tmp_path / "protos", tmp_path / "sel", config)
    monkeypatch.setattr(StoreWriter, "commit_part", original_commit)
    again = curate.run_select(candidates, tmp_path / "protos", tmp_path / "sel", config)  # no --overwrite needed
    assert again["selected"] == whole["selected"] == len(RoiStore(tmp_path / "sel"))
    assert verify_store(tmp_path / "sel", deep=True) == []
    with pytest.raises(FileExistsError, match="pass --overwrite"):  # a finished selection is not replaced silently
        curate.run_select(candidates, tmp_path / "protos", tmp_path / "sel", config)


# --- prototypes ----------------------------------------------------------------------------------------


def test_prototypes_overwrite_into_the_labeled_folder_is_refused(labeled: Path, capsys) -> None:  # noqa: F811
    (labeled / "prototypes.json").write_text("{}")  # as if prototypes had been written into it before
    before = snapshot(labeled)
    flags = ["--clusters", "3", *MODEL]
    assert main(["prototypes", "--labeled", str(labeled), "--out", str(labeled), "--overwrite", *flags]) == 2
    assert "an input of this command" in capsys.readouterr().err
    assert snapshot(labeled) == before


# --- export --------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return synthetic_store(tmp_path / "store", counts=(3, 2))


def test_export_overwrite_of_a_folder_that_merely_holds_export_json_deletes_nothing(store, tmp_path, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "export.json").write_text("{}")
    (folder / "thesis.tex").write_text("years of work")
    before = snapshot(folder)
    assert main(["export", str(store), "--out", str(folder), "--overwrite"]) == 2
    assert "is not a previous export" in capsys.readouterr().err
    assert snapshot(folder) == before


def test_export_overwrite_keeps_a_file_added_to_a_previous_export(store: Path, tmp_path: Path) -> None:
    export_store(store, tmp_path / "out")
    (tmp_path / "out" / "train" / "README.md").write_text("notes on this export")
    with pytest.raises(FileExistsError, match=r"README\.md, which the engine does not write"):
        export_store(store, tmp_path / "out", overwrite=True)
    (tmp_path / "out" / "train" / "README.md").unlink()
    assert export_store(store, tmp_path / "out", overwrite=True)["rois"] == 5  # a plain previous export is replaced
    before = snapshot(store)
    with pytest.raises(ValueError, match="an input of this command"):
        export_store(store, store, overwrite=True)
    assert snapshot(store) == before


KILLED_EXPORT = """
import sys, time
from activessf_engine.feed import export
def slow(*args, **kwargs):
    time.sleep(60)
export.encode = slow
export.export_store(sys.argv[1], sys.argv[2], threads=1)
"""


def test_a_killed_export_leaves_a_folder_that_the_next_export_removes(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(store), str(out)])
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.tmp-*/metadata.csv")) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    (left,) = tmp_path.glob(".out.tmp-*")
    busy = tmp_path / ".out.tmp-inuse0"  # an export still at work (this process) keeps its folder
    busy.mkdir()
    from activessf_engine.store.lock import StoreLock

    with StoreLock(busy):
        export_store(store, out)
        assert busy.exists()
    assert not left.exists()
    assert json.loads((out / "export.json").read_text())["rois"] == 5


# --- filter --------------------------------------------------------------------------------------------


def test_filter_overwrite_never_deletes_images_that_its_list_names_inside_the_store(tmp_path: Path, capsys) -> None:
    tiles = tile_folder(tmp_path / "tiles", 4)
    store = tmp_path / "store"
    assert main(["filter", "--input", str(tiles), "--out", str(store), *FAST]) == 0
    inside = store / "parts" / "tile_09.png"  # an image kept inside the store, named by the list
    inside.write_bytes((tiles / "tile_00.png").read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*map(str, sorted(tiles.iterdir())), str(inside)]) + "\n")
    assert main(["filter", "--input", str(listing), "--out", str(store), "--overwrite", *FAST]) == 2
    assert "an input of this command" in capsys.readouterr().err
    assert inside.read_bytes() == (tiles / "tile_00.png").read_bytes()
    assert verify_store(store) == []  # the store is untouched too
