"""The labeled set T of Algorithm 1, in ImageFolder layout: one folder per class, images inside.

Only file names are read here; decoding and resizing belong to the decode module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activessf_engine.config import InputConfig

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = InputConfig().extensions


@dataclass(frozen=True, eq=False)
class LabeledSet:
    """Image paths with their class index; `class_names[labels[i]]` is the class of `paths[i]`."""

    paths: list[Path]
    labels: np.ndarray  # (n,) int64
    class_names: list[str]  # sorted

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(count) for name, count in zip(self.class_names, counts, strict=True)}


def _images_under(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files below `folder` (recursive, sorted), skipping dotfiles and dot-folders."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(Path(directory, f) for f in files if not f.startswith(".") and f.lower().endswith(extensions))
    return sorted(found)


def scan_labeled(root: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> LabeledSet:
    """Every image of an ImageFolder tree: each non-hidden folder directly under `root` is a class.

    Extensions are matched case-insensitively. A class folder without images is skipped with a warning;
    it is an error if no class is left.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"labeled set {root} does not exist or is not a folder")
    suffixes = tuple(e.lower() for e in extensions)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(
            f"labeled set {root} has no class folders; expected ImageFolder layout: {root}/<class>/<image>"
        )
    loose = [p.name for p in root.iterdir() if p.is_file() and p.name.lower().endswith(suffixes)]
    if loose:
        logger.warning("ignoring %d image(s) directly in %s (they belong to no class folder)", len(loose), root)

    paths: list[Path] = []
    labels: list[int] = []
    class_names: list[str] = []
    for class_dir in class_dirs:
        images = _images_under(class_dir, suffixes)
        if not images:
            logger.warning("class folder %s holds no images with extensions %s; skipping it", class_dir, suffixes)
            continue
        paths.extend(images)
        labels.extend([len(class_names)] * len(images))
        class_names.append(class_dir.name)
    if not class_names:
        raise ValueError(f"no class folder under {root} holds images with extensions {list(suffixes)}")
    return LabeledSet(paths=paths, labels=np.asarray(labels, dtype=np.int64), class_names=class_names)
