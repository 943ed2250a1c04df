"""A seeded kill-and-resume harness: `filter` runs in a child process that is killed with SIGKILL at chosen
points (inside a part's write, around its rename, while decoding, right after taking the lock) and at
seeded random moments, or stopped with SIGTERM / SIGINT (it must exit 130); each time the same command is
run again to the end, and the store must equal, ROI for ROI and byte for byte, one made without
interruption, and pass `verify --deep`.

The seed is printed; set ACTIVESSF_KILL_SEED to replay a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import store_contents, tile_folder

from activessf_engine.store.verify import verify_store

FLAGS = ["--quiet", "--roi-size", "64", "--threads", "1", "--sources-per-part", "2", "--kmeans-sample", "2048"]

# The child: the CLI, with SIGKILL planted where KILL_AT says (at the Nth call of the named step).
CHILD = r"""
import os, signal, sys
from activessf_engine import cli
from activessf_engine.filter import decode
from activessf_engine.store import lock
from activessf_engine.store import writer as store

point, nth, how = (os.environ.get("KILL_AT", "") + "::").split(":")[:3]
calls = {"n": 0}

def after(n=int(nth or 1)):
    calls["n"] += 1
    if calls["n"] == n:
        os.kill(os.getpid(), getattr(signal, how or "SIGKILL"))

def wrap(owner, name, before=True):
    real = getattr(owner, name)
    def wrapped(*args, **kwargs):
        if before:
            after()
        result = real(*args, **kwargs)
        if not before:
            after()
        return result
    setattr(owner, name, wrapped)

if point == "mid-write":        # a part's rois written, its columns not yet
    wrap(store, "roi_checksums")
elif point == "before-rename":  # a part written whole under its temporary name
    wrap(store, "_atomic_rename")
elif point == "after-rename":   # a part committed, the run not told yet
    wrap(store, "_atomic_rename", before=False)
elif point == "decoding":
    wrap(decode, "_decode_batch")
elif point == "locked":
    wrap(lock.StoreLock, "acquire", before=False)
sys.exit(cli.main(sys.argv[1:]))
"""

PLANTED = [
    "mid-write:1",
    "mid-write:2",
    "before-rename:1",
    "before-rename:3",
    "after-rename:2",
    "decoding:2",
    "locked:1",
]
STOPPED = ["decoding:2:SIGTERM", "mid-write:2:SIGINT"]  # a clean stop, from the decoder's thread or a write
RANDOM_KILLS = 3
DASK_KILLS = 1  # a filter on two local Dask workers, the whole process group killed at a seeded moment
PROCESS_KILLS = 1  # a filter with two worker processes, only the run's own process killed: its worker dies too


def child(args: list[str], kill_at: str = "") -> subprocess.Popen:
    """The CLI in a new session (process group), so a kill can take its Dask workers with it."""
    env = {**os.environ, "KILL_AT": kill_at}
    command = [sys.executable, "-c", CHILD, *args]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_store(tmp_path: Path, capsys) -> None:
    seed = int(os.environ.get("ACTIVESSF_KILL_SEED", random.SystemRandom().randrange(1 << 30)))
    with capsys.disabled():
        print(f"\nkill-resume seed {seed} (replay with ACTIVESSF_KILL_SEED={seed})")
    rng = random.Random(seed)
    tiles = tile_folder(tmp_path / "tiles", 6)  # 3 parts of 2 sources
    reference = tmp_path / "reference"
    started = time.perf_counter()
    assert child(["filter", "--input", str(tiles), "--out", str(reference), *FLAGS]).wait() == 0
    duration = time.perf_counter() - started
    expected = store_contents(reference)
    assert expected

    points = PLANTED + STOPPED + [f"random:{rng.uniform(0.3, 1.0) * duration:.2f}" for _ in range(RANDOM_KILLS)]
    points += [f"dask:{rng.uniform(1.0, 2.5) * duration:.2f}" for _ in range(DASK_KILLS)]
    points += [f"processes:{rng.uniform(0.0, 0.8) * duration:.2f}" for _ in range(PROCESS_KILLS)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:  # scenarios are independent
        outcomes = list(
            pool.map(lambda k: kill_and_resume(points[k], tiles, tmp_path / f"store{k}"), range(len(points)))
        )
    for point, out in zip(points, outcomes, strict=True):
        assert store_contents(out) == expected, f"{point}: the resumed store differs (seed {seed})"
        assert verify_store(out, deep=True) == [], point
    assert len(points) >= 10


def kill_and_resume(point: str, tiles: Path, out: Path) -> Path:
    """Kill a filter run at `point` ("step:N" planted, or "random:SECONDS"), then run it again to the end."""
    args = ["filter", "--input", str(tiles), "--out", str(out), *FLAGS]
    if point.startswith("processes:"):
        process = child([*args, "--processes", "2"])
        deadline = time.monotonic() + 120
        while not (workers := children(process.pid)) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers, f"{point}: a run with --processes 2 started no worker"
        time.sleep(float(point.split(":")[1]))  # then a seeded moment after its workers started
        workers = children(process.pid)
        os.kill(process.pid, signal.SIGKILL)  # the run alone: the kernel kills its workers (PR_SET_PDEATHSIG)
        process.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)], f"{point}: workers outlived the run"
    elif point.startswith(("random:", "dask:")):
        process = child(args + (["--workers", "2"] if point.startswith("dask:") else []))
        time.sleep(float(point.split(":")[1]))
        os.killpg(process.pid, signal.SIGKILL)  # the run and every worker it started, at once
        process.wait()
    else:
        process = child(args, kill_at=point)
        _, err = process.communicate()
        expected = 130 if point.endswith(("SIGTERM", "SIGINT")) else -signal.SIGKILL
        assert process.returncode == expected, f"{point}: exit {process.returncode}, not {expected}: {err}"
    finish = child(args)
    _, err = finish.communicate()
    assert finish.returncode == 0, f"{point}: the resume failed: {err}"
    return out


def children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
