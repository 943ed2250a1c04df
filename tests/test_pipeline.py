"""`run_filter`: synthetic tiles into a store, part by part; interruption and resume give the same store."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tile_folder, write_image

from activessf_engine.filter.plan import plan_parts
from activessf_engine.filter.run import run_filter
from activessf_engine.filter.sources import find_sources
from activessf_engine.store.layout import committed_parts
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.verify import verify_store
from activessf_engine.store.writer import StoreWriter


@pytest.fixture
def tiles(tmp_path):
    return tile_folder(tmp_path / "tiles", 6)  # 3 parts of 2 sources with sources_per_part=2


def rows(root) -> list[tuple]:
    """Every ROI of a store with its columns and a digest of its pixels, in store order."""
    store = RoiStore(root)
    cols = store.columns()
    return [
        (
            cols["source_path"][i],
            *cols["box"][i].tolist(),
            *cols["crop_box"][i].tolist(),
            int(cols["area"][i]),
            float(cols["fill_rate"][i]),
            store.roi(i).tobytes(),
        )
        for i in range(len(store))
    ]


def test_filter_synthetic_tiles(tiles, tmp_path, small_config):
    summary = run_filter(tiles, tmp_path / "store", small_config)
    assert summary.sources_total == 6 and summary.sources_read == 6 and summary.sources_skipped == 0
    assert summary.parts_total == 3 and summary.parts_already_done == 0
    assert summary.decoders == {"dali-cpu": 6}
    store = RoiStore(tmp_path / "store")
    assert store.complete and len(store) == summary.rois
    # tiles 0, 2, 4 carry a disk and a square; 1 and 5 a disk; 3 a disk; i % 3 == 2 (2 and 5) no disk
    per_source = {s["path"]: s["rois"] for s in store.sources()}
    assert per_source == {
        "tile_00.png": 2,
        "tile_01.png": 1,
        "tile_02.png": 1,
        "tile_03.png": 1,
        "tile_04.png": 2,
        "tile_05.png": 0,
    }
    cols = store.columns()
    first = cols["source_path"].tolist().index("tile_00.png")
    assert np.abs(cols["box"][first] - [15, 25, 106, 116]).max() <= 2  # disk centre (60, 70), radius 45
    assert store.roi(0).shape == (64, 64, 3)
    assert verify_store(tmp_path / "store", deep=True) == []
    attrs = store.meta
    assert attrs["config"]["crop"]["size"] == 64 and attrs["plan"] == plan_parts(find_sources(tiles, (".png",)), 2)
    assert set(summary.to_json()) >= {"images_per_second", "megapixels_per_second", "stage_seconds", "rois"}


def test_crops_come_from_the_original_tile(tmp_path, small_config):
    import torch
    from conftest import draw_tile

    from activessf_engine.filter.crops import fit_to_square

    tile = draw_tile([("rect", 100, 60, 180, 140)])
    tile[90:110, 130:150] = (120, 60, 170)  # a lighter purple patch: merged away in G', kept in the crop
    write_image(tile, tmp_path / "in" / "t.png")
    run_filter(tmp_path / "in", tmp_path / "s", small_config)
    store = RoiStore(tmp_path / "s")
    assert len(store) == 1
    assert store.columns()["box"][0].tolist() == [100, 60, 180, 140]
    crop = store.columns()["crop_box"][0].tolist()
    assert crop == [92, 52, 188, 148]  # margin 0.1 x 80 = 8 on each side
    want = fit_to_square(torch.from_numpy(tile[52:148, 92:188]), 64)[0].numpy()
    assert np.array_equal(store.roi(0), want)


def test_interrupted_run_resumes_to_the_same_store(tiles, tmp_path, small_config, monkeypatch):
    reference = run_filter(tiles, tmp_path / "reference", small_config)

    real_commit = StoreWriter.commit_part
    calls = {"n": 0}

    def interrupting_commit(self, index, data, attrs=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_commit(self, index, data, attrs)

    monkeypatch.setattr(StoreWriter, "commit_part", interrupting_commit)
    with pytest.raises(KeyboardInterrupt):
        run_filter(tiles, tmp_path / "resumed", small_config)
    monkeypatch.setattr(StoreWriter, "commit_part", real_commit)
    assert committed_parts(tmp_path / "resumed") == [0, 1]
    assert any(p.startswith("incomplete") for p in verify_store(tmp_path / "resumed"))

    leftover = tmp_path / "resumed" / "parts" / ".tmp-p000002-0badc0de"  # as a killed writer leaves it
    (leftover / "rois").mkdir(parents=True)
    resumed = run_filter(tiles, tmp_path / "resumed", small_config)
    assert not leftover.exists()
    assert resumed.parts_already_done == 2 and resumed.parts_total == 3
    assert resumed.sources_read == 2  # only the last part was decoded again
    assert committed_parts(tmp_path / "resumed") == [0, 1, 2]
    assert verify_store(tmp_path / "resumed") == []
    assert rows(tmp_path / "resumed") == rows(tmp_path / "reference")
    assert len(RoiStore(tmp_path / "resumed")) == reference.rois


def test_run_again_on_a_complete_store_does_nothing(tiles, tmp_path, small_config):
    first = run_filter(tiles, tmp_path / "s", small_config)
    again = run_filter(tiles, tmp_path / "s", small_config)
    assert again.parts_already_done == 3 and again.sources_read == 0 and again.rois == 0
    assert len(RoiStore(tmp_path / "s")) == first.rois


def test_added_tiles_are_appended_as_new_parts(tiles, tmp_path, small_config):
    run_filter(tiles, tmp_path / "s", small_config)
    tile_folder(tmp_path / "more", 8)
    for i in (6, 7):  # names sort after the first six, so the old parts keep their meaning
        (tmp_path / "more" / f"tile_{i:02d}.png").rename(tiles / f"tile_{i:02d}.png")
    summary = run_filter(tiles, tmp_path / "s", small_config)
    assert summary.parts_total == 4 and summary.parts_already_done == 3 and summary.sources_read == 2
    assert RoiStore(tmp_path / "s").complete


def test_changed_inputs_are_refused(tiles, tmp_path, small_config):
    run_filter(tiles, tmp_path / "s", small_config)
    (tiles / "tile_00.png").unlink()
    with pytest.raises(ValueError, match="other inputs"):
        run_filter(tiles, tmp_path / "s", small_config)


def test_skipped_sources_are_recorded(tiles, tmp_path, small_config):
    (tiles / "tile_03.png").write_bytes(b"not a png")
    summary = run_filter(tiles, tmp_path / "s", small_config)
    assert summary.sources_skipped == 1 and summary.sources_read == 5
    assert summary.skipped[0]["path"] == "tile_03.png"
    assert summary.skip_reasons == {"not a readable image": 1}
    table = {s["path"]: s for s in RoiStore(tmp_path / "s").sources()}
    assert table["tile_03.png"]["status"] == "skipped" and table["tile_03.png"]["error"]
    assert verify_store(tmp_path / "s") == []


def test_no_images_found(tmp_path, small_config):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        run_filter(tmp_path / "empty", tmp_path / "s", small_config)


def test_parts_decoded_in_several_batches_give_the_same_store(tiles, tmp_path, small_config):
    """Decoding hands over batches, not whole parts (bounded memory for huge tiles); a part whose sources
    arrive in several batches is committed exactly as one that arrives in one."""
    from activessf_engine.config import replace_section

    one_batch = replace_section(replace_section(small_config, "store", sources_per_part=3), "input", batch_size=16)
    many_batches = replace_section(one_batch, "input", batch_size=1)
    run_filter(tiles, tmp_path / "one", one_batch)
    run_filter(tiles, tmp_path / "many", many_batches)
    assert rows(tmp_path / "one") == rows(tmp_path / "many")
    assert [s["path"] for s in RoiStore(tmp_path / "many").sources()] == sorted(p.name for p in tiles.iterdir())
