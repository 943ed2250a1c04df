"""Find the input tiles: a folder searched recursively (dotfiles and dot-folders skipped), or one file."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """One input image. `relpath` is the path as given under the input folder (POSIX separators); bytes of a
    name that are not valid UTF-8 are shown as backslash escapes (the file itself is refused by the probe)."""

    relpath: str
    path: Path

    @property
    def id(self) -> str:
        """Stable id: the same relative path gives the same id on every machine and run."""
        return hashlib.sha1(self.relpath.encode("utf-8")).hexdigest()[:16]


LIST_SUFFIXES = (".txt", ".lst", ".list")  # an --input with one of these names lists the images


def read_list(listing: Path) -> list[Source]:
    """The images named in `listing`, one path per line (blank lines and lines starting with # are skipped;
    relative paths are taken from the list's folder), sorted, each once. A path that names no readable image
    becomes a skipped source when it is decoded, like any other bad file. A source's `relpath` is the path
    as the list writes it."""
    found = {}
    for line in listing.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if Path(entry).is_absolute() else listing.parent / entry
        found.setdefault(_printable(Path(entry).as_posix()), path)
    return [Source(relpath=rel, path=found[rel]) for rel in sorted(found)]


def _printable(relpath: str) -> str:
    """`relpath` as valid UTF-8: undecodable bytes (kept by Python as surrogates) become backslash escapes."""
    return relpath.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
