"""ROIs for trainers: PyTorch datasets, metadata queries, file exports and a DALI source over a store."""

from activessf_engine.feed.dali_source import RoiSource, roi_pipeline
from activessf_engine.feed.datasets import RoiDataset, ShardedRoiDataset
from activessf_engine.feed.export import EXPORT_FORMATS, IMAGE_FORMATS, export_store
from activessf_engine.feed.query import RoiQuery

__all__ = [
    "EXPORT_FORMATS",
    "IMAGE_FORMATS",
    "RoiDataset",
    "RoiQuery",
    "RoiSource",
    "ShardedRoiDataset",
    "export_store",
    "roi_pipeline",
]
