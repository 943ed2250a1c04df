"""What `--overwrite` may delete: one rule for every command that writes an output folder.

An output is replaced only when (1) it is an artefact of the kind the command writes, recognised by its own
metadata (a candidates store is never replaced by `select`, nor a folder that merely holds a file named
``export.json`` by `export`), (2) every file in it is one the engine writes in that kind of artefact (a file
the user added is never deleted), and (3) it neither is nor holds an input of the same command. Anything else
is refused, before any work, with what was found and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from activessf_engine.store.layout import is_store, read_attrs

# The files of a Zarr v3 hierarchy below one of the store's folders: node metadata and chunks (`c/0/1/...`).
_ZARR_FILE = r"(?:[\w.-]+/)*(?:zarr\.json|c(?:/\d+)+)"
STORE_FILES = re.compile(
    r"zarr\.json|\.zarr\.json\.partial|\.activessf\.lock(?:\.\w+)?"
    rf"|(?:parts|features|decisions|quarantine)/{_ZARR_FILE}"
)


@dataclass(frozen=True)
class Artefact:
    """A kind of output the engine writes: how it is recognised, and the files it is made of."""

    name: str  # as messages call it: "candidates store", "export", ...
    recognised: Callable[[Path], bool]  # whether a folder holds this kind of artefact (by its own metadata)
    files: re.Pattern[str]  # every file the engine writes in it, as a path relative to it (POSIX separators)


def store_artefact(kind: str) -> Artefact:
    """A store of `kind` ("candidates" or "selected")."""

    def recognised(root: Path) -> bool:
        return is_store(root) and read_attrs(root).get("kind") == kind

    return Artefact(f"{kind} store", recognised, STORE_FILES)


def foreign_file(root: Path, files: re.Pattern[str]) -> Path | None:
    """The first file under `root` (links and special files included) that `files` does not name, or None.
    Folders are not judged themselves: a folder is replaced only with what it holds."""
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names) + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            path = Path(folder) / name
            if not files.fullmatch(path.relative_to(root).as_posix()) or path.is_symlink():
                return path
    return None


def input_inside(out: Path, inputs: Iterable[str | Path]) -> Path | None:
    """The first of `inputs` that `out` is or holds, or None."""
    target = out.resolve()
    for given in inputs:
        path = Path(given).resolve()
        if path == target or target in path.parents:
            return Path(given)
    return None


def check_overwrite(out: str | Path, artefact: Artefact, inputs: Iterable[str | Path] = ()) -> None:
    """Raise unless `out` may be deleted to be written again as `artefact` (an absent or empty `out` may always be).

    ValueError when `out` is or holds one of `inputs`; FileExistsError when it is not such an artefact or holds
    a file the engine did not write there.
    """
    out = Path(out)
    held = input_inside(out, inputs)
    if held is not None:
        raise ValueError(
            f"--out {out} holds {held}, an input of this command: --overwrite would delete it; choose another --out"
        )
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):  # nothing would be deleted
        return
    if not out.is_dir() or not artefact.recognised(out):
        raise FileExistsError(
            f"{out} is not a {artefact.name} (--overwrite replaces only a {artefact.name} the engine wrote); "
            "choose another --out"
        )
    foreign = foreign_file(out, artefact.files)
    if foreign is not None:
        raise FileExistsError(
            f"{out} holds {foreign}, which the engine does not write in a {artefact.name}: --overwrite would "
            f"delete it. Move it out of {out}, or choose another --out"
        )
