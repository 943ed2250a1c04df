"""The plan of a filter run: its sources, cut into parts, settled before any store is touched.

Shared by the threaded single-process run (`run`) and the Dask run (`distributed`): both cut the
sources into the same parts and decode each part in the same batches, so they make the same store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activessf_engine.config import EngineConfig, output_differences, to_dict
from activessf_engine.filter.decode import why_unreadable
from activessf_engine.filter.slides import expand_slides, plan_groups
from activessf_engine.filter.sources import Source, find_sources
from activessf_engine.filter.summary import FilterSummary
from activessf_engine.store import FORMAT_VERSION, RoiStore, StoreWriter, committed_parts


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
        """Create or reopen the candidates store at `out`, holding its lock; `overwrite` never deletes a source
        (a list may name images inside `out`)."""
        return StoreWriter.create(
            out,
            "candidates",
            self.attrs,
            self.plan,
            layout=config.store,
            overwrite=overwrite,
            same_output=self.same_output,
            inputs=[source.path for source in self.sources] if overwrite else (),
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
        # lists of paths, each in the parts' sources tables already: counted here
        for name in ("skipped", "sources_without_roi", "out_of_focus", "stain_left_as_read"):
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
    """The sources under `input_path`, each slide as its tiles, and the slides' records. An input in which
    no source is an image (every header read until one is) stops here, before any store is made."""
    suffixes = (*config.input.extensions, *config.input.slide_extensions)
    found = find_sources(input_path, suffixes, exclude=exclude)
    if not found:
        raise FileNotFoundError(f"no images or slides ({', '.join(suffixes)}) found under {input_path}")
    sources, slides = expand_slides(found, config.input)
    if not any(_readable(source, config) for source in sources):
        first = sources[0]
        why = first.tile.error if first.tile is not None else why_unreadable(first.path, config.input)
        raise ValueError(
            f"none of the {len(sources)} source(s) under {input_path} is a readable image (the first, "
            f"{first.relpath}: {why}); nothing written"
        )
    return sources, slides


def _readable(source: Source, config: EngineConfig) -> bool:
    if source.tile is not None:
        return source.tile.error is None
    return why_unreadable(source.path, config.input) is None


def prepare_filter(input_path: str | Path, out: str | Path, config: EngineConfig) -> FilterPlan:
    """The sources under `input_path` (each slide as its tiles) and their plan of parts; refuses an `out` that
    holds the input."""
    input_root, store_root = Path(input_path).resolve(), Path(out).resolve()
    if store_root == input_root or store_root in input_root.parents:
        raise ValueError(f"--out {out} holds the input {input_path}: choose an --out outside the input folder")
    sources, slides = find_inputs(input_path, config, exclude=store_root)
    plan = plan_parts(sources, config.store.sources_per_part)
    return FilterPlan(sources, plan, {"config": to_dict(config), "input_root": str(input_root), "slides": slides})
