"""The file layouts and image formats `export` writes: here, apart, so that the CLI's parser names them
without importing the export and its store."""

from __future__ import annotations

from typing import Literal

ExportFormat = Literal["imagefolder", "webdataset"]
ImageFormat = Literal["png", "jpeg"]
EXPORT_FORMATS: tuple[str, ...] = ("imagefolder", "webdataset")
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpeg")
