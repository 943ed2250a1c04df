"""Cell Region Filtering by parts: the plan, one part's decode-filter-crop-commit, and the run's summary.

Shared by the threaded single-process run (`pipeline`) and the Dask run (`distributed`): both cut the
sources into the same parts and decode each part in the same batches, so they make the same store.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from activessf_engine.config import EngineConfig, output_differences, to_dict
from activessf_engine.crops import cut_rois
from activessf_engine.decode import DecodedImage, Decoder, decode_batches
from activessf_engine.device import DeviceChoice
from activessf_engine.regions import StageTimes, TileRegions, find_regions
from activessf_engine.slides import expand_slides, plan_groups, read_tile_batches, scaled_filter
from activessf_engine.sources import Source, find_sources
from activessf_engine.store import FORMAT_VERSION, ROI_COLUMNS, PartData, RoiStore, StoreWriter, committed_parts

log = logging.getLogger(__name__)

REJECTION_COUNTS = ("regions_found", "rejected_size", "rejected_fill")  # per source in its table row, summed in a run


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
    tiles_below_min_box: int = 0  # tiles whose shorter side is under filter.min_box: no region can pass there
    # What the filter did with the regions of the tiles read (kept ones are `rois`): components of the masks,
    # rejected for a box under min_box, rejected for a fill rate under min_fill.
    regions_found: int = 0
    rejected_size: int = 0
    rejected_fill: int = 0
    sources_without_roi: list[str] = field(default_factory=list)  # read, but no region kept
    store_rois: int = 0  # ROIs the store holds after the run (a resumed run's earlier parts included)
    dry_run: bool = False  # `filter --limit N`: a few tiles filtered, no store written
    slides: int = 0  # whole slides among the inputs (each read as tiles, which count as sources)
    background_tiles: int = 0  # slide tiles not read: no smear on them on the slide's thumbnail

    @property
    def images_per_second(self) -> float:
        return self.sources_read / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.wall_seconds if self.wall_seconds else 0.0

    def record(self, rows: list[dict[str, Any]], min_box: int) -> None:
        """Count the sources-table rows of a filtered batch: sources read (with their pixels, decoder and
        regions) and skipped (with why)."""
        for row in rows:
            self._count(row, min_box)
            if row["status"] != "ok":
                log.warning("skipped %s: %s", row["path"], row["error"])

    def record_committed(self, part_attrs: dict[str, Any], min_box: int) -> None:
        """Count a part already committed, from its attributes (the sources table written with it)."""
        for row in part_attrs["sources"]:
            self._count(row, min_box)
        self.rois += int(part_attrs["rois"])

    def _count(self, row: dict[str, Any], min_box: int) -> None:
        """Count one row of a sources table (`source_record`; stores made before the rejection counts lack them)."""
        if row["status"] == "ok":
            self.tiles_below_min_box += min(row["width"], row["height"]) < min_box
            for name in REJECTION_COUNTS:
                setattr(self, name, getattr(self, name) + row.get(name, 0))
            if not row["rois"]:
                self.sources_without_roi.append(row["path"])
            self.sources_read += 1
            self.megapixels += row["width"] * row["height"] / 1e6
            self.decoders[row["decoder"]] = self.decoders.get(row["decoder"], 0) + 1
        else:
            self.sources_skipped += 1
            self.skipped.append({"path": row["path"], "error": row["error"]})
            kind = row["error"].split(":", 1)[0]
            self.skip_reasons[kind] = self.skip_reasons.get(kind, 0) + 1

    def absorb(self, part: FilterSummary) -> None:
        """Add the counts of one part's summary (a Dask task's) to this run's."""
        for name in ("sources_read", "sources_skipped", "rois", "megapixels", "tiles_below_min_box", *REJECTION_COUNTS):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.skipped += part.skipped
        self.sources_without_roi += part.sources_without_roi
        for mine, theirs in ((self.skip_reasons, part.skip_reasons), (self.decoders, part.decoders)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count
        for stage, seconds in part.stage_seconds.items():
            self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + seconds, 4)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "images_per_second": round(self.images_per_second, 2),
            "megapixels_per_second": round(self.megapixels_per_second, 3),
        }


def plan_parts(sources: list[Source], sources_per_part: int) -> list[list[str]]:
    """Sources, sorted by path, cut into consecutive parts; a part holds tile files or tiles of one slide."""
    return [
        [s.relpath for s in group[i : i + sources_per_part]]
        for group in plan_groups(sources)
        for i in range(0, len(group), sources_per_part)
    ]


@dataclass
class FilterPlan:
    """What a filter run will do, settled before any store is touched."""

    sources: list[Source]
    plan: list[list[str]]  # relative paths of the sources of each part
    attrs: dict[str, Any]  # the store's attributes: config, input root and slides table

    def same_output(self, meta: dict[str, Any]) -> list[str]:
        """Why an existing store's parts would differ from this run's (a resume is refused if any)."""
        differences = output_differences(meta.get("config", {}), self.attrs["config"])
        if meta.get("format") != FORMAT_VERSION:  # its ROIs were cut another way
            differences.append(f"store format {meta.get('format')} -> {FORMAT_VERSION}")
        if meta.get("input_root") not in (None, self.attrs["input_root"]):
            differences.append(f"input {meta['input_root']!r} -> {self.attrs['input_root']!r}")
        return differences

    def open_store(self, out: str | Path, config: EngineConfig, overwrite: bool) -> StoreWriter:
        """Create or reopen the candidates store at `out`, holding its lock."""
        return StoreWriter.create(
            out,
            "candidates",
            self.attrs,
            self.plan,
            layout=config.store,
            overwrite=overwrite,
            same_output=self.same_output,
        )

    def start_summary(self, out: str | Path, device: str, pending: list[tuple[int, list[Source]]]) -> FilterSummary:
        """The run's summary before any part is done."""
        return FilterSummary(
            store=str(out),
            device=device,
            sources_total=len(self.sources),
            parts_total=len(self.plan),
            parts_already_done=len(self.plan) - len(pending),
            slides=len(self.attrs["slides"]),
            background_tiles=sum(row["background_tiles"] for row in self.attrs["slides"]),
        )

    def finish_summary(self, summary: FilterSummary, writer: StoreWriter, started: float) -> None:
        """Close the run's summary (wall time, the ROIs the store now holds) and record it in the store's
        attributes (`runs`), where `report` reads the throughput of each stage."""
        summary.wall_seconds = time.perf_counter() - started
        summary.store_rois = len(RoiStore(writer.root))
        record = summary.to_json()
        for name in ("skipped", "sources_without_roi"):  # in the parts' sources tables already
            record[name] = len(record[name])
        writer.record_run(record)

    def pending(self, root: str | Path) -> list[tuple[int, list[Source]]]:
        """(part index, sources) of every part of the plan not committed in the store at `root`."""
        done = set(committed_parts(root))
        by_path = {s.relpath: s for s in self.sources}
        return [(i, [by_path[p] for p in paths]) for i, paths in enumerate(self.plan) if i not in done]


def find_inputs(
    input_path: str | Path, config: EngineConfig, exclude: Path | None = None
) -> tuple[list[Source], list[dict[str, Any]]]:
    """The sources under `input_path`, each slide as its tiles, and the slides' records."""
    suffixes = (*config.input.extensions, *config.input.slide_extensions)
    found = find_sources(input_path, suffixes, exclude=exclude)
    if not found:
        raise FileNotFoundError(f"no images or slides ({', '.join(suffixes)}) found under {input_path}")
    return expand_slides(found, config.input)


def prepare_filter(input_path: str | Path, out: str | Path, config: EngineConfig) -> FilterPlan:
    """The sources under `input_path` (each slide as its tiles) and their plan of parts; refuses an `out` that
    holds the input."""
    input_root, store_root = Path(input_path).resolve(), Path(out).resolve()
    if store_root == input_root or store_root in input_root.parents:
        raise ValueError(f"--out {out} holds the input {input_path}: choose an --out outside the input folder")
    sources, slides = find_inputs(input_path, config, exclude=store_root)
    plan = plan_parts(sources, config.store.sources_per_part)
    return FilterPlan(sources, plan, {"config": to_dict(config), "input_root": str(input_root), "slides": slides})


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
    for batch, images in decode_part(sources, config, device, decoder):
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
    filter_config = scaled_filter(config.filter, sources[0].tile if sources else None)
    return dict(zip(ok, find_regions([images[i].image for i in ok], filter_config, times), strict=True))
