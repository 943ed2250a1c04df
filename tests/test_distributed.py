"""The filter on a local Dask cluster (two worker processes on 127.0.0.1): the same store as one process,
ROI for ROI, also when a worker is killed in the middle of the run, and when it resumes another's store."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import store_contents, tile_folder

from activessf_engine.config import replace_section
from activessf_engine.distributed import run_filter_on_dask
from activessf_engine.filter.run import run_filter
from activessf_engine.store.layout import committed_parts, part_name
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.verify import verify_store

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    return tile_folder(tmp_path_factory.mktemp("dask") / "tiles", 12)  # 6 parts of 2


@pytest.fixture(scope="module")
def config():
    from activessf_engine.config import EngineConfig

    config = replace_section(EngineConfig(), "filter", kmeans_sample=2048)
    config = replace_section(config, "store", sources_per_part=2, rois_per_shard=4)
    config = replace_section(config, "crop", size=64)
    return replace_section(config, "input", batch_size=4, threads=1)


@pytest.fixture(scope="module")
def reference(tiles: Path, config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dask") / "reference"
    run_filter(tiles, out, config)
    return out


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        yield cluster


def test_two_workers_make_the_single_process_store(tiles, config, reference, cluster, tmp_path) -> None:
    summary = run_filter_on_dask(tiles, tmp_path / "s", config, scheduler=cluster.scheduler_address)
    assert summary.device_choice["workers"] == 2 and summary.device_choice["kind"] == "cpu"
    assert summary.sources_read == 12 and summary.rois == len(RoiStore(reference))
    assert store_contents(tmp_path / "s") == store_contents(reference)
    assert verify_store(tmp_path / "s", deep=True) == []


def test_a_worker_killed_mid_run_changes_nothing(tiles, config, reference, cluster, tmp_path) -> None:
    from distributed import Client

    out = tmp_path / "s"
    with Client(cluster.scheduler_address) as client:
        pids = list(client.run(os.getpid).values())

    committed_at_kill = []

    def kill_one_worker_after_the_first_commit() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not committed_parts(out):
            time.sleep(0.01)
        committed_at_kill.append(len(committed_parts(out)))
        os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker_after_the_first_commit)
    killer.start()
    summary = run_filter_on_dask(tiles, out, config, scheduler=cluster.scheduler_address)
    killer.join()
    assert committed_at_kill and committed_at_kill[0] < 6  # the kill came in the middle of the run
    with Client(cluster.scheduler_address) as client:
        assert pids[0] not in client.run(os.getpid).values()  # that worker died and was replaced
    assert store_contents(out) == store_contents(reference)
    assert verify_store(out, deep=True) == []
    assert summary.sources_read == 12  # parts committed before the kill are counted from their tables


def test_a_dask_run_resumes_a_single_process_store(tiles, config, reference, cluster, tmp_path) -> None:
    out = tmp_path / "s"
    shutil.copytree(reference, out)
    for part in (1, 4):
        shutil.rmtree(out / "parts" / part_name(part))
    summary = run_filter_on_dask(tiles, out, config, scheduler=cluster.scheduler_address)
    assert summary.parts_already_done == 4 and summary.sources_read == 4
    assert store_contents(out) == store_contents(reference)


def test_workers_option_starts_a_local_cluster(tiles, config, reference, tmp_path) -> None:
    summary = run_filter_on_dask(tiles, tmp_path / "s", config, workers=2)
    assert summary.device_choice["workers"] == 2
    assert store_contents(tmp_path / "s") == store_contents(reference)


def test_cli_filter_on_two_local_workers(tiles, reference, tmp_path, capsys) -> None:
    from activessf_engine.cli import main

    flags = ["--roi-size", "64", "--sources-per-part", "2", "--kmeans-sample", "2048", "--batch-size", "4"]
    code = main(["filter", "--input", str(tiles), "--out", str(tmp_path / "s"), "--workers", "2", "--quiet", *flags])
    assert code == 0
    assert "on each of 2 Dask workers" in capsys.readouterr().err
    assert store_contents(tmp_path / "s") == store_contents(reference)


def test_select_features_on_dask_give_the_local_selection(tiles, reference, cluster, tmp_path, capsys) -> None:
    import json

    from activessf_engine.cli import main

    labeled = tmp_path / "labeled"
    for name, count in (("a", 3), ("b", 3)):
        tile_folder(labeled / name, count)
    candidates = tmp_path / "candidates"
    shutil.copytree(reference, candidates)
    model = ["--model", "test_resnet", "--weights", "random", "--roi-size", "64", "--quiet"]
    # Whole labeled images: framed by the crop settings alone, as the candidates are (select checks the framing);
    # a stain reference, which the workers rebuild from its record.
    whole = ["--clusters", "2", "--labeled-crop", "whole", "--stain-normalization", "reinhard", *model]
    assert main(["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), *whole]) == 0
    # A fixed threshold: the random network's features of these tiles are nearly alike, so Eq. 8 gives LB = UB = 0,
    # and float32 sums in other processes (1e-8 apart) would fall on either side of a zero threshold.
    select = ["select", "--candidates", str(candidates), "--prototypes", str(tmp_path / "p"), *model[:4], "--quiet"]
    select += ["--threshold-mode", "fixed", "--fixed-threshold", "0.5"]
    capsys.readouterr()
    assert main([*select, "--out", str(tmp_path / "dask"), "--scheduler", cluster.scheduler_address, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dask_features"]["computed"] == len(RoiStore(candidates)) and summary["features_computed"] == 0
    on_dask = cached_features(candidates)
    shutil.rmtree(candidates / "features")
    assert main([*select, "--out", str(tmp_path / "local")]) == 0
    local = cached_features(candidates)
    assert on_dask.shape == local.shape and np.allclose(on_dask, local, rtol=0, atol=1e-6)
    # the same ROIs kept, with the same columns; the distances within the features' float32 rounding
    kept_on_dask, kept_here = RoiStore(tmp_path / "dask").columns(), RoiStore(tmp_path / "local").columns()
    assert np.allclose(kept_on_dask.pop("distance"), kept_here.pop("distance"), rtol=0, atol=1e-5)
    assert kept_on_dask.keys() == kept_here.keys()
    assert all(np.array_equal(kept_on_dask[k], kept_here[k]) for k in kept_here)
    assert len(RoiStore(tmp_path / "local")) > 0


def cached_features(store: Path) -> np.ndarray:
    """The feature cache of a store, every part in order (one model's cache)."""
    (folder,) = (store / "features").iterdir()
    parts = sorted(p for p in folder.iterdir() if p.name.startswith("p"))
    return np.concatenate([np.asarray(zarr.open_array(str(p), mode="r")[:]) for p in parts])
