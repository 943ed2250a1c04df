"""Filter worker processes: the store they make is the one-process store, ROI for ROI, and they share the cores."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numba
import pytest
import torch
from conftest import store_contents, tile_folder

from activessf_engine.config import EngineConfig, replace_section
from activessf_engine.device import available_cores, resolve_device
from activessf_engine.filter import workers
from activessf_engine.filter.run import run_filter
from activessf_engine.store.layout import committed_parts, part_name
from activessf_engine.store.verify import verify_store


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    return tile_folder(tmp_path_factory.mktemp("workers") / "tiles", 10)  # 5 parts of 2


def _with_processes(config: EngineConfig, processes: int) -> EngineConfig:
    return replace_section(config, "input", processes=processes)


def test_two_worker_processes_make_the_one_process_store(tiles, small_config, tmp_path) -> None:
    one = run_filter(tiles, tmp_path / "one", _with_processes(small_config, 1))
    two = run_filter(tiles, tmp_path / "two", _with_processes(small_config, 2))
    assert one.device_choice["processes"] == 1 and two.device_choice["processes"] == 2
    counts = ("sources_read", "rois", "regions_found", "rejected_size", "rejected_fill", "megapixels")
    assert [getattr(two, name) for name in counts] == [getattr(one, name) for name in counts]
    assert sorted(two.sources_without_roi) == sorted(one.sources_without_roi) != []
    assert set(two.stage_seconds) >= {"decode", "blur", "components", "write"}  # the workers' stage times, summed
    assert store_contents(tmp_path / "two") == store_contents(tmp_path / "one") and one.rois > 0
    assert verify_store(tmp_path / "two", deep=True) == []


def test_worker_processes_resume_a_store_and_leave_committed_parts_alone(tiles, small_config, tmp_path) -> None:
    reference = tmp_path / "reference"
    run_filter(tiles, reference, _with_processes(small_config, 1))
    out = tmp_path / "resumed"
    run_filter(tiles, out, _with_processes(small_config, 1))
    for part in (1, 2, 3):  # as if the run had stopped after parts 0 and 4
        shutil.rmtree(out / "parts" / part_name(part))
    untouched = (out / "parts" / part_name(0) / "zarr.json").stat().st_mtime_ns
    summary = run_filter(tiles, out, _with_processes(small_config, 2))
    assert summary.parts_already_done == 2 and summary.device_choice["processes"] == 2
    assert (out / "parts" / part_name(0) / "zarr.json").stat().st_mtime_ns == untouched
    assert committed_parts(out) == [0, 1, 2, 3, 4]
    assert store_contents(out) == store_contents(reference)


def _pending(parts: int, tiles_each: int) -> list[tuple[int, list]]:
    return [(i, [None] * tiles_each) for i in range(parts)]


def test_worker_count_follows_the_setting_the_cores_and_the_work(monkeypatch) -> None:
    cpu = resolve_device("cpu")
    monkeypatch.setattr(workers, "available_cores", lambda: 8)
    auto = EngineConfig()
    assert workers.worker_count(auto, _pending(80, 16), cpu) == 8  # 1280 tiles: one per core
    assert workers.worker_count(auto, _pending(4, 16), cpu) == 1  # 64 tiles do not repay a second worker
    assert workers.worker_count(auto, _pending(10, 64), cpu) == 5  # one per 128 tiles
    assert workers.worker_count(auto, _pending(3, 500), cpu) == 3  # never more than the parts
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    assert workers.worker_count(auto, _pending(80, 64), cpu) == 1  # on 2 cores one process uses both
    assert workers.worker_count(_with_processes(auto, 2), _pending(80, 64), cpu) == 2
    assert workers.worker_count(_with_processes(auto, 6), _pending(10, 1), cpu) == 6
    assert workers.worker_count(_with_processes(auto, 6), _pending(2, 1), cpu) == 2
    assert workers.worker_count(_with_processes(auto, 6), [], cpu) == 1
    cuda = dataclasses.replace(cpu, kind="cuda")
    assert workers.worker_count(_with_processes(auto, 6), _pending(10, 100), cuda) == 1


def test_each_worker_gets_its_share_of_the_cores_and_gives_the_threads_back(monkeypatch) -> None:
    monkeypatch.setattr(workers, "available_cores", lambda: 16)
    assert [workers.thread_budget(n) for n in (1, 2, 4, 16, 32)] == [16, 8, 4, 1, 1]
    numba_before, torch_before = numba.get_num_threads(), torch.get_num_threads()
    config = replace_section(EngineConfig(), "input", torch_threads=1, threads=0)
    with workers.compute_threads(config, 1) as inside:
        assert numba.get_num_threads() == 1 and torch.get_num_threads() == 1
        assert inside.input.threads == 1  # "one per core" decoder threads become the worker's share
    assert (numba.get_num_threads(), torch.get_num_threads()) == (numba_before, torch_before)
    fixed = replace_section(config, "input", threads=3)
    with workers.compute_threads(fixed, 1) as inside:
        assert inside.input.threads == 3  # a number the user set is kept


def test_the_cores_are_those_this_process_may_run_on() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # as a batch scheduler that grants one core of the machine
        assert available_cores() == 1 and workers.thread_budget(1) == 1
    finally:
        os.sched_setaffinity(0, before)
