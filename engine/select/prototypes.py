"""Prototypes of the labeled set: K-means on its features (Eq. 4-6) and each cluster's statistics.

For every cluster i the prototype keeps its centre c_i, its size n_i and the smallest (LB) and largest
(UB) Euclidean distance (Eq. 7) of a member to c_i, which Eq. 8 turns into a threshold. Prototypes are
saved as ``prototypes.safetensors`` (the arrays) and ``prototypes.json`` (everything else, readable):
no pickle.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from activessf_engine.config import PrototypeConfig, StainReference, to_dict
from activessf_engine.device import DeviceChoice, as_choice, cuml_usable
from activessf_engine.select.nearest import nearest_prototype
from activessf_engine.stain import reference_of_record

logger = logging.getLogger(__name__)

ARRAYS_FILE = "prototypes.safetensors"
META_FILE = "prototypes.json"
FORMAT_VERSION = 1

KMeansFactory = Callable[[int, PrototypeConfig], Any]
"""(n_clusters, config) -> an unfitted estimator with the scikit-learn interface (fit, cluster_centers_)."""


def _sklearn_kmeans(n_clusters: int, config: PrototypeConfig) -> Any:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, n_init=config.n_init, max_iter=config.max_iter, random_state=config.seed)


def _cuml_kmeans(n_clusters: int, config: PrototypeConfig) -> Any:
    ok, reason = cuml_usable()
    if not ok:
        raise RuntimeError(f"K-means backend 'cuml' cannot run: {reason}. Set the prototypes backend to 'sklearn'.")
    from cuml.cluster import KMeans

    return KMeans(
        n_clusters=n_clusters,
        n_init=config.n_init,
        max_iter=config.max_iter,
        random_state=config.seed,
        output_type="numpy",
    )


_KMEANS_BACKENDS: dict[str, KMeansFactory] = {"cuml": _cuml_kmeans, "sklearn": _sklearn_kmeans}


def list_kmeans_backends() -> list[str]:
    """Names accepted by `PrototypeConfig.backend`, besides "auto" (the device choice's backend)."""
    return sorted(_KMEANS_BACKENDS)


def resolve_kmeans_backend(name: str, device: DeviceChoice | str = "cpu") -> str:
    """The concrete backend for `name`; "auto" is the one the device choice made (cuML on a GPU where it
    runs, scikit-learn otherwise)."""
    if name == "auto":
        return as_choice(device).kmeans_backend
    if name not in _KMEANS_BACKENDS:
        raise ValueError(f"unknown K-means backend {name!r}; valid: {['auto', *list_kmeans_backends()]}")
    return name


@dataclass(frozen=True, eq=False)
class Prototypes:
    """K clusters of the labeled features, with the statistics Eq. 8 needs."""

    centres: np.ndarray  # (K, d) float32, c_i of Eq. 6
    sizes: np.ndarray  # (K,) int64, n_i: members by nearest centre (Eq. 5)
    lower: np.ndarray  # (K,) float32, LB: smallest member distance to c_i (Eq. 7)
    upper: np.ndarray  # (K,) float32, UB: largest member distance to c_i
    class_counts: np.ndarray  # (K, C) int64, labeled classes among the members of each cluster
    class_names: list[str]
    model: str  # timm model the features came from
    fingerprint: str  # sha256 of its weights (features.state_dict_fingerprint)
    # The --weights the features came from ("pretrained", "random" or a file): `select` loads the same by default.
    # "" in prototypes saved before it was recorded.
    weights: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # PrototypeConfig as a dict
    backend: str = ""  # K-means backend that fitted the centres
    # The settings that framed the labeled crops (`framing.labeled_framing`): {} in prototypes saved before
    # they were recorded, which `select` cannot check.
    framing: dict[str, Any] = field(default_factory=dict)
    labeled: str = ""  # the labeled set's folder, for the messages that name the fix
    stain: StainReference = field(default_factory=StainReference)  # the features' stain normalization (engine/stain.py)
    # Labeled images in which no region passed the filter, taken whole (labeled_crop "filter"); 0 when not recorded.
    whole_images: int = 0

    def __post_init__(self) -> None:
        k, c = len(self.centres), len(self.class_names)
        if self.centres.ndim != 2 or k == 0:
            raise ValueError(f"centres must be a non-empty (K, d) array, got shape {self.centres.shape}")
        for name in ("sizes", "lower", "upper"):
            if getattr(self, name).shape != (k,):
                raise ValueError(f"{name} must have shape ({k},), got {getattr(self, name).shape}")
        if self.class_counts.shape != (k, c):
            raise ValueError(f"class_counts must have shape ({k}, {c}), got {self.class_counts.shape}")

    @property
    def feature_dim(self) -> int:
        return int(self.centres.shape[1])

    def dominant_classes(self) -> list[str]:
        """The most frequent labeled class of each cluster."""
        return [self.class_names[i] for i in self.class_counts.argmax(1)]

    def check_compatible(self, model: str, fingerprint: str, weights: str = "") -> None:
        """Raise ValueError unless the features to compare come from the same model and weights."""
        if model != self.model or fingerprint != self.fingerprint:
            raise ValueError(
                f"these prototypes were made with {self.model}, weights {self.weights or '(not recorded)'} "
                f"(sha256 {self.fingerprint[:12]}); the features would come from {model}, weights "
                f"{weights or '(not recorded)'} (sha256 {fingerprint[:12]}). Distances between the two are "
                "meaningless: leave --model and --weights out to use the prototypes' own, or rebuild the "
                "prototypes with the ones you want."
            )

    def save(self, directory: Path) -> None:
        """Write prototypes.safetensors and prototypes.json into `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.ascontiguousarray(getattr(self, name)) for name in _ARRAY_DTYPES}
        dominant = self.dominant_classes()
        meta = {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "weights": self.weights,
            "feature_dim": self.feature_dim,
            "class_names": list(self.class_names),
            "config": self.config,
            "backend": self.backend,
            "framing": self.framing,
            "labeled": self.labeled,
            "stain": to_dict(self.stain),
            "whole_images": self.whole_images,
            "clusters": [
                {
                    "index": i,
                    "size": int(self.sizes[i]),
                    "lower": float(self.lower[i]),
                    "upper": float(self.upper[i]),
                    "dominant_class": dominant[i],
                    "classes": {name: int(n) for name, n in zip(self.class_names, self.class_counts[i], strict=True)},
                }
                for i in range(len(self.sizes))
            ],
        }
        _write_atomic(directory / ARRAYS_FILE, safetensors.numpy.save(arrays))
        _write_atomic(directory / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())


_ARRAY_DTYPES = {
    "centres": np.float32,
    "sizes": np.int64,
    "lower": np.float32,
    "upper": np.float32,
    "class_counts": np.int64,
}


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def load_prototypes(directory: Path) -> Prototypes:
    """Read prototypes written by `Prototypes.save`, checking that the two files agree."""
    directory = Path(directory)
    arrays_path, meta_path = directory / ARRAYS_FILE, directory / META_FILE
    for path in (arrays_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; build prototypes first (activessf-engine prototypes)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{meta_path} is not valid JSON: {error}") from error
    try:
        arrays = safetensors.numpy.load_file(str(arrays_path))
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{arrays_path} cannot be read: {error}") from error
    required = {"format_version", "model", "fingerprint", "class_names", "clusters"}
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}")
    if not required <= set(meta):
        raise ValueError(f"{meta_path} lacks keys {sorted(required - set(meta))}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{meta_path} has format_version {meta['format_version']}, expected {FORMAT_VERSION}")
    for name, dtype in _ARRAY_DTYPES.items():
        if name not in arrays or arrays[name].dtype != dtype:
            found = arrays[name].dtype if name in arrays else "nothing"
            raise ValueError(f"{arrays_path}: expected array {name!r} of {np.dtype(dtype)}, found {found}")
    try:
        prototypes = Prototypes(
            **{name: arrays[name] for name in _ARRAY_DTYPES},
            class_names=list(meta["class_names"]),
            model=meta["model"],
            fingerprint=meta["fingerprint"],
            weights=meta.get("weights", ""),
            config=meta.get("config", {}),
            backend=meta.get("backend", ""),
            framing=meta.get("framing", {}),
            labeled=meta.get("labeled", ""),
            stain=reference_of_record(meta.get("stain", {})),
            whole_images=meta.get("whole_images", 0),
        )
    except ValueError as error:
        raise ValueError(f"{directory}: inconsistent prototypes: {error}") from error
    sizes = [c.get("size") for c in meta["clusters"]] if isinstance(meta["clusters"], list) else None
    if sizes != prototypes.sizes.tolist():
        raise ValueError(
            f"{meta_path} and {arrays_path} disagree on the clusters (sizes {sizes} vs {prototypes.sizes.tolist()})"
        )
    return prototypes


def fit_prototypes(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    config: PrototypeConfig,
    *,
    model: str,
    fingerprint: str,
    weights: str = "",
    device: DeviceChoice | str = "cpu",
    framing: dict[str, Any] | None = None,
    labeled: str = "",
    stain: StainReference | None = None,
    whole_images: int = 0,
) -> Prototypes:
    """K-means (Eq. 4-6) on labeled features (n, d), then each cluster's n_i, LB and UB.

    After fitting, members are re-assigned to their nearest centre (Eq. 5, `nearest_prototype`) so that
    sizes and bounds agree with how candidates are assigned later. `framing`, `labeled`, `stain` and
    `whole_images` are recorded as they are (see the fields of `Prototypes`). A centre that then has no member
    (K-means can leave one on duplicate points) is dropped with a warning, so K may shrink.
    """
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(f"features (n, d) and labels (n,) must agree, got {features.shape} and {labels.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names)}), got [{labels.min()}, {labels.max()}]")
    if len(features) < config.clusters:
        raise ValueError(
            f"K-means with {config.clusters} clusters needs at least {config.clusters} labeled samples, "
            f"got {len(features)}; add labeled images or lower --clusters"
        )
    backend = resolve_kmeans_backend(config.backend, device)
    estimator = _KMEANS_BACKENDS[backend](config.clusters, config)
    estimator.fit(features)
    centres = np.asarray(estimator.cluster_centers_, dtype=np.float32)

    member_of, distance = nearest_prototype(features, centres)
    sizes = np.bincount(member_of, minlength=len(centres))
    kept = np.flatnonzero(sizes)
    if len(kept) < len(centres):
        logger.warning(
            "dropping %d empty K-means cluster(s) of %d (duplicate or too few distinct features)",
            len(centres) - len(kept),
            len(centres),
        )
        remap = np.full(len(centres), -1, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        centres, member_of = centres[kept], remap[member_of]

    k = len(centres)
    lower = np.full(k, np.inf, dtype=np.float32)
    upper = np.zeros(k, dtype=np.float32)
    np.minimum.at(lower, member_of, distance)
    np.maximum.at(upper, member_of, distance)
    class_counts = np.zeros((k, len(class_names)), dtype=np.int64)
    np.add.at(class_counts, (member_of, labels.astype(np.int64)), 1)
    return Prototypes(
        centres=np.ascontiguousarray(centres),
        sizes=np.bincount(member_of, minlength=k).astype(np.int64),
        lower=lower,
        upper=upper,
        class_counts=class_counts,
        class_names=list(class_names),
        model=model,
        fingerprint=fingerprint,
        weights=weights,
        config=to_dict(config),
        backend=backend,
        framing=framing or {},
        labeled=labeled,
        stain=stain or StainReference(),
        whole_images=whole_images,
    )
