"""The ROI store: sharded Zarr v3 parts written whole under a lock, read straight from their shards, verified."""

from activessf_engine import lazy_face

# Each name this package offers, and the module that holds it: imported on first use.
_WHERE = {
    "FeatureCache": "feature_cache",
    "features_key": "feature_cache",
    "FORMAT_VERSION": "layout",
    "ROI_COLUMNS": "layout",
    "committed_parts": "layout",
    "configure_zarr": "layout",
    "read_attrs": "layout",
    "roi_column_names": "layout",
    "StoreLock": "lock",
    "StoreLockedError": "lock",
    "manifest_header": "manifest",
    "manifest_rows": "manifest",
    "spreadsheet_safe": "manifest",
    "Artefact": "overwrite",
    "check_overwrite": "overwrite",
    "store_artefact": "overwrite",
    "RoiStore": "reader",
    "RoiChecksumError": "shard_reader",
    "repair_store": "verify",
    "verify_store": "verify",
    "PartData": "writer",
    "StoreWriter": "writer",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_face(__name__, _WHERE)
