"""Cell Region Filtering and the features of selection on a Dask cluster: one task per part.

The unit of work is a part, as the store's design has it: the worker that filters a part commits it
(one writer per part, atomic rename), so no two processes ever write into one shard. The process that
starts the run holds the store's lock from start to end; workers write under it. A task whose worker
dies is run again by Dask on another worker; a part its first run already committed is left as it is, so
nothing is duplicated. Each part is decoded in the same batches as in a single-process run, so the store
is the same, ROI for ROI.

`--workers N` starts a local cluster of N worker processes (one task at a time each; the workers of a machine
share its cores for their kernels and decoders, as `filter.workers` sizes them); `--scheduler ADDRESS` uses a
running cluster (`dask scheduler` + `dask worker` on each machine, or dask-cuda's `LocalCUDACluster`, one
worker per GPU). Every worker must see the input and the store at the same paths (a shared file system).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from activessf_engine.config import EngineConfig, FeatureConfig, StainReference, from_dict, to_dict
from activessf_engine.device import resolve_device
from activessf_engine.filter import FilterSummary, filter_part_task, kept_per_thread, prepare_filter
from activessf_engine.progress import Progress, make_progress
from activessf_engine.store import RoiStore

try:
    from distributed import Client, LocalCluster, as_completed
except ImportError:  # the [dask] extra is not installed: dask_client says so when a run asks for Dask
    Client = LocalCluster = as_completed = None

RETRIES = 2  # extra runs of a task that raised (a worker that dies is handled by Dask's own rescheduling)
START_ATTEMPTS = 3  # tries to start a local cluster whose worker died while starting ("Nanny failed to start")

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _dask_log_level(level: int) -> Iterator[None]:
    """Dask's own loggers (`distributed` and below) at `level` in this process while the run lasts."""
    logger = logging.getLogger("distributed")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _start_local_cluster(workers: int, log_level: int) -> Any:
    """A local cluster of `workers` processes; started again when a worker dies while starting (killed, out
    of memory), and after START_ATTEMPTS failures an error that names the cause and what to try."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",
                silence_logs=log_level,
            )
        except (RuntimeError, OSError, TimeoutError) as exc:
            failure = exc
            log.warning("the local Dask cluster did not start (try %d of %d): %s", attempt, START_ATTEMPTS, exc)
    raise RuntimeError(
        f"the local Dask cluster of {workers} worker(s) did not start in {START_ATTEMPTS} tries "
        f"({type(failure).__name__}: {failure}): a worker process died while starting (killed, or out of memory: "
        "each worker loads torch). Try fewer --workers, or start the cluster yourself and pass --scheduler"
    ) from failure


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int, quiet: bool = False) -> Iterator[Any]:
    """A client of the cluster at `scheduler`, or of a local cluster of `workers` processes on 127.0.0.1.
    `quiet`: Dask logs errors only (its warnings and notices too otherwise)."""
    if Client is None:
        raise ValueError("Dask is not installed: pip install 'activessf-engine[dask]'")
    level = logging.ERROR if quiet else logging.WARNING
    with _dask_log_level(level):
        if scheduler:
            with Client(scheduler) as client:
                yield client
            return
        with _start_local_cluster(workers, level) as cluster, Client(cluster) as client:
            yield client


def _per_part(client: Any, name: str, function: Any, tasks: list[tuple[int, tuple]]) -> Iterator[Any]:
    """Submit `function(*arguments)` for each (part, arguments) and yield the results as they complete. Tasks
    are named after their part, never cached (pure=False), and run again up to RETRIES times if they raise."""
    run = uuid.uuid4().hex[:8]
    futures = [
        client.submit(function, *arguments, key=f"activessf-{name}-{run}-p{part:06d}", retries=RETRIES, pure=False)
        for part, arguments in tasks
    ]
    for future in as_completed(futures):
        yield future.result()


def run_filter_on_dask(
    input_path: str | Path,
    out: str | Path,
    config: EngineConfig,
    *,
    scheduler: str | None = None,
    workers: int = 2,
    device: str = "cpu",
    progress: bool | Progress = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> FilterSummary:
    """`filter.run_filter` with one Dask task per pending part; resumes like it. `device` is resolved by
    each worker for itself (its GPU, under dask-cuda)."""
    started = time.perf_counter()
    prepared = prepare_filter(input_path, out, config)
    with prepared.open_store(out, config, overwrite) as writer:
        pending = prepared.pending(writer.root)
        summary = prepared.start_summary(out, device, pending)
        bar = make_progress(progress, sum(len(s) for _, s in pending), "img", "filter")
        with dask_client(scheduler, workers, quiet) as client:
            seen = client.scheduler_info()["workers"].values()
            workers_seen = len(seen)
            sharing = max(Counter(worker["host"] for worker in seen).values(), default=1)  # workers on one machine
            values = to_dict(config)
            tasks = [(index, (str(writer.root), index, sources, values, device, sharing)) for index, sources in pending]
            for part, choice in _per_part(client, "filter", filter_part_task, tasks):
                summary.absorb(part)
                summary.device_choice = summary.device_choice or {**choice, "workers": workers_seen, "host_work": []}
                bar.update(part.sources_read + part.sources_skipped)
        writer.clean_temporary()  # what tasks of lost workers left half-written
        bar.close()
        summary.device_choice = summary.device_choice or {"workers": 0, "host_work": []}  # nothing was pending
        prepared.finish_summary(summary, writer, started)
    return summary


def features_on_dask(
    candidates: str | Path,
    prototypes_dir: str | Path,
    config: EngineConfig,
    *,
    scheduler: str | None = None,
    workers: int = 2,
    device: str = "cpu",
    quiet: bool = False,
) -> dict[str, int]:
    """The costly half of `select`: the features of every part of a candidates store not yet in its feature
    cache, one Dask task per part, each cached by its worker (atomically, as `select.run.store_features` does).
    `select.run_select` then finds them all cached, when it computes in the same dtype (returned: "dtype").
    Returns how many ROIs were computed and were found cached."""
    from activessf_engine.select import load_prototypes, selection_features_config

    store = RoiStore(candidates)
    prototypes = load_prototypes(Path(prototypes_dir))
    feature_config = selection_features_config(config, prototypes)
    with dask_client(scheduler, workers, quiet) as client:
        tasks = [
            (part, (str(store.root), part, to_dict(feature_config), device, to_dict(prototypes.stain)))
            for part in store.parts
        ]
        results = list(_per_part(client, "features", _features_task, tasks))
    dtypes = {dtype for _, dtype in results}
    if len(dtypes) > 1:
        raise RuntimeError(f"workers computed features in several dtypes {sorted(dtypes)}; set --dtype explicitly")
    computed = sum(n for n, _ in results)
    return {"computed": computed, "cached": len(store) - computed, "dtype": dtypes.pop() if dtypes else "float32"}


def _features_task(
    root: str, part: int, feature_values: dict[str, Any], device: str, stain_values: dict[str, Any]
) -> tuple[int, str]:
    """Features of one part (brought to the prototypes' stain reference first, if any), in a worker, into the
    store's feature cache: how many were computed (0 if they were cached already) and in which dtype."""
    from activessf_engine.select import extract, feature_cache, load_backbone
    from activessf_engine.stain import StainNormalizer

    stain = from_dict(StainReference, stain_values)

    feature_config = from_dict(FeatureConfig, feature_values)
    choice = kept_per_thread("choice", device, lambda: resolve_device(device))
    key = (device, tuple(sorted(feature_values.items())))
    backbone = kept_per_thread("backbone", key, lambda: load_backbone(feature_config, choice))
    store = RoiStore(root)
    cache = feature_cache(store, backbone, stain)
    if cache.has(part):
        return 0, backbone.dtype_name
    features = extract(backbone, StainNormalizer(stain)(store.part_rois(part)), feature_config.batch_size)
    cache.save(part, features)
    return len(features), backbone.dtype_name
