"""The ROI store: round trip, atomic commits, the plan guard, and `verify_store`'s findings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from activessf_engine.config import StoreConfig
from activessf_engine.store import writer as store_writer
from activessf_engine.store.layout import committed_parts, part_name, read_attrs
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.verify import verify_store
from activessf_engine.store.writer import PartData, StoreWriter

PLAN = [["a.png", "b.png"], ["c.png"]]


def make_part(n: int, sources: list[str], seed: int, size: int = 16) -> PartData:
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, 100, n)
    y0 = rng.integers(0, 100, n)
    box = np.stack([x0, y0, x0 + 70, y0 + 80], 1).astype(np.int32)
    source = rng.integers(0, len(sources), n).astype(np.int32)
    table = [
        {
            "path": p,
            "id": f"id{i}",
            "width": 640,
            "height": 480,
            "status": "ok",
            "error": None,
            "decoder": "dali-cpu",
            "rois": int((source == i).sum()),
        }
        for i, p in enumerate(sources)
    ]
    return PartData(
        rois=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        columns={
            "box": box,
            "crop_box": box + np.array([-5, -5, 5, 5], np.int32),
            "area": rng.integers(3000, 5000, n).astype(np.int64),
            "fill_rate": rng.uniform(0.7, 1.0, n).astype(np.float32),
            "source": source,
            "level0_box": box.astype(np.int64),
            "pad": np.zeros((n, 4), np.int16),
        },
        sources=table,
    )


@pytest.fixture
def parts():
    return [make_part(5, PLAN[0], seed=1), make_part(3, PLAN[1], seed=2)]


@pytest.fixture
def store(tmp_path, parts):
    root = tmp_path / "store"
    writer = StoreWriter.create(root, "candidates", {"config": {"k": 1}}, PLAN, layout=StoreConfig(rois_per_shard=2))
    for i, data in enumerate(parts):
        writer.commit_part(i, data)
    return root


def test_round_trip_is_bit_exact(store, parts):
    rs = RoiStore(store)
    assert len(rs) == 8 and rs.kind == "candidates" and rs.complete
    assert rs.parts == [0, 1]
    assert rs.meta["config"] == {"k": 1} and rs.meta["plan"] == PLAN
    everything = np.concatenate([p.rois for p in parts])
    for i in np.random.default_rng(0).permutation(8):
        assert np.array_equal(rs.roi(int(i)), everything[i])
    assert np.array_equal(rs.part_rois(1), parts[1].rois)
    cols = rs.columns()
    for name in ("box", "crop_box", "area", "fill_rate", "source"):
        want = np.concatenate([p.columns[name] for p in parts])
        assert cols[name].dtype == want.dtype and np.array_equal(cols[name], want)
    assert cols["part"].tolist() == [0] * 5 + [1] * 3
    paths = [parts[k].sources[s]["path"] for k in (0, 1) for s in parts[k].columns["source"]]
    assert cols["source_path"].tolist() == paths
    assert [s["path"] for s in rs.sources()] == ["a.png", "b.png", "c.png"]
    assert rs.part_attrs(0)["rois"] == 5 and rs.part_attrs(0)["roi_size"] == 16
    assert list(rs.iter_parts()) == [(0, 0), (1, 5)]


@pytest.mark.parametrize("rows", [[], [17], [3, 0, 41], list(range(0, 64, 3)), list(range(63, -1, -1))])
def test_part_rows_in_the_order_given_sparse_or_dense(tmp_path, rows):
    root = tmp_path / "rows"
    data = make_part(64, ["a.png"], seed=5)
    StoreWriter.create(root, "candidates", {}, [["a.png"]], layout=StoreConfig(rois_per_shard=16)).commit_part(0, data)
    got = RoiStore(root).part_rois(0, np.array(rows, dtype=np.int64))
    assert got.shape == (len(rows), 16, 16, 3)
    assert np.array_equal(got, data.rois[rows])


def test_locate(store):
    rs = RoiStore(store)
    assert [rs.locate(i) for i in (0, 4, 5, 7)] == [(0, 0), (0, 4), (1, 0), (1, 2)]
    for bad in (-1, 8):
        with pytest.raises(IndexError):
            rs.locate(bad)


def test_empty_part_round_trip(tmp_path):
    writer = StoreWriter.create(tmp_path / "s", "candidates", {}, [["x.png"]])
    writer.commit_part(0, make_part(0, ["x.png"], seed=3))
    rs = RoiStore(tmp_path / "s")
    assert len(rs) == 0 and rs.complete
    assert rs.columns()["box"].shape[0] == 0
    assert verify_store(tmp_path / "s") == []


def test_commit_twice_refused(store, parts):
    writer = StoreWriter(store)
    with pytest.raises(FileExistsError):
        writer.commit_part(0, parts[0])


def test_partdata_checks_column_lengths():
    data = make_part(3, ["a"], seed=0)
    with pytest.raises(ValueError, match="rows"):
        PartData(data.rois, {**data.columns, "area": data.columns["area"][:2]}, data.sources)


def test_failed_commit_leaves_nothing(tmp_path, parts, monkeypatch):
    root = tmp_path / "store"
    writer = StoreWriter.create(root, "candidates", {}, PLAN)
    real_write_column = store_writer.write_column
    calls = {"n": 0}

    def failing_write_column(folder, values):
        calls["n"] += 1
        if calls["n"] == 2:  # rois and box written, then the disk "fails"
            raise OSError("disk full (simulated)")
        return real_write_column(folder, values)

    monkeypatch.setattr(store_writer, "write_column", failing_write_column)
    with pytest.raises(OSError, match="simulated"):
        writer.commit_part(0, parts[0])
    assert calls["n"] == 2
    assert list((root / "parts").iterdir()) == [(root / "parts" / "zarr.json")]  # no part, no .tmp-*
    assert committed_parts(root) == []
    monkeypatch.setattr(store_writer, "write_column", real_write_column)
    writer.commit_part(0, parts[0])  # the part can be written again
    assert committed_parts(root) == [0]


def test_create_refuses_changed_plan_and_other_kind(store):
    with pytest.raises(ValueError, match="other inputs"):
        StoreWriter.create(store, "candidates", {}, [["a.png"], ["b.png", "c.png"]])
    with pytest.raises(ValueError, match="other inputs"):
        StoreWriter.create(store, "candidates", {}, [["a.png", "b.png"]])  # lost a part
    with pytest.raises(ValueError, match="candidates"):
        StoreWriter.create(store, "selected", {}, PLAN)
    assert read_attrs(store)["plan"] == PLAN  # unchanged by the refusals


def test_create_accepts_appended_sources(store):
    longer = [*PLAN, ["d.png", "e.png"]]
    writer = StoreWriter.create(store, "candidates", {}, longer)
    assert read_attrs(store)["plan"] == longer
    assert writer.committed_parts() == {0, 1}
    rs = RoiStore(store)
    assert not rs.complete and len(rs) == 8


def test_create_refuses_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        StoreWriter.create(folder, "candidates", {}, PLAN)
    assert (folder / "notes.txt").read_text() == "mine"
    StoreWriter.create(tmp_path / "empty_ok", "candidates", {}, PLAN)  # a missing folder is fine
    (tmp_path / "empty").mkdir()
    StoreWriter.create(tmp_path / "empty", "candidates", {}, PLAN)  # so is an empty one


def test_overwrite_starts_again(store):
    StoreWriter.create(store, "candidates", {}, [["q.png"]], overwrite=True)
    assert committed_parts(store) == [] and read_attrs(store)["plan"] == [["q.png"]]


def test_reopen_cleans_temporary_folders(store):
    leftover = store / "parts" / ".tmp-p000001-deadbeef"
    (leftover / "rois").mkdir(parents=True)
    assert any("half-written" in p for p in verify_store(store))
    StoreWriter.create(store, "candidates", {}, PLAN)
    assert not leftover.exists()
    assert verify_store(store) == []


# --- verify ------------------------------------------------------------------------------------------------


def test_verify_ok(store):
    assert verify_store(store) == []
    assert verify_store(store, deep=True) == []


def test_verify_missing_part(store):
    shutil.rmtree(store / "parts" / part_name(1))
    problems = verify_store(store)
    assert len(problems) == 1 and problems[0].startswith("incomplete") and "p000001" in problems[0]


def test_verify_deleted_column(store):
    shutil.rmtree(store / "parts" / part_name(0) / "area")
    problems = verify_store(store)
    assert any("'area' missing" in p for p in problems), problems


def test_verify_tampered_rois_shape(store):
    meta_path = store / "parts" / part_name(0) / "rois" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"][0] = 4
    meta_path.write_text(json.dumps(meta))
    problems = verify_store(store)
    assert any("rois has 4 rows" in p for p in problems), problems


def test_verify_box_outside_source(store, parts, tmp_path):
    bad = make_part(2, ["z.png"], seed=9)
    bad.columns["box"][0] = [600, 400, 700, 500]  # beyond 640 x 480
    bad.columns["fill_rate"][1] = 1.5
    writer = StoreWriter.create(tmp_path / "bad", "candidates", {}, [["z.png"]])
    writer.commit_part(0, bad)
    problems = verify_store(tmp_path / "bad")
    assert any("outside their source" in p for p in problems)
    assert any("fill rates outside" in p for p in problems)


def test_verify_sources_table_disagrees(store):
    group = zarr.open_group(str(store / "parts" / part_name(1)), mode="a")
    sources = group.attrs["sources"]
    sources[0]["rois"] += 1
    group.attrs["sources"] = sources
    assert any("sources table counts" in p for p in verify_store(store))


def test_verify_not_a_store(tmp_path):
    problems = verify_store(tmp_path)
    assert len(problems) == 1 and "not an activessf-engine store" in problems[0]
    (tmp_path / "zarr.json").write_text("{broken")
    assert "not an activessf-engine store" in verify_store(tmp_path)[0]


def test_a_part_committed_by_another_writer_meanwhile_is_kept(tmp_path, parts, monkeypatch):
    """Two writers of one run racing on a part (a Dask task run again while the first still ran): the first
    rename wins, the second copy is dropped, nothing raises, nothing is left behind."""
    import activessf_engine.store.writer as store_module

    real_rename = store_module._atomic_rename

    def rival_commits_first(tmp, final):
        shutil.copytree(tmp, final)  # the rival's identical copy lands first
        real_rename(tmp, final)  # ours then meets a non-empty folder

    root = tmp_path / "race"
    with StoreWriter.create(root, "candidates", {}, PLAN) as writer:
        monkeypatch.setattr(store_module, "_atomic_rename", rival_commits_first)
        writer.commit_part(0, parts[0])
    assert np.array_equal(RoiStore(root).part_rois(0), parts[0].rois)
    assert not list((root / "parts").glob(".tmp-*"))

    def blocked(tmp, final):
        final.mkdir()  # something that is not a committed part
        (final / "junk").write_text("x")
        real_rename(tmp, final)

    with StoreWriter.create(root, "candidates", {}, PLAN) as writer:
        monkeypatch.setattr(store_module, "_atomic_rename", blocked)
        with pytest.raises(OSError):
            writer.commit_part(1, parts[1])


def test_level0_box_is_required_from_store_format_3(tmp_path):
    writer = StoreWriter.create(tmp_path / "s", "candidates", {}, [["x.png"]])
    part = make_part(3, ["x.png"], seed=1)
    del part.columns["level0_box"]
    writer.commit_part(0, part)
    meta = read_attrs(tmp_path / "s")
    assert meta["format"] == 3 and verify_store(tmp_path / "s") == ["p000000: column 'level0_box' missing"]
    writer._write_root({**meta, "format": 2})  # a store made before slides: the column did not exist yet
    assert verify_store(tmp_path / "s") == []
    writer.close()
