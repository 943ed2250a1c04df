"""A store is never stuck for good, and never held twice: a stale lock is taken over by exactly one of the
runs that find it at once; a part or root metadata file full of garbage is named, set aside and redone."""

from __future__ import annotations

import json
import multiprocessing
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tile_folder

from activessf_engine.cli import main
from activessf_engine.filter.run import run_filter
from activessf_engine.store.layout import part_name
from activessf_engine.store.lock import LOCK_NAME, StoreLock, StoreLockedError
from activessf_engine.store.verify import verify_store

TRIALS = 25
CONTENDERS = 3


def _contend(root: str, barrier, results) -> None:
    """Try to take the store's lock at the same moment as the others; report; hold it until all have tried."""
    lock = StoreLock(root)
    barrier.wait()
    try:
        lock.acquire()
        results.put(True)
    except StoreLockedError:
        results.put(False)
    barrier.wait()
    lock.release()


def test_a_stale_lock_is_taken_over_by_exactly_one_of_the_runs_that_find_it_at_once(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(finished.stdout), "host": socket.gethostname(), "started": "earlier"}
    context = multiprocessing.get_context("fork")
    winners = []
    for trial in range(TRIALS):
        root = tmp_path / f"s{trial}"
        root.mkdir()
        (root / LOCK_NAME).write_text(json.dumps(stale))
        barrier, results = context.Barrier(CONTENDERS), context.Queue()
        runs = [context.Process(target=_contend, args=(str(root), barrier, results)) for _ in range(CONTENDERS)]
        for run in runs:
            run.start()
        winners.append(sum(results.get(timeout=60) for _ in runs))
        for run in runs:
            run.join(timeout=60)
        assert not (root / LOCK_NAME).exists()  # released by its one holder
    assert winners == [1] * TRIALS


@pytest.fixture
def store(tmp_path: Path, small_config) -> tuple[Path, Path]:
    tiles = tile_folder(tmp_path / "tiles", 6)
    run_filter(tiles, tmp_path / "store", small_config)
    return tiles, tmp_path / "store"


FAST = ["--quiet", "--roi-size", "64", "--threads", "1", "--sources-per-part", "2", "--kmeans-sample", "2048"]


def test_garbage_in_a_part_metadata_is_named_set_aside_and_redone(store, capsys) -> None:
    tiles, root = store
    damaged = root / "parts" / part_name(1) / "zarr.json"
    damaged.write_bytes(b"\x00garbage{")
    problems = verify_store(root)
    assert any(p.startswith(part_name(1)) and "zarr.json" in p for p in problems), problems
    filter_again = ["filter", "--input", str(tiles), "--out", str(root), *FAST]
    assert main(filter_again) == 2
    assert f"verify --repair {root}" in capsys.readouterr().err
    assert main(["verify", "--repair", str(root)]) == 1
    assert [p.name.split("-")[0] for p in (root / "quarantine").iterdir()] == [part_name(1)]
    assert main(filter_again) == 0
    assert verify_store(root, deep=True) == []


def test_garbage_in_the_root_metadata_is_named_with_its_fix(store, capsys) -> None:
    tiles, root = store
    (root / "zarr.json").write_text("{not json")
    assert main(["verify", str(root)]) == 1
    said = capsys.readouterr()
    assert f"{root / 'zarr.json'}" in said.out + said.err and "backup" in said.out + said.err
    assert main(["filter", "--input", str(tiles), "--out", str(root), *FAST]) == 2
    err = capsys.readouterr().err
    assert "root metadata" in err and "backup" in err
