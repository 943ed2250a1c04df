"""Feature vectors of a store's ROIs, cached beside its parts."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr

from activessf_engine.store.layout import part_name
from activessf_engine.store.writer import _atomic_rename


def features_key(model: str, fingerprint: str, roi_size: int, dtype: str = "float32", variant: str = "") -> str:
    """Cache key of a store's features: model, weights, ROI size and, unless float32, the compute dtype
    (bfloat16 features differ from float32 ones in the third digit); `variant` names any change made to
    the ROIs before the network (a stain normalization's reference)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    key = f"{safe}-{fingerprint[:16]}-{roi_size}" + ("" if dtype == "float32" else f"-{dtype}")
    return key + (f"-{re.sub(r'[^A-Za-z0-9_.-]', '_', variant)}" if variant else "")


class FeatureCache:
    """Feature vectors of a store's ROIs, one array per part, keyed by model, weights and ROI size."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.folder = Path(root) / "features" / key

    def has(self, part: int) -> bool:
        return (self.folder / part_name(part) / "zarr.json").exists()

    def load(self, part: int) -> np.ndarray:
        return np.asarray(zarr.open_array(str(self.folder / part_name(part)), mode="r")[:])

    def save(self, part: int, features: np.ndarray) -> None:
        """Written under a temporary name and renamed, like a part."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / part_name(part)
        tmp = self.folder / f".tmp-{part_name(part)}-{uuid.uuid4().hex[:8]}"
        arr = zarr.create_array(
            str(tmp), shape=features.shape, chunks=(max(1, len(features)), features.shape[1]), dtype="float32"
        )
        if len(features):
            arr[:] = features.astype(np.float32)
        if final.exists():  # another writer got there first; its features are the same
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _atomic_rename(tmp, final)
