"""Filter workers: processes that each filter and commit whole parts, sharing the cores without oversubscribing them.

A part is the unit of work, as on Dask: the process that filters a part commits it (one writer per part,
atomic rename) under the lock that the run's own process holds. Processes, not threads: the filter's
Python between kernels (K-means bookkeeping, region tables, crops) holds the GIL, so threads over tiles
would serialize on it. Each worker gets an equal share of the cores (`thread_budget`) for its numba
kernels and its decoder, and torch keeps `input.torch_threads`, so N workers use the cores once, not N
times. Workers start with `spawn` (never `fork`: torch, numba's OpenMP and DALI hold threads).

`filter_part_task` is also the Dask task of `distributed.run_filter_on_dask`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import torch

from activessf_engine.config import EngineConfig, FilterConfig, from_dict, to_dict
from activessf_engine.device import DeviceChoice, available_cores, resolve_device
from activessf_engine.filter.decode import Decoder, make_decoder
from activessf_engine.filter.part import filter_part
from activessf_engine.filter.regions import find_regions
from activessf_engine.filter.sources import Source
from activessf_engine.filter.summary import FilterSummary
from activessf_engine.store import StoreWriter

# `input.processes` 0 picks one worker per core on machines of at least MIN_AUTO_CORES cores, and not more than one
# per TILES_PER_WORKER pending tiles: starting a worker (a fresh interpreter importing torch) costs seconds. On
# 2 cores one process already runs its numba kernels on both, and a second one lost (benchmarks/README.md).
MIN_AUTO_CORES = 4
TILES_PER_WORKER = 128
WARM_UP_SIDE = 16  # pixels a side of the blank tile a worker filters first

_per_thread = threading.local()  # what the tasks of one worker thread share: device choice, decoder


def kept_per_thread(name: str, key: object, make: Callable[[], Any]) -> Any:
    """What `make()` returns, made once per thread and kept while `key` stays the same."""
    kept = getattr(_per_thread, name, None)
    if kept is None or kept[0] != key:
        kept = (key, make())
        setattr(_per_thread, name, kept)
    return kept[1]


def worker_count(config: EngineConfig, pending: list[tuple[int, list[Source]]], device: DeviceChoice) -> int:
    """How many filter workers a run uses: `input.processes`, or (0) one per core and per TILES_PER_WORKER
    pending tiles on machines of MIN_AUTO_CORES cores or more; never more than the pending parts. One on CUDA:
    the GPU is shared, not split."""
    if device.kind == "cuda":
        return 1
    cores = available_cores()
    tiles = sum(len(sources) for _, sources in pending)
    wanted = config.input.processes or (min(cores, tiles // TILES_PER_WORKER) if cores >= MIN_AUTO_CORES else 1)
    return max(1, min(wanted, len(pending)))


def thread_budget(workers: int) -> int:
    """The threads each of `workers` processes on this machine may run at once: its share of the cores."""
    return max(1, available_cores() // max(1, workers))


@contextlib.contextmanager
def compute_threads(config: EngineConfig, budget: int) -> Iterator[EngineConfig]:
    """numba's threads set to `budget` and torch's to `input.torch_threads` inside the block (both restored
    after it); yields the config with the decoder's threads (when 0: one per core) set to `budget` too."""
    import numba

    numba_before, torch_before = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(min(budget, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(max(1, config.input.torch_threads))
    try:
        yield (
            config
            if config.input.threads
            else dataclasses.replace(config, input=dataclasses.replace(config.input, threads=budget))
        )
    finally:
        numba.set_num_threads(numba_before)
        torch.set_num_threads(torch_before)


def filter_part_task(
    root: str, index: int, sources: list[Source], config_values: dict[str, Any], device: str, sharing: int
) -> tuple[FilterSummary, dict[str, object]]:
    """One part, in a worker (a process of `filter_in_processes` or a Dask worker): decode, filter, crop and
    commit it (skipped when already committed) with the threads of one of `sharing` workers on its machine;
    its summary and the worker's device."""
    with compute_threads(from_dict(EngineConfig, config_values), thread_budget(sharing)) as config:
        choice = kept_per_thread("choice", device, lambda: resolve_device(device))
        decoder_key = (device, config.input.batch_size, config.input.threads)
        decoder: Decoder = kept_per_thread(
            "decoder", decoder_key, lambda: make_decoder(config.input.batch_size, config.input.threads, choice)
        )
        writer = StoreWriter(root, config.store)  # no lock of its own: the run's process holds the store's
        return filter_part(writer, index, sources, config, choice, decoder), choice.describe()


def _die_with_parent(parent: int) -> None:
    """A worker process's initializer: on Linux, killed when the run's process dies (killed, out of memory), so
    that no worker writes on after the process that holds the store's lock is gone."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def warm_up() -> None:
    """A worker process's first task: the filter run on a blank tile, so that its modules are imported and
    numba's compiled kernels loaded before it is handed a part."""
    find_regions([torch.zeros((WARM_UP_SIDE, WARM_UP_SIDE, 3), dtype=torch.uint8)], FilterConfig())


def filter_in_processes(
    root: str,
    pending: list[tuple[int, list[Source]]],
    config: EngineConfig,
    device: DeviceChoice,
    workers: int,
) -> Iterator[FilterSummary]:
    """Filter and commit the pending parts on `workers` workers, this process and `workers - 1` others;
    each part's summary as it completes.

    This process starts on the parts at once. The others take seconds to start (a fresh interpreter
    importing torch), so each is handed a part only once it has started, and one at a time: no part waits
    for a worker that is still starting, and a stop (an error, Ctrl-C) leaves one part per worker to finish.
    """
    values = to_dict(config)
    queued = deque(pending)
    pool = ProcessPoolExecutor(
        max_workers=workers - 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    starting = {pool.submit(warm_up) for _ in range(workers - 1)}
    running: set[Future] = set()
    idle = 0  # started workers without a part
    try:
        while queued or running:
            while idle and queued:
                index, sources = queued.popleft()
                running.add(pool.submit(filter_part_task, root, index, sources, values, device.kind, workers))
                idle -= 1
            if queued:  # this process takes the next part itself
                index, sources = queued.popleft()
                yield filter_part_task(root, index, sources, values, device.kind, workers)[0]
            done, _ = wait(running | starting, timeout=0 if queued else None, return_when=FIRST_COMPLETED)
            for future in done:
                idle += 1
                if future in starting:
                    starting.discard(future)
                    future.result()  # raises what stopped the worker from starting
                else:
                    running.discard(future)
                    yield future.result()[0]
    finally:
        # parts in flight are waited for (they write under this process's lock); workers still starting are
        # not: they exit once started, with this process at the latest
        pool.shutdown(wait=bool(running), cancel_futures=True)
