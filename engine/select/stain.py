"""Stain normalization of ROIs before their features, with torchstain (torch backend, CPU or GPU).

Labeled crops and candidates from another stain or scanner lie far apart in feature space whatever
their cell type. With `prototypes.stain_normalization` set, a reference is fitted once on the labeled
crops (laid side by side as one image) and every ROI, labeled and candidate, is brought to it before its
features are computed. The reference is saved with the prototypes, so `select` normalizes candidates to
the same one. `macenko`: Macenko et al. (ISBI 2009), stain vectors and concentrations in optical density;
`reinhard`: Reinhard et al. (2001), mean and spread of each LAB channel.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

STAIN_METHODS = ("none", "macenko", "reinhard")


def _normalizer(method: str) -> Any:
    from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

    if method == "macenko":
        return TorchMacenkoNormalizer()
    if method == "reinhard":
        return TorchReinhardNormalizer()
    raise ValueError(f"unknown stain normalization {method!r}; valid: {list(STAIN_METHODS)}")


def _chw(roi: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(roi).permute(2, 0, 1).contiguous()


def fit_stain_reference(method: str, rois: np.ndarray) -> dict[str, Any]:
    """The reference of `method` fitted on ROIs (n, S, S, 3) uint8 laid side by side: {} for "none"."""
    if method == "none":
        return {}
    normalizer = _normalizer(method)
    normalizer.fit(_chw(np.concatenate(list(rois), axis=1)))
    if method == "macenko":
        values = {"stain_matrix": normalizer.HERef, "max_concentrations": normalizer.maxCRef}
    else:
        values = {"means": normalizer.target_means, "stds": normalizer.target_stds}
    return {"method": method, **{k: torch.as_tensor(v).tolist() for k, v in values.items()}}


def reference_tag(reference: dict[str, Any]) -> str:
    """A short name of a reference for feature-cache keys ("" without normalization)."""
    if not reference:
        return ""
    digest = hashlib.sha256(json.dumps(reference, sort_keys=True).encode()).hexdigest()[:8]
    return f"{reference['method']}-{digest}"


class StainNormalizer:
    """Brings uint8 ROI batches (n, H, W, 3) to a fitted reference; `failed` counts ROIs left as they were
    because the method could not estimate their stains (too few stained pixels)."""

    def __init__(self, reference: dict[str, Any]) -> None:
        self.reference = reference
        self.failed = 0
        self._normalizer = None
        if reference:
            self._normalizer = _normalizer(reference["method"])
            if reference["method"] == "macenko":
                self._normalizer.HERef = torch.tensor(reference["stain_matrix"])
                self._normalizer.maxCRef = torch.tensor(reference["max_concentrations"])
            else:
                self._normalizer.target_means = torch.tensor(reference["means"])
                self._normalizer.target_stds = torch.tensor(reference["stds"])

    def _one(self, roi: np.ndarray) -> np.ndarray:
        try:
            if self.reference["method"] == "macenko":  # both give (H, W, 3)
                out = self._normalizer.normalize(_chw(roi), stains=False)[0]
            else:
                out = self._normalizer.normalize(_chw(roi))
        except (RuntimeError, ValueError, IndexError) as error:  # torch.linalg on a ROI with too few stained pixels
            self.failed += 1
            log.debug("stain normalization left a ROI as it was: %s", error)
            return roi
        return out.clamp(0, 255).to(torch.uint8).numpy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._normalizer is None or not len(batch):
            return batch
        return np.stack([self._one(roi) for roi in np.asarray(batch)])

    def batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        return (self(batch) for batch in batches)
