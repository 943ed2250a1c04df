"""Cell Region Filtering (II-B): tiles and slides found, decoded, filtered into regions, cropped, stored by parts."""

from activessf_engine import lazy_face

# Each name this package offers, and the module that holds it: imported on first use.
_WHERE = {
    "cut_rois": "crops",
    "fit_to_square": "crops",
    "Decoder": "decode",
    "decode_files": "decode",
    "make_decoder": "decode",
    "filter_part": "part",
    "prepare_filter": "plan",
    "StageTimes": "regions",
    "TileRegions": "regions",
    "find_regions": "regions",
    "grow_boxes": "regions",
    "regions_of_masks": "regions",
    "smoothed": "regions",
    "dry_run_filter": "run",
    "run_filter": "run",
    "Source": "sources",
    "find_sources": "sources",
    "FilterSummary": "summary",
    "REJECTION_COUNTS": "summary",
    "filter_part_task": "workers",
    "kept_per_thread": "workers",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_face(__name__, _WHERE)
