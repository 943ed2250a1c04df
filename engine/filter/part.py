"""One part of a filter run: its sources decoded, filtered and cropped in batches, then committed whole."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np

from activessf_engine.config import EngineConfig
from activessf_engine.device import DeviceChoice
from activessf_engine.filter.crops import cut_rois
from activessf_engine.filter.decode import DecodedImage, Decoder, decode_batches
from activessf_engine.filter.regions import StageTimes, TileRegions, find_regions
from activessf_engine.filter.slides import read_tile_batches, scaled_filter
from activessf_engine.filter.sources import Source
from activessf_engine.filter.summary import REJECTION_COUNTS, FilterSummary
from activessf_engine.store import ROI_COLUMNS, PartData, RoiStore, StoreWriter, committed_parts

T = TypeVar("T")


def filter_part(
    writer: StoreWriter, index: int, sources: list[Source], config: EngineConfig, device: DeviceChoice, decoder: Decoder
) -> FilterSummary:
    """Decode, filter, crop and commit one part in this process (a Dask task's work); its summary.

    A part already committed (a task run again after its worker died past the commit) is left as it is, and
    its summary is read back from the part's sources table.
    """
    summary = FilterSummary(store=str(writer.root), device=str(device.torch_device))
    if index in set(committed_parts(writer.root)):
        summary.record_committed(RoiStore(writer.root).part_attrs(index), config.filter.min_box)
        return summary
    times = StageTimes()
    part = PartBuilder(config.crop.size)
    for batch, images in timed(decode_part(sources, config, device, decoder), times, "decode"):
        summary.record(filter_batch(batch, images, config, times, part), config.filter.min_box)
    data = part.finish()
    start = time.perf_counter()
    writer.commit_part(index, data)
    times.seconds["write"] += time.perf_counter() - start
    summary.rois = len(data.rois)
    summary.stage_seconds = {k: round(v, 4) for k, v in times.seconds.items()}
    return summary


def decode_part(
    sources: list[Source], config: EngineConfig, device: DeviceChoice, decoder: Decoder
) -> Iterator[tuple[list[Source], list[DecodedImage]]]:
    """The sources of one part decoded (tile files: `decode_batches`) or read (slide tiles: `read_tile_batches`)
    batch by batch, each batch with its sources: the same batches in every kind of run, so the same regions."""
    if sources and sources[0].tile is not None:
        batches = read_tile_batches(sources, config.input, device.torch_device)
    else:
        batches = decode_batches([s.path for s in sources], config.input, device, decoder)
    done = 0
    for images in batches:
        yield sources[done : done + len(images)], images
        done += len(images)


def timed(items: Iterator[T], times: StageTimes, stage: str) -> Iterator[T]:
    """`items` as they come, the wall time spent producing each added to `stage` of `times` (without its
    device sync: the producer may be another thread than the one that computes)."""
    while True:
        start = time.perf_counter()
        item = next(items, None)
        times.seconds[stage] += time.perf_counter() - start
        if item is None:
            return
        yield item


def source_record(source: Source, image: DecodedImage, regions: TileRegions | None) -> dict[str, Any]:
    """One row of a part's sources table: the source, how it was decoded, and what the filter found in it."""
    counts = (
        (0, 0, 0, 0) if regions is None else (len(regions.boxes), regions.found, regions.too_small, regions.low_fill)
    )
    return {
        "path": source.relpath,
        "id": source.id,
        "width": image.width,
        "height": image.height,
        "status": "ok" if image.image is not None else "skipped",
        "error": image.error,
        "decoder": image.decoder,
        "exif_orientation": image.orientation,
        **dict(zip(("rois", *REJECTION_COUNTS), counts, strict=True)),
        **(regions.quality_record() if regions is not None else {}),
        **(source.tile.record() if source.tile is not None else {}),
    }


def owned_regions(source: Source, regions: TileRegions | None) -> TileRegions | None:
    """The regions a source keeps: all of a tile file's; of a slide tile, those whose centre lies in its core
    (its counts of regions found and rejected stay those of the whole tile, overlap included)."""
    if regions is None or source.tile is None:
        return regions
    owned = source.tile.owns(regions.boxes)
    kept = {"boxes": regions.boxes[owned], "areas": regions.areas[owned], "fill_rates": regions.fill_rates[owned]}
    return dataclasses.replace(regions, **kept)


class PartBuilder:
    """Collects the ROIs, columns and sources table of one part, batch by batch."""

    def __init__(self, size: int) -> None:
        self.rois = [np.zeros((0, size, size, 3), np.uint8)]
        self.columns = {name: [np.zeros((0, *shape), dtype)] for name, (dtype, shape) in ROI_COLUMNS.items()}
        self.table: list[dict[str, Any]] = []

    def add(
        self, source: Source, image: DecodedImage, regions: TileRegions | None, config: EngineConfig
    ) -> dict[str, Any]:
        """Crop the regions of one tile into the part (`owned_regions`); returns the source's row of the sources
        table."""
        tile = source.tile
        regions = owned_regions(source, regions)
        count = 0 if regions is None else len(regions.boxes)
        if count:
            cut, crop_boxes, padding = cut_rois(image.image, regions.boxes, config.crop)
            self.rois.append(cut)
            for name, values in (
                ("box", regions.boxes),
                ("crop_box", crop_boxes),
                ("pad", padding),
                ("area", regions.areas),
                ("fill_rate", regions.fill_rates),
                ("source", np.full(count, len(self.table))),
                ("level0_box", regions.boxes if tile is None else tile.level0_boxes(regions.boxes)),
            ):
                self.columns[name].append(values)
        self.table.append(source_record(source, image, regions))
        return self.table[-1]

    def finish(self) -> PartData:
        return PartData(
            rois=np.concatenate(self.rois),
            columns={name: np.concatenate(v).astype(ROI_COLUMNS[name][0]) for name, v in self.columns.items()},
            sources=self.table,
        )


def filter_batch(
    sources: list[Source], images: list[DecodedImage], config: EngineConfig, times: StageTimes, part: PartBuilder
) -> list[dict[str, Any]]:
    """Regions of every decoded tile of a batch, cut into ROIs and added to its part; the batch's sources rows."""
    found = batch_regions(sources, images, config, times)
    t0 = time.perf_counter()
    rows = [
        part.add(source, image, found.get(i), config)
        for i, (source, image) in enumerate(zip(sources, images, strict=True))
    ]
    times.lap("crops", t0)
    return rows


def batch_regions(
    sources: list[Source], images: list[DecodedImage], config: EngineConfig, times: StageTimes
) -> dict[int, TileRegions]:
    """The regions of each decoded image of a batch, by its index in the batch (images not decoded are absent).
    The tiles of a batch are of one part, so of one slide (whose level scales the filter's pixel sizes) or tile
    files."""
    ok = [i for i, img in enumerate(images) if img.image is not None]
    filter_config = scaled_filter(config, sources[0].tile if sources else None)
    return dict(zip(ok, find_regions([images[i].image for i in ok], filter_config, times), strict=True))
