"""The filter run on one machine: sources -> decode -> regions -> crops -> store, part by part, resumable.

This module owns the threads, queues, progress and I/O order of a run: with one worker, decoding runs in a
producer thread and each part is committed in a writer thread while the next one is filtered; with several,
worker processes filter and commit whole parts (`workers`). The parts themselves (plan, filtering, summary)
are in `plan`, `part` and `summary`, shared with the Dask run in `distributed`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from activessf_engine.config import EngineConfig
from activessf_engine.device import DeviceChoice, as_choice, host_work
from activessf_engine.filter.decode import DecodedImage, make_decoder
from activessf_engine.filter.part import (
    PartBuilder,
    batch_regions,
    decode_part,
    filter_batch,
    owned_regions,
    source_record,
    timed,
)
from activessf_engine.filter.plan import find_inputs, plan_parts, prepare_filter
from activessf_engine.filter.regions import StageTimes
from activessf_engine.filter.sources import Source
from activessf_engine.filter.summary import FilterSummary
from activessf_engine.filter.workers import compute_threads, filter_in_processes, thread_budget, worker_count
from activessf_engine.progress import Progress, make_progress
from activessf_engine.store import PartData, StoreWriter

log = logging.getLogger(__name__)


class _PixelsInFlight:
    """Pixels decoded and not yet filtered. The producer waits while they exceed the batch cap, so tiles
    larger than it are decoded one at a time, never ahead of the filter (memory of one such tile, not three)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pixels = 0
        self.changed = threading.Condition()

    def add(self, pixels: int) -> None:
        with self.changed:
            self.pixels += pixels

    def done(self, pixels: int) -> None:
        with self.changed:
            self.pixels -= pixels
            self.changed.notify_all()

    def wait_below_limit(self, stop: threading.Event) -> None:
        with self.changed:
            while self.pixels > self.limit and not stop.is_set():
                self.changed.wait(timeout=0.2)


def _pixels(images: list[DecodedImage]) -> int:
    return sum(image.width * image.height for image in images if image.image is not None)


def _put(out: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Hand `item` over unless the consumer has stopped; False when it has."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _decode_parts(
    parts: list[tuple[int, list[Source]]],
    config: EngineConfig,
    device: DeviceChoice,
    times: StageTimes,
    out: queue.Queue,
    stop: threading.Event,
    in_flight: _PixelsInFlight,
) -> None:
    """Producer: decode the pending parts batch by batch (`decode_batches`: bounded in files and pixels)
    and hand over (part, sources, images, last); None marks the end, an exception is handed over too.
    Stops between batches once `stop` is set, so the decoder is released in this thread, never torn
    down mid-batch by the interpreter's exit."""
    try:
        decoder = make_decoder(config.input.batch_size, config.input.threads, device)
        for index, sources in parts:
            batches = timed(decode_part(sources, config, device, decoder), times, "decode")
            done = 0
            while True:
                in_flight.wait_below_limit(stop)
                batch, images = next(batches, (None, None))
                if images is None:
                    break
                done += len(images)
                in_flight.add(_pixels(images))
                if not _put(out, (index, batch, images, done == len(sources)), stop):
                    return
        _put(out, None, stop)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        _put(out, exc, stop)


def _commit(writer: StoreWriter, index: int, data: PartData, times: StageTimes) -> None:
    start = time.perf_counter()
    writer.commit_part(index, data)
    times.seconds["write"] += time.perf_counter() - start


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _consume(q: queue.Queue) -> Iterator[tuple[int, list[Source], list[DecodedImage], bool]]:
    while True:
        item = q.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def run_filter(
    input_path: str | Path,
    out: str | Path,
    config: EngineConfig,
    *,
    device: DeviceChoice | str | torch.device = "cpu",
    progress: bool | Progress = False,
    overwrite: bool = False,
) -> FilterSummary:
    """Cell Region Filtering of every image under `input_path` into the ROI store at `out`.

    Resumes a store that an earlier run left incomplete: parts already committed are not redone.
    Each worker sizes torch's, numba's and the decoder's threads to its share of the cores while it filters
    (`workers.compute_threads`), and restores them after.
    `device` is a choice made by `device.resolve_device` (or a name, resolved here), and fixes the decoder.
    """
    return _run_filter(input_path, out, config, as_choice(device), progress, overwrite)


def dry_run_filter(
    input_path: str | Path,
    config: EngineConfig,
    limit: int,
    *,
    device: DeviceChoice | str | torch.device = "cpu",
    progress: bool | Progress = False,
) -> FilterSummary:
    """Cell Region Filtering of the first `limit` sources under `input_path` (in path order), writing nothing:
    the summary of `run_filter` (rejection counts, sources without ROI), to try settings on a few tiles."""
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    started = time.perf_counter()
    device = as_choice(device)
    sources = find_inputs(input_path, config)[0][:limit]
    summary = FilterSummary(store="", device=str(device.torch_device), sources_total=len(sources), dry_run=True)
    summary.device_choice = {**device.describe(), "host_work": host_work(config, device)}
    times = StageTimes(sync=torch.cuda.synchronize if device.kind == "cuda" else (lambda: None))
    bar = make_progress(progress, len(sources), "img", "filter (dry run)")
    with compute_threads(config, thread_budget(1)) as config, contextlib.closing(bar):
        decoder = make_decoder(config.input.batch_size, config.input.threads, device)
        by_path = {s.relpath: s for s in sources}
        for paths in plan_parts(sources, config.store.sources_per_part):  # a part: tile files, or one slide's tiles
            for batch, images in decode_part([by_path[p] for p in paths], config, device, decoder):
                found = batch_regions(batch, images, config, times)
                rows = [
                    source_record(s, image, owned_regions(s, found.get(i)))
                    for i, (s, image) in enumerate(zip(batch, images, strict=True))
                ]
                summary.record(rows, config.filter.min_box)
                summary.rois += sum(row["rois"] for row in rows)
                bar.update(len(batch))
    summary.stage_seconds = {k: round(v, 4) for k, v in times.seconds.items()}
    summary.wall_seconds = time.perf_counter() - started
    return summary


def _run_filter(
    input_path: str | Path,
    out: str | Path,
    config: EngineConfig,
    device: DeviceChoice,
    progress: bool | Progress,
    overwrite: bool,
) -> FilterSummary:
    started = time.perf_counter()
    prepared = prepare_filter(input_path, out, config)
    with prepared.open_store(out, config, overwrite) as writer:
        pending = prepared.pending(writer.root)
        summary = prepared.start_summary(out, str(device.torch_device), pending)
        workers = worker_count(config, pending, device)
        summary.device_choice = {**device.describe(), "host_work": host_work(config, device), "processes": workers}
        if workers > 1:
            _filter_in_workers(writer, pending, config, device, workers, progress, summary)
        else:
            with compute_threads(config, thread_budget(1)) as sized:  # the cores this process may run on
                _filter_into(writer, pending, sized, device, progress, summary)
        prepared.finish_summary(summary, writer, started)
    return summary


def _filter_in_workers(
    writer: StoreWriter,
    pending: list[tuple[int, list[Source]]],
    config: EngineConfig,
    device: DeviceChoice,
    workers: int,
    progress: bool | Progress,
    summary: FilterSummary,
) -> None:
    """The filter run proper on `workers` processes, into a store whose lock `writer` holds."""
    bar = make_progress(progress, sum(len(s) for _, s in pending), "img", f"filter ({workers} workers)")
    try:
        for part in filter_in_processes(str(writer.root), pending, config, device, workers):
            summary.absorb(part)
            bar.update(part.sources_read + part.sources_skipped)
            bar.set_postfix_str(f"rois={summary.rois}")
    finally:
        writer.clean_temporary()  # what a worker that died mid-part left half-written
        bar.close()


def _filter_into(
    writer: StoreWriter,
    pending: list[tuple[int, list[Source]]],
    config: EngineConfig,
    device: DeviceChoice,
    progress: bool | Progress,
    summary: FilterSummary,
) -> None:
    """The filter run proper, into a store whose lock `writer` holds: decoding in a producer thread,
    filtering here, each part committed in a writer thread while the next one is filtered."""
    times = StageTimes(sync=torch.cuda.synchronize if device.kind == "cuda" else (lambda: None))
    bar = make_progress(progress, sum(len(s) for _, s in pending), "img", "filter")
    handoff: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    in_flight = _PixelsInFlight(config.input.max_batch_pixels)
    producer = threading.Thread(
        target=_decode_parts,
        args=(pending, config, device, times, handoff, stop, in_flight),
        name="decode",
        daemon=True,
    )
    producer.start()
    part = PartBuilder(config.crop.size)
    committing: Future | None = None  # one commit in flight, written while the next part is filtered
    committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
    try:
        for index, batch, images, last in _consume(handoff):
            rows = filter_batch(batch, images, config, times, part)
            in_flight.done(_pixels(images))
            summary.record(rows, config.filter.min_box)
            bar.update(len(batch))
            if last:
                data = part.finish()
                if committing is not None:
                    committing.result()  # raises what the previous commit raised
                committing = committer.submit(_commit, writer, index, data, times)
                summary.rois += len(data.rois)
                bar.set_postfix_str(f"rois={summary.rois}")
                part = PartBuilder(config.crop.size)
        if committing is not None:
            committing.result()
    finally:
        stop.set()
        _drain(handoff)  # a producer waiting to hand over a batch sees `stop` and ends
        producer.join()
        committer.shutdown(wait=True)  # a commit in flight finishes (it is all or nothing anyway)
        bar.close()
    summary.stage_seconds = {k: round(v, 4) for k, v in times.seconds.items()}
