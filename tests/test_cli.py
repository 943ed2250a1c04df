"""The command line: exit codes, JSON summary, TOML config and flags, verify, manifest, help, entry point."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BCCD, run_cli

from activessf_engine import __version__
from activessf_engine.cli import COMMANDS, main
from activessf_engine.filter.crops import crop_box
from activessf_engine.store.layout import read_attrs
from activessf_engine.store.reader import RoiStore

FAST = ["--quiet", "--roi-size", "64", "--threads", "1"]


@pytest.fixture(scope="module")
def bccd_store(tmp_path_factory):
    """The bundled BCCD tiles filtered once, through the CLI, with its JSON summary."""
    out = tmp_path_factory.mktemp("cli") / "store"
    return out, *run_cli(["filter", "--input", str(BCCD), "--out", str(out), "--json", *FAST])


def test_filter_json_summary(bccd_store):
    out, code, text = bccd_store
    assert code == 0
    summary = json.loads(text)
    for key in ("sources_read", "rois", "images_per_second", "megapixels_per_second", "stage_seconds"):
        assert key in summary
    assert summary["sources_read"] == 6 and summary["sources_skipped"] == 0
    assert summary["rois"] == len(RoiStore(out)) >= 4
    assert summary["megapixels_per_second"] > 0 and summary["images_per_second"] > 0
    assert {"decode", "blur", "write"} <= set(summary["stage_seconds"])


def test_filter_exit_3_lists_skipped_inputs(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BCCD / "BloodImage_00016.jpg", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    code = main(["filter", "--input", str(folder), "--out", str(tmp_path / "s"), "--json", *FAST])
    assert code == 3
    summary = json.loads(capsys.readouterr().out)
    assert summary["sources_skipped"] == 1 and summary["sources_read"] == 1
    assert summary["skipped"][0]["path"] == "broken.jpg"
    assert summary["skipped"][0]["error"].startswith("not a readable image")


def test_filter_text_report_goes_to_stderr(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BCCD / "BloodImage_00171.jpg", folder)
    assert main(["filter", "--input", str(folder), "--out", str(tmp_path / "s"), *FAST]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ROIs found" in captured.err and "throughput" in captured.err
    assert "device           cpu (cpu): decoder dali-cpu, kernels numba" in captured.err  # printed without -v


def test_filter_missing_input_exit_2(tmp_path, capsys):
    code = main(["filter", "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s"), *FAST])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_filter_out_is_not_a_store_exit_2(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    code = main(["filter", "--input", str(BCCD), "--out", str(tmp_path / "taken"), *FAST])
    assert code == 2
    assert "not an activessf-engine store" in capsys.readouterr().err


def test_toml_config_and_flag_override(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BCCD / "BloodImage_00171.jpg", folder)
    toml = tmp_path / "engine.toml"
    toml.write_text("[filter]\nmin_box = 90\nmin_fill = 0.6\n\n[store]\nsources_per_part = 3\n")
    assert main(["filter", "--input", str(folder), "--out", str(tmp_path / "a"), "--config", str(toml), *FAST]) == 0
    config = read_attrs(tmp_path / "a")["config"]
    assert config["filter"]["min_box"] == 90 and config["filter"]["min_fill"] == 0.6
    assert config["store"]["sources_per_part"] == 3 and config["crop"]["size"] == 64
    args = ["filter", "--input", str(folder), "--out", str(tmp_path / "b"), "--config", str(toml), "--min-box", "50"]
    assert main([*args, *FAST]) == 0
    config = read_attrs(tmp_path / "b")["config"]
    assert config["filter"]["min_box"] == 50  # the flag wins
    assert config["filter"]["min_fill"] == 0.6  # the rest of the file still applies


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[filter]\nmin_boxx = 90\n", "min_boxx"),
        ("[filtre]\nmin_box = 90\n", "filtre"),
        ("[filter]\nmin_box = 'big'\n", "min_box"),
        ("[filter]\nnormalize = 'sometimes'\n", "normalize"),
    ],
)
def test_bad_toml_exit_2_names_the_key(tmp_path, capsys, text, named):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    code = main(["filter", "--input", str(BCCD), "--out", str(tmp_path / "s"), "--config", str(toml), *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert named in err
    assert not (tmp_path / "s").exists()  # nothing was started


def test_bad_flag_value_exits_2(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["filter", "--input", str(BCCD), "--out", str(tmp_path / "s"), "--connectivity", "6"])
    assert info.value.code == 2


def test_device_cuda_that_cannot_run_exit_2_with_cause_and_fix(tmp_path, capsys, monkeypatch):
    from activessf_engine import device

    monkeypatch.setattr(device, "cuda_available", lambda: (False, "torch sees no CUDA GPU (simulated)"))
    code = main(["filter", "--input", str(BCCD), "--out", str(tmp_path / "s"), "--device", "cuda", *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert "torch sees no CUDA GPU (simulated)" in err and "Fix: run on a machine with a CUDA GPU" in err
    assert not (tmp_path / "s").exists()


def test_kmeans_clusters_past_the_kernel_limit_exit_2_before_anything_is_written(tmp_path, capsys):
    code = main(["filter", "--input", str(BCCD), "--out", str(tmp_path / "s"), "--kmeans-clusters", "33", *FAST])
    assert code == 2
    assert "kmeans_clusters must lie in [1, 32]" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_invalid_value_caught_by_config_exit_2(tmp_path, capsys):
    code = main(["filter", "--input", str(BCCD), "--out", str(tmp_path / "s"), "--min-fill", "1.5", *FAST])
    assert code == 2
    assert "min_fill" in capsys.readouterr().err


def test_verify_exit_codes(bccd_store, tmp_path, capsys):
    out, _, _ = bccd_store
    assert main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["verify", str(out), "--json", "--deep"]) == 0
    assert json.loads(capsys.readouterr().out) == {"store": str(out), "ok": True, "problems": [], "repaired": []}
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shutil.rmtree(broken / "parts" / "p000000" / "fill_rate")
    assert main(["verify", str(broken), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and any("fill_rate" in p for p in report["problems"])
    assert main(["verify", str(tmp_path / "nothing")]) == 1


def test_manifest_csv(bccd_store, tmp_path, capsys):
    out, _, _ = bccd_store
    assert main(["manifest", str(out)]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    store = RoiStore(out)
    assert len(table) == len(store)
    assert list(table[0])[:8] == ["roi", "source", "x0", "y0", "x1", "y1", "area", "fill_rate"]
    sizes = {s["path"]: (s["width"], s["height"]) for s in store.sources()}
    margin = read_attrs(out)["config"]["crop"]["margin"]
    for i, row in enumerate(table):
        assert int(row["roi"]) == i
        box = tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        crop = tuple(int(row[k]) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
        width, height = sizes[row["source"]]
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
        assert crop == crop_box(box, width, height, margin)  # x1, y1 exclusive on both
        assert int(row["area"]) <= (box[2] - box[0]) * (box[3] - box[1])
        assert float(row["fill_rate"]) == pytest.approx(
            int(row["area"]) / ((box[2] - box[0]) * (box[3] - box[1])), abs=1e-4
        )
    target = tmp_path / "m.csv"
    assert main(["manifest", str(out), "--output", str(target)]) == 0
    assert len(target.read_text().splitlines()) == len(store) + 1


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"] if command is None else [command, "--help"])
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_no_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_console_script_entry_point():
    script = Path(sys.executable).with_name("activessf-engine")  # the venv's console script
    found = str(script) if script.exists() else shutil.which("activessf-engine")
    assert found, "the activessf-engine console script is not installed"
    result = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"activessf-engine {__version__}"


def test_sigterm_ends_a_run_cleanly_with_exit_130(tmp_path, monkeypatch):
    """Batch schedulers stop jobs with SIGTERM; the CLI treats it like Ctrl-C."""
    import os
    import signal

    from activessf_engine import filter as pipeline  # the CLI calls the package's run_filter

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the run")

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(pipeline, "run_filter", terminated)
    try:
        assert main(["filter", "--input", str(BCCD), "--out", str(tmp_path / "s"), "--quiet"]) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_tiles_smaller_than_min_box_are_warned_about(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BCCD / "BloodImage_00171.jpg", folder)  # 640x480
    assert main(["filter", "--input", str(folder), "--out", str(tmp_path / "s"), "--min-box", "500", *FAST]) == 0
    assert "1 tile(s) are smaller than --min-box" in capsys.readouterr().err


def test_a_failure_inside_the_run_exits_1(tmp_path, capsys, monkeypatch):
    def broken_decoder(*args, **kwargs):
        raise RuntimeError("the decoder's library is broken")

    monkeypatch.setattr("activessf_engine.filter.run.make_decoder", broken_decoder)
    assert main(["filter", "--input", str(BCCD), "--out", str(tmp_path / "s"), *FAST]) == 1
    assert "failed: RuntimeError: the decoder's library is broken" in capsys.readouterr().err


def test_a_stop_whose_interrupt_python_dropped_still_exits_130(tmp_path, monkeypatch, capsys):
    """A SIGINT whose KeyboardInterrupt is raised where Python cannot propagate it (a __del__) is not lost."""
    import importlib
    import os
    import signal

    cli_main = importlib.import_module("activessf_engine.cli.main")  # the module (the package's `main` is its function)

    class StopsInDel:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler's KeyboardInterrupt is dropped here, as in a finalizer

    def command(args):
        StopsInDel()
        return 0

    monkeypatch.setitem(cli_main.COMMANDS, "filter", command)
    assert cli_main.main(["filter", "--input", str(tmp_path), "--out", str(tmp_path / "s")]) == 130
    assert "interrupted" in capsys.readouterr().err
