"""What a filter run did: counts of sources, regions and ROIs, times, and the rejection counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

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
    out_of_focus: list[str] = field(default_factory=list)  # read, sharpness under filter.min_sharpness: no region kept
    stain_left_as_read: list[str] = field(default_factory=list)  # filter.stain set, the tile's stains not measurable
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
            for name in ("out_of_focus", "stain_left_as_read"):
                if row.get(name):
                    getattr(self, name).append(row["path"])
            self.sources_read += 1
            self.megapixels += row["width"] * row["height"] / 1e6
            self.decoders[row["decoder"]] = self.decoders.get(row["decoder"], 0) + 1
        else:
            self.sources_skipped += 1
            self.skipped.append({"path": row["path"], "error": row["error"]})
            kind = row["error"].split(":", 1)[0]
            self.skip_reasons[kind] = self.skip_reasons.get(kind, 0) + 1

    def absorb(self, part: FilterSummary) -> None:
        """Add the counts of one part's summary (a worker's or a Dask task's) to this run's."""
        for name in ("sources_read", "sources_skipped", "rois", "megapixels", "tiles_below_min_box", *REJECTION_COUNTS):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.skipped += part.skipped
        self.sources_without_roi += part.sources_without_roi
        self.out_of_focus += part.out_of_focus
        self.stain_left_as_read += part.stain_left_as_read
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
