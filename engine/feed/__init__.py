"""ROIs for trainers: PyTorch datasets, metadata queries, file exports and a DALI source over a store."""

from activessf_engine import lazy_face

# Each name this package offers, and the module that holds it: imported on first use.
_WHERE = {
    "RoiSource": "dali_source",
    "roi_pipeline": "dali_source",
    "RoiDataset": "datasets",
    "ShardedRoiDataset": "datasets",
    "export_store": "export",
    "EXPORT_FORMATS": "formats",
    "IMAGE_FORMATS": "formats",
    "RoiQuery": "query",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_face(__name__, _WHERE)
