"""The filter run: sources -> decode -> regions -> crops -> store, part by part, resumable.

This module alone owns threads, queues, progress and I/O order. Decoding of the next part runs in a
background thread while the current part is filtered, cropped and committed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activessf_engine.config import EngineConfig, output_differences, to_dict
from activessf_engine.crops import cut_rois
from activessf_engine.decode import DecodedImage, decode_batches, make_decoder
from activessf_engine.device import DeviceChoice, as_choice, host_work
from activessf_engine.progress import Progress, make_progress
from activessf_engine.regions import StageTimes, TileRegions, find_regions
from activessf_engine.sources import Source, find_sources
from activessf_engine.store import ROI_COLUMNS, PartData, StoreWriter

log = logging.getLogger(__name__)


@dataclass
class FilterSummary:
    """What a filter run did; `to_json()` is the machine-readable summary."""

    store: str
    device: str
    device_choice: dict[str, Any] = field(default_factory=dict)
    sources_total: int = 0
    parts_total: int = 0
    parts_already_done: int = 0
    sources_read: int = 0
    sources_skipped: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    rois: int = 0
    megapixels: float = 0.0
    wall_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    decoders: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.sources_read / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.wall_seconds if self.wall_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "images_per_second": round(self.images_per_second, 2),
            "megapixels_per_second": round(self.megapixels_per_second, 3),
        }


def plan_parts(sources: list[Source], sources_per_part: int) -> list[list[str]]:
    """Sources, sorted by path, cut into consecutive parts."""
    paths = [s.relpath for s in sources]
    return [paths[i : i + sources_per_part] for i in range(0, len(paths), sources_per_part)]


def _reason_kind(error: str) -> str:
    return error.split(":", 1)[0]


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
) -> None:
    """Producer: decode the pending parts batch by batch (`decode_batches`: bounded in files and pixels)
    and hand over (part, sources, images, last); None marks the end, an exception is handed over too.
    Stops between batches once `stop` is set, so the decoder is released in this thread, never torn
    down mid-batch by the interpreter's exit."""
    try:
        decoder = make_decoder(config.input.batch_size, config.input.threads, device)
        for index, sources in parts:
            done = 0
            batches = decode_batches([s.path for s in sources], config.input, device, decoder)
            while True:
                t0 = time.perf_counter()
                images = next(batches, None)
                times.seconds["decode"] += time.perf_counter() - t0
                if images is None:
                    break
                batch = sources[done : done + len(images)]
                done += len(images)
                if not _put(out, (index, batch, images, done == len(sources)), stop):
                    return
        _put(out, None, stop)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        _put(out, exc, stop)


def _source_record(source: Source, image: DecodedImage, rois: int) -> dict[str, Any]:
    """One row of a part's sources table."""
    return {
        "path": source.relpath,
        "id": source.id,
        "width": image.width,
        "height": image.height,
        "status": "ok" if image.image is not None else "skipped",
        "error": image.error,
        "decoder": image.decoder,
        "exif_orientation": image.orientation,
        "rois": rois,
    }


class _PartBuilder:
    """Collects the ROIs, columns and sources table of one part, batch by batch."""

    def __init__(self, size: int) -> None:
        self.rois = [np.zeros((0, size, size, 3), np.uint8)]
        self.columns = {name: [np.zeros((0, *shape), dtype)] for name, (dtype, shape) in ROI_COLUMNS.items()}
        self.table: list[dict[str, Any]] = []

    def add(self, source: Source, image: DecodedImage, regions: TileRegions | None, config: EngineConfig) -> None:
        count = 0 if regions is None else len(regions.boxes)
        if count:
            cut, crop_boxes = cut_rois(image.image, regions.boxes, config.crop)
            self.rois.append(cut)
            for name, values in (
                ("box", regions.boxes),
                ("crop_box", crop_boxes),
                ("area", regions.areas),
                ("fill_rate", regions.fill_rates),
                ("source", np.full(count, len(self.table))),
            ):
                self.columns[name].append(values)
        self.table.append(_source_record(source, image, count))

    def finish(self) -> PartData:
        return PartData(
            rois=np.concatenate(self.rois),
            columns={name: np.concatenate(v).astype(ROI_COLUMNS[name][0]) for name, v in self.columns.items()},
            sources=self.table,
        )


def _filter_batch(
    sources: list[Source], images: list[DecodedImage], config: EngineConfig, times: StageTimes, part: _PartBuilder
) -> None:
    """Regions of every decoded tile of a batch, cut into ROIs and added to its part."""
    ok = [i for i, img in enumerate(images) if img.image is not None]
    found = dict(zip(ok, find_regions([images[i].image for i in ok], config.filter, times), strict=True))
    t0 = time.perf_counter()
    for i, (source, image) in enumerate(zip(sources, images, strict=True)):
        part.add(source, image, found.get(i), config)
    times.lap("crops", t0)


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
    torch's intra-op thread count is set to `config.input.torch_threads` for the run and restored.
    `device` is a choice made by `device.resolve_device` (or a name, resolved here), and fixes the decoder.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.input.torch_threads))
    try:
        return _run_filter(input_path, out, config, as_choice(device), progress, overwrite)
    finally:
        torch.set_num_threads(threads)


def _run_filter(
    input_path: str | Path,
    out: str | Path,
    config: EngineConfig,
    device: DeviceChoice,
    progress: bool | Progress,
    overwrite: bool,
) -> FilterSummary:
    started = time.perf_counter()
    input_root, store_root = Path(input_path).resolve(), Path(out).resolve()
    if store_root == input_root or store_root in input_root.parents:
        raise ValueError(f"--out {out} holds the input {input_path}: choose an --out outside the input folder")
    sources = find_sources(input_path, config.input.extensions, exclude=store_root)
    if not sources:
        raise FileNotFoundError(f"no images ({', '.join(config.input.extensions)}) found under {input_path}")
    plan = plan_parts(sources, config.store.sources_per_part)
    attrs = {"config": to_dict(config), "input_root": str(input_root)}

    def same_output(meta: dict[str, Any]) -> list[str]:
        differences = output_differences(meta.get("config", {}), attrs["config"])
        if meta.get("input_root") not in (None, attrs["input_root"]):
            differences.append(f"input {meta['input_root']!r} -> {attrs['input_root']!r}")
        return differences

    writer = StoreWriter.create(
        out, "candidates", attrs, plan, layout=config.store, overwrite=overwrite, same_output=same_output
    )
    try:
        return _filter_into(writer, sources, plan, config, device, progress, started)
    finally:
        writer.close()


def _filter_into(
    writer: StoreWriter,
    sources: list[Source],
    plan: list[list[str]],
    config: EngineConfig,
    device: DeviceChoice,
    progress: bool | Progress,
    started: float,
) -> FilterSummary:
    """The filter run proper, into a store whose lock `writer` holds."""
    out = writer.root
    done = writer.committed_parts()
    by_path = {s.relpath: s for s in sources}
    pending = [(i, [by_path[p] for p in paths]) for i, paths in enumerate(plan) if i not in done]
    summary = FilterSummary(
        store=str(out),
        device=str(device.torch_device),
        device_choice={**device.describe(), "host_work": host_work(config, device)},
        sources_total=len(sources),
        parts_total=len(plan),
        parts_already_done=len(done),
    )
    times = StageTimes(sync=torch.cuda.synchronize if device.kind == "cuda" else (lambda: None))
    bar = make_progress(progress, sum(len(s) for _, s in pending), "img", "filter")
    handoff: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    producer = threading.Thread(
        target=_decode_parts, args=(pending, config, device, times, handoff, stop), name="decode", daemon=True
    )
    producer.start()
    reasons: Counter[str] = Counter()
    decoders: Counter[str] = Counter()
    part = _PartBuilder(config.crop.size)
    committing: Future | None = None  # one commit in flight, written while the next part is filtered
    committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
    try:
        for index, batch, images, last in _consume(handoff):
            _filter_batch(batch, images, config, times, part)
            for source, img in zip(batch, images, strict=True):
                if img.image is None:
                    summary.sources_skipped += 1
                    summary.skipped.append({"path": source.relpath, "error": img.error})
                    reasons[_reason_kind(img.error)] += 1
                    log.warning("skipped %s: %s", source.relpath, img.error)
                else:
                    summary.sources_read += 1
                    summary.megapixels += img.width * img.height / 1e6
                    decoders[img.decoder] += 1
            bar.update(len(batch))
            if last:
                data = part.finish()
                if committing is not None:
                    committing.result()  # raises what the previous commit raised
                committing = committer.submit(_commit, writer, index, data, times)
                summary.rois += len(data.rois)
                bar.set_postfix_str(f"rois={summary.rois}")
                part = _PartBuilder(config.crop.size)
        if committing is not None:
            committing.result()
    finally:
        stop.set()
        _drain(handoff)  # a producer waiting to hand over a batch sees `stop` and ends
        producer.join()
        committer.shutdown(wait=True)  # a commit in flight finishes (it is all or nothing anyway)
        bar.close()
    summary.skip_reasons = dict(reasons)
    summary.decoders = dict(decoders)
    summary.stage_seconds = {k: round(v, 4) for k, v in times.seconds.items()}
    summary.wall_seconds = time.perf_counter() - started
    return summary
