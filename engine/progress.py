"""Progress reporting as a parameter of library functions: on, off, or any tqdm-like object."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix_str(self, s: str) -> Any: ...
    def close(self) -> Any: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, s: str) -> None:
        return None

    def close(self) -> None:
        return None


def make_progress(progress: bool | Progress, total: int, unit: str, desc: str) -> Progress:
    """`True` -> a tqdm bar on stderr, `False` -> nothing, anything else is used as it is."""
    if progress is True:
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)
    if progress is False or progress is None:
        return _Silent()
    return progress
