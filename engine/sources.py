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


def _printable(relpath: str) -> str:
    """`relpath` as valid UTF-8: undecodable bytes (kept by Python as surrogates) become backslash escapes."""
    return relpath.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def find_sources(root: str | Path, extensions: tuple[str, ...], exclude: Path | None = None) -> list[Source]:
    """Every image under `root` whose suffix is in `extensions` (case-insensitive), sorted by path.

    Symbolic links to files are followed; links to folders are not (no cycles). The folder `exclude` (the
    run's own output, when it lies inside the input) is not searched.
    """
    root = Path(root)
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
