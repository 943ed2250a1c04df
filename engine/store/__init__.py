"""The ROI store: sharded Zarr v3 parts written whole under a lock, read straight from their shards, verified."""

from activessf_engine.store.feature_cache import FeatureCache, features_key
from activessf_engine.store.layout import (
    FORMAT_VERSION,
    ROI_COLUMNS,
    committed_parts,
    configure_zarr,
    read_attrs,
    roi_column_names,
)
from activessf_engine.store.lock import StoreLock, StoreLockedError
from activessf_engine.store.manifest import manifest_header, manifest_rows, spreadsheet_safe
from activessf_engine.store.overwrite import Artefact, check_overwrite, store_artefact
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.verify import repair_store, verify_store
from activessf_engine.store.writer import PartData, StoreWriter

__all__ = [
    "FORMAT_VERSION",
    "ROI_COLUMNS",
    "Artefact",
    "FeatureCache",
    "PartData",
    "RoiStore",
    "StoreLock",
    "StoreLockedError",
    "StoreWriter",
    "check_overwrite",
    "committed_parts",
    "configure_zarr",
    "features_key",
    "manifest_header",
    "manifest_rows",
    "read_attrs",
    "repair_store",
    "roi_column_names",
    "spreadsheet_safe",
    "store_artefact",
    "verify_store",
]
