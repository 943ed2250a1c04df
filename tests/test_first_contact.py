"""What a new user meets first (issue 27): an instant `--help`, no silent guesses at flags, list files that
say how their paths resolve, quiet Dask, a "next:" line that carries the run's flags, typed exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import BCCD, run_cli, selected_store, synthetic_store

from activessf_engine.cli import main
from activessf_engine.cli.demo import SAMPLE_DATA
from activessf_engine.store import RoiStore

HEAVY = ("torch", "timm", "torchvision", "zarr", "dask", "distributed", "nvidia.dali", "matplotlib", "numcodecs")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["filter", "--help"], ["select", "--help"]])
def test_help_and_version_import_no_heavy_library(argv):
    loaded = modules_after(
        f"import contextlib, activessf_engine.cli as c\nwith contextlib.suppress(SystemExit): c.main({argv})"
    )
    assert not {name for name in HEAVY if name in loaded}


def test_package_faces_import_their_modules_on_first_use():
    loaded = modules_after("import activessf_engine.store, activessf_engine.feed, activessf_engine.select")
    assert "zarr" not in loaded and "torch" not in loaded
    loaded = modules_after("from activessf_engine.store import StoreLockedError")
    assert "zarr" not in loaded and "activessf_engine.store.lock" in loaded
    loaded = modules_after("from activessf_engine.feed import RoiDataset, ShardedRoiDataset, RoiQuery")
    assert "torch" in loaded


def test_select_imports_scikit_learn_only_for_the_baselines_that_cluster():
    assert "sklearn" not in modules_after("from activessf_engine.select import run_select, reselect")


def test_a_package_face_refuses_a_name_it_does_not_offer():
    import activessf_engine.store as store

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        store.Nope  # noqa: B018
    assert "RoiStore" in store.__all__


def test_no_flag_is_taken_by_its_prefix(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["filter", "--input", str(BCCD), "--limit", "1", "--min-fil", "0.5"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: activessf-engine filter ")  # the command's own usage, not the top-level one
    assert "--min-fil" in err and "did you mean --min-fill?" in err


def test_an_unknown_command_suggests_the_nearest(capsys):
    with pytest.raises(SystemExit):
        main(["fitler", "--help"])
    assert "did you mean filter?" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "level"), [("quiet=True", "ERROR"), ("verbose=1", "INFO"), ("", "WARNING")])
def test_quiet_silences_dask_and_verbose_shows_it(flags, level):
    """Dask configures its loggers when `distributed` is first imported (after the flags are read), and
    its worker processes from the environment they inherit: both follow --quiet and -v."""
    probe = (
        "import logging, os\n"
        "from activessf_engine.cli.options import setup_logging\n"
        f"setup_logging({flags or 'verbose=0'})\n"
        "import distributed\n"
        "print(logging.getLevelName(logging.getLogger('distributed.scheduler').getEffectiveLevel()),"
        " logging.getLevelName(logging.getLogger('dask').getEffectiveLevel()), os.environ['DASK_LOGGING__DISTRIBUTED'])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [level, level, level.lower()]


def test_a_list_file_says_how_its_paths_resolve_and_a_skip_names_the_path_tried(tmp_path, capsys, monkeypatch):
    (tmp_path / "lists" / "tiles").mkdir(parents=True)
    shutil.copy(BCCD / "BloodImage_00016.jpg", tmp_path / "lists" / "tiles")
    listing = tmp_path / "lists" / "index.txt"
    listing.write_text("tiles/BloodImage_00016.jpg\nmissing/BloodImage_00017.jpg\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["filter", "--help"])
    assert "relative paths in a list are taken from the list file's folder" in " ".join(capsys.readouterr().out.split())
    code, text = run_cli(["filter", "--input", "lists/index.txt", "--limit", "2", "--json", "--quiet"])
    assert code == 3
    error = json.loads(text)["skipped"][0]["error"]
    assert error.startswith("unreadable") and error.endswith(
        str(tmp_path / "lists" / "missing" / "BloodImage_00017.jpg")
    )
    listing.write_text("missing/BloodImage_00017.jpg\n")  # nothing readable: stopped, the path tried named
    assert main(["filter", "--input", "lists/index.txt", "--out", "store", "--quiet"]) == 2
    assert str(tmp_path / "lists" / "missing" / "BloodImage_00017.jpg") in capsys.readouterr().err


def test_an_input_without_an_image_stops_before_a_store_is_made(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.jpg").write_text("not an image")
    (folder / "table.png").write_text("a,b\n1,2\n")
    code = main(["filter", "--input", str(folder), "--out", str(tmp_path / "store"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "store").exists()
    assert "none of the 2 source(s)" in err and "notes.jpg: not a readable image" in err and "next:" not in err


def test_webdataset_metadata_is_typed_and_labelled_from_the_selection(tmp_path, capsys):
    candidates = synthetic_store(tmp_path / "candidates", (3, 2))
    selected = selected_store(tmp_path / "selected", np.arange(len(RoiStore(candidates))) % 2 == 0)
    out = tmp_path / "wds"
    argv = ["export", str(candidates), "--out", str(out), "--format", "webdataset", "--selected-by", str(selected)]
    assert main([*argv, "--quiet"]) == 0
    assert "next: train on" in capsys.readouterr().err
    with tarfile.open(out / "rois-000000.tar") as tar:
        files = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
    meta = json.loads(files["00000002.json"])
    assert meta["fill_rate"] == pytest.approx(0.8) and isinstance(meta["fill_rate"], float)
    assert isinstance(meta["area"], int) and isinstance(meta["x0"], int)
    assert files["00000002.cls"] == b"2" and "00000001.json" not in files  # candidate 1 was not selected


def test_the_dry_run_suggests_the_overlay_with_its_own_flags(capsys):
    argv = ["filter", "--input", str(BCCD), "--limit", "1", "--min-fill", "0.5", "--no-fill-holes", "--quiet"]
    main([*argv, "--purple", "120-160,20-255,20-255", "--roi-size", "64"])
    nxt = capsys.readouterr().err.strip().splitlines()[-1]
    overlay, run = nxt.split("; then the whole input: ")
    assert (
        "activessf-engine overlay" in overlay
        and "--min-fill 0.5 --no-fill-holes --purple 120-160,20-255,20-255" in overlay
    )
    assert "--roi-size" not in overlay  # overlay has no crop flags
    assert run.startswith("activessf-engine filter") and "--min-fill 0.5" in run and "--roi-size 64" in run


def readme_use_chain() -> list[list[str]]:
    """The README's "Use" lines of filter, prototypes and select (the first plain one of each), as argv
    without the optional [...] parts: the chain a new user copies."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text[text.index("## Use") : text.index("Every command has `--help`")]
    chain: dict[str, list[str]] = {}
    for line in block.splitlines():
        words = re.sub(r"\[.*?\]", "", line.split("#")[0]).split()
        if words[:1] == ["activessf-engine"] and words[1] in ("filter", "prototypes", "select") and "..." not in words:
            chain.setdefault(words[1], words[1:])
    return [chain[command] for command in ("filter", "prototypes", "select")]


def test_the_readme_use_chain_keeps_cells_of_the_shipped_data(tmp_path, capsys):
    """Issue 25: the README's filter, prototypes --like, select chain, run as written on the shipped sample data,
    kept 0 of 8 candidates and exited 0."""
    folders = {"slides/": SAMPLE_DATA / "tiles", "labeled/": SAMPLE_DATA / "labeled"}
    for argv in readme_use_chain():
        argv = [str(folders.get(w, tmp_path / w if w.endswith("/") else w)) for w in argv]
        assert main([*argv, "--quiet"]) == 0, capsys.readouterr().err
    assert len(RoiStore(tmp_path / "selected")) > 0


def test_run_on_the_shipped_data_never_ends_with_nothing_selected_and_exit_0(tmp_path, capsys):
    """Issue 25: `run` at the paper's fill rate selected 0 of 8 and exited 0; an empty selection is exit 2,
    naming its cause (the labeled cells taken whole) and the fix."""
    inputs = ["--input", str(SAMPLE_DATA / "tiles"), "--labeled", str(SAMPLE_DATA / "labeled")]
    code, out = run_cli(["run", *inputs, "--out", str(tmp_path / "r"), "--json", "--quiet"])
    selected, err = json.loads(out)["select"]["selected"], capsys.readouterr().err
    assert selected == len(RoiStore(tmp_path / "r" / "selected"))
    assert (code == 0 and selected > 0) or (code == 2 and not selected), (code, selected)
    if not selected:
        assert "error: nothing was selected (0 of" in err and "were taken whole" in err and "--min-fill" in err
