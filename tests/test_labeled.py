from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from activessf_engine.select.labeled_set import scan_labeled


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_scan_finds_classes_and_images(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "b_class/1.PNG",
        "b_class/sub/2.jpeg",
        "b_class/notes.txt",
        "b_class/.hidden.png",
        "b_class/.cache/3.png",
        "a_class/x.TIF",
        "a_class/y.bmp",
        "a_class/z.jpg",
        ".trash/junk.png",
    )
    labeled = scan_labeled(tmp_path)
    assert labeled.class_names == ["a_class", "b_class"]
    assert [p.relative_to(tmp_path).as_posix() for p in labeled.paths] == [
        "a_class/x.TIF",
        "a_class/y.bmp",
        "a_class/z.jpg",
        "b_class/1.PNG",
        "b_class/sub/2.jpeg",
    ]
    assert labeled.labels.dtype == np.int64
    assert labeled.labels.tolist() == [0, 0, 0, 1, 1]
    assert labeled.class_counts() == {"a_class": 3, "b_class": 2}
    assert len(labeled) == 5


def test_empty_class_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _touch(tmp_path, "empty/readme.txt", "full/a.png")
    with caplog.at_level(logging.WARNING, logger="activessf_engine.select.labeled_set"):
        labeled = scan_labeled(tmp_path)
    assert labeled.class_names == ["full"]
    assert labeled.labels.tolist() == [0]
    assert "empty" in caplog.text


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_labeled(tmp_path / "nowhere")


def test_no_class_folders(tmp_path: Path) -> None:
    _touch(tmp_path, "loose.png")
    with pytest.raises(ValueError, match="no class folders"):
        scan_labeled(tmp_path)


def test_no_images_at_all(tmp_path: Path) -> None:
    _touch(tmp_path, "a/readme.txt", "b/data.csv")
    with pytest.raises(ValueError, match="holds images"):
        scan_labeled(tmp_path)
