"""Cell Region Filtering (II-B): tiles and slides found, decoded, filtered into regions, cropped, stored by parts."""

from activessf_engine.filter.crops import cut_rois, fit_to_square
from activessf_engine.filter.decode import Decoder, decode_files, make_decoder
from activessf_engine.filter.part import filter_part
from activessf_engine.filter.plan import prepare_filter
from activessf_engine.filter.regions import (
    Quantized,
    StageTimes,
    TileRegions,
    find_regions,
    grow_boxes,
    hsv_masks,
    quantize,
    regions_of_masks,
)
from activessf_engine.filter.run import dry_run_filter, run_filter
from activessf_engine.filter.sources import Source, find_sources
from activessf_engine.filter.summary import REJECTION_COUNTS, FilterSummary

__all__ = [
    "REJECTION_COUNTS",
    "Decoder",
    "FilterSummary",
    "Quantized",
    "Source",
    "StageTimes",
    "TileRegions",
    "cut_rois",
    "decode_files",
    "dry_run_filter",
    "filter_part",
    "find_regions",
    "find_sources",
    "fit_to_square",
    "grow_boxes",
    "hsv_masks",
    "make_decoder",
    "prepare_filter",
    "quantize",
    "regions_of_masks",
    "run_filter",
]
