"""Find the inputs: a folder searched recursively (dotfiles and dot-folders skipped), one file, or a list.

A source is one image to filter: a tile file, or one tile of a whole slide (`SlideTile`, made by `slides`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SlideTile:
    """Where a slide tile lies: its window on a pyramid level, and the part of it whose regions it keeps.

    Neighbouring windows overlap; their cores do not, and together they cover the level. A region is kept by
    the one tile whose core holds the centre of its box, so a cell in an overlap is counted once.
    """

    slide: str  # the slide's relative path (as a Source's relpath)
    reader: str  # the slide reader that reads it (slide_readers.SLIDE_READERS)
    level: int
    window: tuple[int, int, int, int]  # x0, y0, x1, y1 read, in pixels of `level` (x1, y1 exclusive)
    core: tuple[int, int, int, int]  # the part of the window this tile owns, in pixels of `level`
    downsample: float  # level-0 pixels per pixel of `level`
    scale: float  # the filter's pixel sizes are multiplied by this at this level (reference mpp / level mpp)
    mpp: float | None  # microns per pixel of `level`; None where the slide states none
    error: str | None = None  # why the slide could not be planned (it then stands as one source, skipped)

    def owns(self, boxes: np.ndarray) -> np.ndarray:
        """Which region boxes (n, 4, in window pixels) have their centre in the core: (n,) bool."""
        x0, y0 = self.window[:2]
        cx0, cy0, cx1, cy1 = self.core
        twice_x = 2 * x0 + boxes[:, 0] + boxes[:, 2]  # twice the centre, in level pixels: exact in integers
        twice_y = 2 * y0 + boxes[:, 1] + boxes[:, 3]
        return (twice_x >= 2 * cx0) & (twice_x < 2 * cx1) & (twice_y >= 2 * cy0) & (twice_y < 2 * cy1)

    def level0_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Region boxes (n, 4, in window pixels) in level-0 pixels of the slide."""
        origin = np.array(self.window[:2] * 2, dtype=np.float64)
        return np.rint((boxes + origin) * self.downsample).astype(np.int64)

    def record(self) -> dict[str, Any]:
        """Its provenance, for the part's sources table."""
        return {
            "slide": self.slide,
            "reader": self.reader,
            "level": self.level,
            "window": list(self.window),
            "core": list(self.core),
            "downsample": self.downsample,
            "mpp": self.mpp,
        }


@dataclass(frozen=True)
class Source:
    """One input image. `relpath` is the path as given under the input folder (POSIX separators); bytes of a
    name that are not valid UTF-8 are shown as backslash escapes and the path marked (`_printable`; the file
    itself is refused by the probe)."""

    relpath: str
    path: Path
    tile: SlideTile | None = None  # a tile of the slide at `path`; None for a tile file

    @property
    def id(self) -> str:
        """Stable id: the same relative path gives the same id on every machine and run."""
        return hashlib.sha1(self.relpath.encode("utf-8")).hexdigest()[:16]


LIST_SUFFIXES = (".txt", ".lst", ".list")  # an --input with one of these names lists the images


def read_list(listing: Path) -> list[Source]:
    """The images named in `listing`, one path per line (blank lines and lines starting with # are skipped;
    relative paths are taken from the list's folder, as the CLI's --help says), sorted, each once. A path that names no
    readable image becomes a skipped source when it is decoded, like any other bad file, its reason naming
    the path it was looked for at. A source's `relpath` is the path as the list writes it."""
    folder = listing.absolute().parent
    found = {}
    for line in listing.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = folder / entry  # an absolute entry stays itself
        found.setdefault(_printable(Path(entry).as_posix()), path)
    return [Source(relpath=rel, path=found[rel]) for rel in sorted(found)]


NOT_UTF8 = " (name not UTF-8)"  # ends the shown path of a file whose name is not UTF-8


def _printable(relpath: str) -> str:
    """`relpath` as valid UTF-8: undecodable bytes (kept by Python as surrogates) become backslash escapes, and
    the path is marked with NOT_UTF8, so that it never equals the path of a valid file named with those escapes
    (`zz_\\xff.jpg`): both would be one source, and the valid file would be lost with the other."""
    raw = relpath.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace") + NOT_UTF8


def find_sources(root: str | Path, extensions: tuple[str, ...], exclude: Path | None = None) -> list[Source]:
    """Every image under `root` whose suffix is in `extensions` (case-insensitive), sorted by path.

    Symbolic links to files are followed; links to folders are not (no cycles). The folder `exclude` (the
    run's own output, when it lies inside the input) is not searched. `root` may also be one image, or a
    text file (LIST_SUFFIXES) naming one image per line (`read_list`).
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() in LIST_SUFFIXES:
        return read_list(root)
    wanted = tuple(ext.lower() for ext in extensions)
    if root.is_file():
        return [Source(relpath=_printable(root.name), path=root)]
    if not root.is_dir():
        raise FileNotFoundError(f"input {root} is neither a folder nor a file")
    found = []
    excluded = exclude.resolve() if exclude is not None else None
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (excluded is None or (Path(folder) / d).resolve() != excluded)
        )
        for name in files:
            if name.startswith(".") or not name.lower().endswith(wanted):
                continue
            path = Path(folder) / name
            found.append(Source(relpath=_printable(path.relative_to(root).as_posix()), path=path))
    return sorted(found, key=lambda s: s.relpath)
