"""Exports: ImageFolder and WebDataset round trips, metadata beside, queries, and the CLI's refusals."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_store
from PIL import Image

from activessf_engine.cli import main
from activessf_engine.feed.export import export_store
from activessf_engine.feed.query import RoiQuery
from activessf_engine.store.reader import RoiStore


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return synthetic_store(tmp_path / "store", (6, 5), rois_per_shard=4)


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_imagefolder_png_round_trips(store: Path, tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    summary = export_store(store, tmp_path / "out")
    rois = RoiStore(store)
    table = _table(tmp_path / "out")
    assert summary["rois"] == len(table) == len(rois) == 11
    for row in table:
        pixels = np.asarray(Image.open(tmp_path / "out" / row["file"]))
        assert np.array_equal(pixels, rois.roi(int(row["roi"])))
        assert row["file"].startswith("train/rois/") and row["source"] == str(
            rois.columns()["source_path"][int(row["roi"])]
        )
    assert {"pad_left", "crop_x0", "part"} <= set(table[0])
    assert len(ImageFolder(str(tmp_path / "out" / "train"))) == 11  # what MAE's main_pretrain.py reads
    assert json.loads((tmp_path / "out" / "export.json").read_text())["format"] == "imagefolder"


def test_webdataset_round_trips_with_clusters_and_a_query(tmp_path: Path) -> None:
    selected = synthetic_store(
        tmp_path / "sel", (6, 5), kind="selected", columns=lambda i: {"cluster": (i % 3).astype(np.int32)}
    )
    query = RoiQuery(exclude_sources=("pat1/*",))
    summary = export_store(selected, tmp_path / "wds", export_format="webdataset", samples_per_tar=4, query=query)
    rois = RoiStore(selected)
    kept = [i for i in range(len(rois)) if not str(rois.columns()["source_path"][i]).startswith("pat1/")]
    assert summary["rois"] == len(kept) > 0
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    tars = sorted((tmp_path / "wds").glob("rois-*.tar"))
    assert len(tars) == -(-len(kept) // 4)
    for path in tars:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples[key][ext] = tar.extractfile(member).read()
    assert sorted(int(k) for k in samples) == kept
    for key, sample in samples.items():
        index = int(key)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["png"]))), rois.roi(index))
        meta = json.loads(sample["json"])
        assert meta["roi"] == index and int(sample["cls"]) == index % 3 == meta["cluster"]
    files = [row["file"] for row in _table(tmp_path / "wds")]
    assert files[0] == f"rois-000000.tar:{kept[0]:08d}.png"


def test_imagefolder_classes_are_clusters_and_jpeg_is_close(tmp_path: Path) -> None:
    selected = synthetic_store(
        tmp_path / "sel", (6, 5), kind="selected", columns=lambda i: {"cluster": (i % 3).astype(np.int32)}
    )
    export_store(selected, tmp_path / "jpg", image_format="jpeg", quality=95, query=RoiQuery(clusters=(0, 2)))
    folders = {p.name: len(list(p.iterdir())) for p in (tmp_path / "jpg" / "train").iterdir()}
    assert folders == {"cluster_00": 4, "cluster_02": 3}
    rois = RoiStore(selected)
    for row in _table(tmp_path / "jpg"):
        assert row["file"].endswith(".jpg")
        pixels = np.asarray(Image.open(tmp_path / "jpg" / row["file"])).astype(int)
        assert (
            pixels.shape == (16, 16, 3) and np.abs(pixels - rois.roi(int(row["roi"]))).mean() < 60
        )  # noise is hard on JPEG


def test_export_cli_and_its_refusals(store: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["export", str(store), "--out", str(out), "--format", "webdataset", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rois"] == 11
    assert main(["export", str(store), "--out", str(out), "--quiet"]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    code = main(["export", str(store), "--out", str(out), "--quiet", "--overwrite", "--exclude-sources", "pat0/*"])
    assert code == 0 and len(_table(out)) == 5 and (out / "train").is_dir() and not list(out.glob("*.tar"))
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["export", str(store), "--out", str(other), "--quiet", "--overwrite"]) == 2
    assert (other / "notes.txt").read_text() == "keep me"
    assert main(["export", str(store), "--out", str(tmp_path / "c"), "--quiet", "--clusters", "1"]) == 2
    assert "without clusters" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert not list(tmp_path.glob(".c.tmp-*"))  # nothing half-written left behind
    with pytest.raises(SystemExit) as bad:
        main(["export", str(store), "--out", str(tmp_path / "d"), "--clusters", "one"])
    assert bad.value.code == 2 and "cluster numbers such as 1,4,7" in capsys.readouterr().err
