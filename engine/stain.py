"""Stain normalization: every pixel of a tile (the filter) or a ROI (features) brought to a reference's stains.

Both methods measure a few numbers of an image (`measure`) and map each pixel by them and the reference's
(the same numbers measured on the reference's pixels, a `StainReference`):

* `macenko` (Macenko et al., ISBI 2009): in optical density OD = -ln((I + 1) / Io), the image's two stain
  vectors HE (3 x 2) and the 99th percentiles of their concentrations maxC, estimated by torchstain. Its
  normalization solves the concentrations C = lstsq(HE, OD) = pinv(HE) OD (HE has full rank), scales them by
  maxC_ref / maxC and recolours them with HE_ref: one 3 x 3 map of OD space per image,
  M = HE_ref diag(maxC_ref / maxC) pinv(HE), applied here to every pixel.
* `reinhard` (Reinhard et al., 2001): each LAB channel shifted and scaled from the image's mean and standard
  deviation to the reference's. LAB is kornia's, which runs on the tile's device (torchstain's own Reinhard
  keeps its colour constants on the host, so it cannot take a CUDA tile).

The numbers come from a seeded sample of at most SAMPLE_PIXELS pixels and the map is applied in slices of
SLICE_PIXELS, so one tile costs bounded memory whatever its size (torchstain's own `normalize` estimates from
and holds every pixel at once: ~40 bytes a pixel). An image whose stains cannot be measured (too few stained
pixels, a grey or flat image) is left as it was and counted in `StainNormalizer.left_as_read`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from activessf_engine.config import StainReference, to_dict

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]  # (n, 3) uint8 pixels -> (n, 3) uint8, on their device

SAMPLE_PIXELS = 1 << 16  # pixels an image's stains are measured on (all of them when it has fewer)
REFERENCE_PIXELS = 1 << 20  # pixels of the reference images a reference is measured on
SLICE_PIXELS = 1 << 20  # pixels mapped at once
SAMPLE_SEED = 0
IO = 240.0  # Macenko's transmitted light intensity, torchstain's default
MIN_STAINED_PIXELS = 16  # pixels with every channel's OD >= torchstain's beta (0.15) that Macenko needs


def _sample(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """At most `size` rows of (n, 3) pixels, drawn with a fixed seed (all of them when n <= size)."""
    if len(pixels) <= size:
        return pixels
    picked = torch.randint(0, len(pixels), (size,), generator=torch.Generator().manual_seed(SAMPLE_SEED))
    return pixels[picked.to(pixels.device)]


def _lab(pixels: torch.Tensor) -> torch.Tensor:
    """(n, 3) uint8 RGB -> (n, 3) float32 LAB (kornia: L 0-100, a and b about -128..127)."""
    from kornia.color import rgb_to_lab

    return rgb_to_lab(pixels.T.float().div(255)[:, :, None])[:, :, 0].T


def measure(method: str, pixels: torch.Tensor) -> tuple[float, ...] | None:
    """The numbers `method` normalizes an image by, from its (n, 3) uint8 pixels: macenko, HE (3 x 2, row by row)
    then maxC (2); reinhard, the LAB means then standard deviations. None where they cannot be measured."""
    if method == "macenko":
        from torchstain.torch.normalizers import TorchMacenkoNormalizer

        stained = (pixels.int() + 1).float() <= IO * math.exp(-0.15)  # torchstain's beta: OD >= 0.15 in all channels
        if int(stained.all(dim=1).sum()) < MIN_STAINED_PIXELS:
            return None
        estimator = TorchMacenkoNormalizer()
        try:
            estimator.fit(pixels.cpu().T[:, None, :].contiguous(), Io=IO)  # a (3, 1, n) image
        except (RuntimeError, IndexError) as error:  # torch.linalg on a degenerate set of pixels
            log.debug("Macenko could not measure the stains: %s", error)
            return None
        values = (*estimator.HERef.flatten().tolist(), *estimator.maxCRef.tolist())
    elif method == "reinhard":
        lab = _lab(pixels)
        values = (*lab.mean(dim=0).tolist(), *lab.std(dim=0).tolist())
        if min(values[3:]) <= 1e-3:  # a flat channel (a grey image has flat a and b) has nothing to scale
            return None
    else:
        raise ValueError(f"unknown stain normalization {method!r}")
    return values if all(math.isfinite(v) for v in values) else None


def fit_stain_reference(method: str, images: Sequence[torch.Tensor | np.ndarray]) -> StainReference:
    """The reference of `method` measured on the pixels of (H, W, 3) uint8 images taken together."""
    if method == "none":
        return StainReference()
    pixels = torch.cat([torch.as_tensor(image).reshape(-1, 3).cpu() for image in images])
    values = measure(method, _sample(pixels, REFERENCE_PIXELS))
    if values is None:
        raise ValueError(f"the {method} stains of the reference images cannot be measured: too few stained pixels")
    return StainReference(method, tuple(round(v, 6) for v in values))


def reference_of_record(record: dict[str, Any]) -> StainReference:
    """A reference as saved with prototypes: {} (none), {"method", "values"}, or the first form (Nov. 2026) that
    held torchstain's arrays ({"stain_matrix", "max_concentrations"}; {"means", "stds"}, CIE LAB as kornia's)."""
    if not record:
        return StainReference()
    if "values" in record:
        return StainReference(record["method"], tuple(record["values"]))
    if record["method"] == "macenko":
        return StainReference("macenko", (*np.ravel(record["stain_matrix"]), *record["max_concentrations"]))
    return StainReference("reinhard", (*record["means"], *record["stds"]))


def reference_tag(reference: StainReference) -> str:
    """A short name of a reference for feature-cache keys ("" without normalization)."""
    if reference.method == "none":
        return ""
    digest = hashlib.sha256(json.dumps(to_dict(reference), sort_keys=True).encode()).hexdigest()[:8]
    return f"{reference.method}-{digest}"


def _macenko_map(own: Sequence[float], reference: Sequence[float], device: torch.device) -> Transform:
    """The map of (n, 3) uint8 pixels taking an image's OD to the reference's by M (3 x 3, module docstring)."""
    he, max_c = torch.tensor(own[:6], dtype=torch.float64).reshape(3, 2), torch.tensor(own[6:], dtype=torch.float64)
    he_ref = torch.tensor(reference[:6], dtype=torch.float64).reshape(3, 2)
    max_c_ref = torch.tensor(reference[6:], dtype=torch.float64)
    matrix = (he_ref @ torch.diag(max_c_ref / max_c) @ torch.linalg.pinv(he)).float().to(device)

    def transform(pixels: torch.Tensor) -> torch.Tensor:
        density = -torch.log((pixels.float() + 1) / IO)
        return (IO * torch.exp(-density @ matrix.T)).clamp(0, 255).to(torch.uint8)  # truncated, as torchstain's

    return transform


def _reinhard_map(own: Sequence[float], reference: Sequence[float], device: torch.device) -> Transform:
    """The map of (n, 3) uint8 pixels shifting and scaling each LAB channel from the image's mean and standard
    deviation to the reference's."""
    from kornia.color import lab_to_rgb

    mean, std = torch.tensor(own[:3]), torch.tensor(own[3:])
    ref_mean, ref_std = torch.tensor(reference[:3]), torch.tensor(reference[3:])
    scale, shift = (ref_std / std).to(device), (ref_mean - mean * ref_std / std).to(device)

    def transform(pixels: torch.Tensor) -> torch.Tensor:
        rgb = lab_to_rgb((_lab(pixels) * scale + shift).T[:, :, None], clip=True)[:, :, 0].T
        return rgb.mul(255).round().to(torch.uint8)

    return transform


MAPS = {"macenko": _macenko_map, "reinhard": _reinhard_map}


class StainNormalizer:
    """Brings uint8 (H, W, 3) images, on any device, to a reference's stains; `left_as_read` counts images whose
    own stains could not be measured (returned unchanged)."""

    def __init__(self, reference: StainReference) -> None:
        self.reference = reference
        self.left_as_read = 0

    def normalized(self, image: torch.Tensor) -> torch.Tensor | None:
        """One (H, W, 3) uint8 image brought to the reference, on its device; None where its own stains cannot
        be measured (without a reference: the image as it is)."""
        method = self.reference.method
        if method == "none":
            return image
        pixels = image.reshape(-1, 3)
        own = measure(method, _sample(pixels, SAMPLE_PIXELS))
        if own is None:
            return None
        transform = MAPS[method](own, self.reference.values, image.device)
        out = torch.empty_like(pixels)
        for first in range(0, len(pixels), SLICE_PIXELS):
            out[first : first + SLICE_PIXELS] = transform(pixels[first : first + SLICE_PIXELS])
        return out.reshape(image.shape)

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """One (H, W, 3) uint8 image normalized, or as it is (counted in `left_as_read`) where it cannot be."""
        out = self.normalized(image)
        if out is None:
            self.left_as_read += 1
            return image
        return out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """A (n, S, S, 3) uint8 batch of ROIs normalized one by one (each measured on its own pixels)."""
        if self.reference.method == "none" or not len(batch):
            return batch
        return np.stack([self.image(torch.from_numpy(np.ascontiguousarray(roi))).numpy() for roi in batch])

    def batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        return (self(batch) for batch in batches)
