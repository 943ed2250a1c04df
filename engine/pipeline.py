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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activessf_engine.config import EngineConfig, to_dict
from activessf_engine.crops import cut_rois
from activessf_engine.decode import DecodedImage, decode_files, make_decoder
from activessf_engine.progress import Progress, make_progress
from activessf_engine.regions import StageTimes, find_regions
from activessf_engine.sources import Source, find_sources
from activessf_engine.store import PartData, StoreWriter

log = logging.getLogger(__name__)


@dataclass
class FilterSummary:
    """What a filter run did; `to_json()` is the machine-readable summary."""

    store: str
    device: str
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


def _decode_parts(
    parts: list[tuple[int, list[Source]]],
    config: EngineConfig,
    device: torch.device,
    times: StageTimes,
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    """Producer: decode each pending part in order and hand it over; None marks the end."""
    try:
        decoder = make_decoder(config.input.batch_size, config.input.threads, device)
        for index, sources in parts:
            start = time.perf_counter()
            images = list(decode_files([s.path for s in sources], config.input, device, decoder))
            times.seconds["decode"] += time.perf_counter() - start
            while not stop.is_set():
                try:
                    out.put((index, sources, images), timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(None)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        out.put(exc)


def _filter_part(
    sources: list[Source], images: list[DecodedImage], config: EngineConfig, times: StageTimes
) -> tuple[PartData, list[dict[str, Any]]]:
    ok = [i for i, img in enumerate(images) if img.image is not None]
    found: dict[int, Any] = {}
    for start in range(0, len(ok), config.input.batch_size):
        batch = ok[start : start + config.input.batch_size]
        for i, regions in zip(batch, find_regions([images[i].image for i in batch], config.filter, times), strict=True):
            found[i] = regions
    t0 = time.perf_counter()
    rois, columns, table = [], {k: [] for k in ("box", "crop_box", "area", "fill_rate", "source")}, []
    for i, (src, img) in enumerate(zip(sources, images, strict=True)):
        record = {
            "path": src.relpath,
            "id": src.id,
            "width": img.width,
            "height": img.height,
            "status": "ok" if img.image is not None else "skipped",
            "error": img.error,
            "decoder": img.decoder,
            "rois": 0,
        }
        if i in found and len(found[i].boxes):
            regions = found[i]
            cut, crop_boxes = cut_rois(img.image, regions.boxes, config.crop)
            rois.append(cut)
            columns["box"].append(regions.boxes)
            columns["crop_box"].append(crop_boxes)
            columns["area"].append(regions.areas)
            columns["fill_rate"].append(regions.fill_rates)
            columns["source"].append(np.full(len(cut), i))
            record["rois"] = len(cut)
        table.append(record)
    size = config.crop.size
    data = PartData(
        rois=np.concatenate(rois) if rois else np.zeros((0, size, size, 3), np.uint8),
        columns={
            "box": np.concatenate(columns["box"]).astype(np.int32) if rois else np.zeros((0, 4), np.int32),
            "crop_box": np.concatenate(columns["crop_box"]).astype(np.int32) if rois else np.zeros((0, 4), np.int32),
            "area": np.concatenate(columns["area"]).astype(np.int64) if rois else np.zeros(0, np.int64),
            "fill_rate": np.concatenate(columns["fill_rate"]).astype(np.float32) if rois else np.zeros(0, np.float32),
            "source": np.concatenate(columns["source"]).astype(np.int32) if rois else np.zeros(0, np.int32),
        },
        sources=table,
    )
    times.lap("crops", t0)
    return data, table


def _consume(q: queue.Queue) -> Iterator[tuple[int, list[Source], list[DecodedImage]]]:
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
    device: torch.device | str = "cpu",
    progress: bool | Progress = False,
    overwrite: bool = False,
) -> FilterSummary:
    """Cell Region Filtering of every image under `input_path` into the ROI store at `out`.

    Resumes a store that an earlier run left incomplete: parts already committed are not redone.
    torch's intra-op thread count is set to `config.input.torch_threads` for the run and restored.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.input.torch_threads))
    try:
        return _run_filter(input_path, out, config, torch.device(device), progress, overwrite)
    finally:
        torch.set_num_threads(threads)


def _run_filter(
    input_path: str | Path,
    out: str | Path,
    config: EngineConfig,
    device: torch.device,
    progress: bool | Progress,
    overwrite: bool,
) -> FilterSummary:
    started = time.perf_counter()
    sources = find_sources(input_path, config.input.extensions)
    if not sources:
        raise FileNotFoundError(f"no images ({', '.join(config.input.extensions)}) found under {input_path}")
    plan = plan_parts(sources, config.store.sources_per_part)
    attrs = {"config": to_dict(config), "input_root": str(Path(input_path).resolve())}
    writer = StoreWriter.create(
        out,
        "candidates",
        attrs,
        plan,
        rois_per_shard=config.store.rois_per_shard,
        compression_level=config.store.compression_level,
        overwrite=overwrite,
    )
    done = writer.committed_parts()
    by_path = {s.relpath: s for s in sources}
    pending = [(i, [by_path[p] for p in paths]) for i, paths in enumerate(plan) if i not in done]
    summary = FilterSummary(
        store=str(out),
        device=str(device),
        sources_total=len(sources),
        parts_total=len(plan),
        parts_already_done=len(done),
    )
    times = StageTimes(sync=torch.cuda.synchronize if device.type == "cuda" else (lambda: None))
    bar = make_progress(progress, sum(len(s) for _, s in pending), "img", "filter")
    handoff: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    producer = threading.Thread(target=_decode_parts, args=(pending, config, device, times, handoff, stop), daemon=True)
    producer.start()
    reasons: Counter[str] = Counter()
    decoders: Counter[str] = Counter()
    try:
        for index, part_sources, images in _consume(handoff):
            data, table = _filter_part(part_sources, images, config, times)
            t0 = time.perf_counter()
            writer.commit_part(index, data)
            times.lap("write", t0)
            for record, img in zip(table, images, strict=True):
                if img.image is None:
                    summary.sources_skipped += 1
                    summary.skipped.append({"path": record["path"], "error": record["error"]})
                    reasons[_reason_kind(record["error"])] += 1
                    log.warning("skipped %s: %s", record["path"], record["error"])
                else:
                    summary.sources_read += 1
                    summary.megapixels += img.width * img.height / 1e6
                    decoders[img.decoder] += 1
            summary.rois += len(data.rois)
            bar.update(len(part_sources))
            bar.set_postfix_str(f"rois={summary.rois}")
    finally:
        stop.set()
        bar.close()
    producer.join()
    summary.skip_reasons = dict(reasons)
    summary.decoders = dict(decoders)
    summary.stage_seconds = {k: round(v, 4) for k, v in times.seconds.items()}
    summary.wall_seconds = time.perf_counter() - started
    return summary
