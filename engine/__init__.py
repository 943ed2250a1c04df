"""activessf-engine: Cell Region Filtering and Active Sample Selection (ActiveSSF) at scale."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def lazy_face(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` (PEP 562) of a stage package's face: each name it offers is imported from
    its module (`where[name]`, within `package`) on first use and kept, so that importing a package
    costs nothing until one of its names is used (`activessf-engine --help` imports no torch or zarr)."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
