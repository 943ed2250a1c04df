"""`ShardReader` reads what zarr-python reads, for every layout it accepts, and refuses the others."""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from conftest import synthetic_store
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ShardingCodec, TransposeCodec, ZstdCodec

from activessf_engine.config import EngineConfig, StoreConfig, output_differences, replace_section, to_dict
from activessf_engine.feed.datasets import RoiDataset, ShardedRoiDataset
from activessf_engine.feed.export import export_store
from activessf_engine.feed.shard_order import iter_segments, store_shards
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.shard_reader import (
    CHANNELS_FIRST,
    EMPTY,
    INDEX_CRC,
    INDEX_ENTRY,
    RoiChecksumError,
    ShardReader,
)
from activessf_engine.store.verify import verify_store
from activessf_engine.store.writer import PartData, StoreWriter

SIZE = 12
COMPRESSORS = {
    "lz4": BloscCodec(cname="lz4", clevel=9, shuffle="noshuffle", typesize=1),
    "zstd": ZstdCodec(level=1),
    "none": None,
}


def rois_like_cells(n: int, seed: int = 0) -> np.ndarray:
    """Smooth ROIs (they compress, as cells do) with noise (so no two chunks are alike)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, SIZE, dtype=np.float32)
    base = ramp[None, :, None, None] + ramp[None, None, :, None] * np.array([0.2, 0.5, 0.9])
    return (base + rng.integers(0, 40, (n, SIZE, SIZE, 3))).clip(0, 255).astype(np.uint8)


def write_array(path: Path, rois: np.ndarray, shard_rows: int, compressor: str, channels_first: bool, **kw) -> Path:
    array = zarr.create_array(
        str(path),
        shape=rois.shape,
        chunks=(1, *rois.shape[1:]),
        shards=(shard_rows, *rois.shape[1:]),
        dtype="uint8",
        filters=[TransposeCodec(order=CHANNELS_FIRST)] if channels_first else None,
        compressors=COMPRESSORS[compressor],
        **kw,
    )
    array[:] = rois
    return path


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("stored_channels_first", [True, False])
@pytest.mark.parametrize("channels_first", [True, False])
def test_reads_what_zarr_reads(tmp_path, compressor, stored_channels_first, channels_first) -> None:
    rois = rois_like_cells(11)  # shards of 4: the last holds 3
    path = write_array(tmp_path / "rois", rois, 4, compressor, stored_channels_first)
    reader = ShardReader.open(path)
    assert reader is not None and reader.layout.channels_first == stored_channels_first
    rows = np.array([10, 0, 5, 5, 3, 8, 1])  # across shards, out of order, one twice
    want = np.asarray(zarr.open_array(str(path), mode="r")[:])[rows]
    assert np.array_equal(want, rois[rows])
    got = reader.read(rows, channels_first=channels_first)
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    assert np.array_equal(got, want.transpose(0, 3, 1, 2) if channels_first else want)
    assert reader.read([], channels_first).shape == (0, *got.shape[1:])


def test_index_at_the_start_of_a_shard(tmp_path) -> None:
    rois = rois_like_cells(6)
    sharding = ShardingCodec(
        chunk_shape=(1, SIZE, SIZE, 3), codecs=[BytesCodec(), COMPRESSORS["zstd"]], index_location="start"
    )
    array = zarr.create(
        shape=rois.shape, chunks=(4, SIZE, SIZE, 3), dtype="uint8", codecs=[sharding], store=str(tmp_path / "a")
    )
    array[:] = rois
    reader = ShardReader.open(tmp_path / "a")
    assert reader is not None and not reader.layout.index_at_end
    assert np.array_equal(reader.read(np.arange(6)), rois)


def test_unwritten_chunks_and_shards_read_as_the_fill_value(tmp_path) -> None:
    rois = rois_like_cells(8)
    rois[2] = 0  # zarr skips writing a chunk equal to the fill value
    rois[4:] = 0  # and a whole shard of them
    path = write_array(tmp_path / "rois", rois, 4, "lz4", True)
    assert not (path / "c" / "1" / "0" / "0" / "0").exists()
    assert np.array_equal(ShardReader.open(path).read(np.arange(8)), np.asarray(zarr.open_array(str(path))[:]))


def test_rows_out_of_range_raise(tmp_path) -> None:
    reader = ShardReader.open(write_array(tmp_path / "rois", rois_like_cells(3), 4, "lz4", True))
    for rows in ([3], [-1]):
        with pytest.raises(IndexError, match="outside"):
            reader.read(rows)


def test_a_damaged_index_or_a_cut_file_is_an_error(tmp_path) -> None:
    path = write_array(tmp_path / "rois", rois_like_cells(4), 4, "lz4", True)
    shard = path / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="crc32c"):
        ShardReader.open(path).read([0])
    shard.write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match="too short"):
        ShardReader.open(path).read([0])


def layouts_not_read(tmp_path: Path) -> list[Path]:
    rois = rois_like_cells(4)
    unsharded = zarr.create_array(str(tmp_path / "plain"), shape=rois.shape, chunks=(1, SIZE, SIZE, 3), dtype="uint8")
    unsharded[:] = rois
    two_per_chunk = zarr.create_array(
        str(tmp_path / "two"), shape=rois.shape, chunks=(2, SIZE, SIZE, 3), shards=(4, SIZE, SIZE, 3), dtype="uint8"
    )
    two_per_chunk[:] = rois
    gzip = zarr.create_array(
        str(tmp_path / "gzip"),
        shape=rois.shape,
        chunks=(1, SIZE, SIZE, 3),
        shards=(4, SIZE, SIZE, 3),
        dtype="uint8",
        compressors=GzipCodec(),
    )
    gzip[:] = rois
    other_order = write_array(tmp_path / "hwc-swapped", rois, 4, "lz4", False)
    meta = json.loads((other_order / "zarr.json").read_text())
    meta["codecs"][0]["configuration"]["codecs"].insert(
        0, {"name": "transpose", "configuration": {"order": [0, 2, 1, 3]}}
    )
    (other_order / "zarr.json").write_text(json.dumps(meta))
    no_index_codecs = write_array(tmp_path / "no-index-codecs", rois, 4, "lz4", True)
    meta = json.loads((no_index_codecs / "zarr.json").read_text())
    meta["codecs"][0]["configuration"]["index_codecs"] = []
    (no_index_codecs / "zarr.json").write_text(json.dumps(meta))
    return [tmp_path / "plain", tmp_path / "two", tmp_path / "gzip", other_order, no_index_codecs]


def test_other_layouts_are_left_to_zarr(tmp_path) -> None:
    for path in layouts_not_read(tmp_path):
        assert ShardReader.open(path) is None, path


def part(rois: np.ndarray, name: str) -> PartData:
    n = len(rois)
    box = np.tile(np.array([0, 0, SIZE, SIZE], np.int32), (n, 1))
    columns = {
        "box": box,
        "crop_box": box,
        "area": np.full(n, SIZE * SIZE, np.int64),
        "fill_rate": np.ones(n, np.float32),
        "source": np.zeros(n, np.int32),
        "level0_box": box.astype(np.int64),
        "pad": np.zeros((n, 4), np.int16),
    }
    source = {"path": name, "id": name, "width": SIZE, "height": SIZE, "status": "ok", "error": None, "rois": n}
    return PartData(rois, columns, [source])


def test_a_store_with_parts_of_each_codec_reads_back_exactly(tmp_path) -> None:
    """A resume may change the codec (it changes no pixel): each part is read by its own metadata."""
    plan = [["a.png"], ["b.png"]]
    rois = [rois_like_cells(5, seed=1), rois_like_cells(3, seed=2)]
    root = tmp_path / "store"
    StoreWriter.create(root, "candidates", {}, plan, layout=StoreConfig(codec="lz4", rois_per_shard=2)).commit_part(
        0, part(rois[0], "a.png")
    )
    StoreWriter(root, StoreConfig(codec="zstd", rois_per_shard=2)).commit_part(1, part(rois[1], "b.png"))
    names = [json.loads((root / "parts" / p / "rois" / "zarr.json").read_text()) for p in ("p000000", "p000001")]
    inner = [[c["name"] for c in m["codecs"][0]["configuration"]["codecs"]] for m in names]
    assert inner == [["transpose", "bytes", "blosc"], ["transpose", "bytes", "zstd"]]
    store = RoiStore(root)
    everything = np.concatenate(rois)
    assert np.array_equal(np.stack([store.roi(i) for i in range(8)]), everything)
    assert np.array_equal(store.roi(6, channels_first=True), everything[6].transpose(2, 0, 1))
    assert np.array_equal(store.part_rois(0, np.array([4, 0])), rois[0][[4, 0]])


def _store_with_plain_zarr_rois(tmp_path: Path) -> tuple[Path, np.ndarray, zarr.Array]:
    """A one-part store whose `rois` were rewritten as a plain zarr array (chunks, no shards): its root, the
    ROIs and that array."""
    rois = rois_like_cells(5)
    root = tmp_path / "store"
    StoreWriter.create(root, "candidates", {}, [["a.png"]], layout=StoreConfig(rois_per_shard=2)).commit_part(
        0, part(rois, "a.png")
    )
    folder = root / "parts" / "p000000" / "rois"
    shutil.rmtree(folder)
    plain = zarr.create_array(str(folder), shape=rois.shape, chunks=(2, SIZE, SIZE, 3), dtype="uint8")
    plain[:] = rois
    return root, rois, plain


def test_the_store_reads_other_layouts_through_zarr(tmp_path) -> None:
    """A part whose `rois` this reader does not know (written by another tool, say) reads the same."""
    root, rois, _ = _store_with_plain_zarr_rois(tmp_path)
    assert ShardReader.open(root / "parts" / "p000000" / "rois") is None
    store = RoiStore(root)
    assert np.array_equal(store.part_rois(0), rois)
    assert np.array_equal(store.part_rois(0, np.array([3, 1]), channels_first=True), rois[[3, 1]].transpose(0, 3, 1, 2))
    assert np.array_equal(store.roi(4), rois[4])


@pytest.mark.parametrize("channels_first", [True, False])
def test_iter_rois_gives_each_roi_its_own_memory(tmp_path, channels_first) -> None:
    """A shuffle buffer keeps some ROIs a while: views of one shard's array would keep the whole shard."""
    reader = ShardReader.open(write_array(tmp_path / "rois", rois_like_cells(6), 4, "lz4", True))
    rows = [5, 0, 3, 4]
    rois = list(reader.iter_rois(rows, channels_first))
    assert all(roi.base is None and roi.flags.c_contiguous for roi in rois)
    assert np.array_equal(np.stack(rois), reader.read(rows, channels_first))


def test_shard_order_items_hold_only_their_own_pixels(tmp_path) -> None:
    """What `ShardedRoiDataset` buffers: each ROI its own array, none a view that keeps its shard alive."""
    store = RoiStore(synthetic_store(tmp_path / "store", (7, 5), rois_per_shard=4))
    segments = store_shards(store, np.arange(len(store)))
    items = list(iter_segments(store, segments, channels_first=True))
    assert [index for index, _ in items] == list(range(len(store)))
    assert all(roi.base is None for _, roi in items)
    assert all(np.array_equal(roi, store.roi(index).transpose(2, 0, 1)) for index, roi in items)


def test_a_run_may_resume_under_another_codec() -> None:
    """The codec changes no pixel (each part's metadata says how it is stored): not a difference that
    refuses a resume."""
    lz4 = EngineConfig()
    stored = json.loads(json.dumps(to_dict(lz4)))  # as the store keeps it
    zstd = replace_section(lz4, "store", codec="zstd", compression_level=3)
    assert output_differences(stored, to_dict(zstd)) == []
    assert output_differences(stored, to_dict(replace_section(lz4, "crop", size=64))) == ["crop.size 224 -> 64"]


# --- every ROI read is checked against its crc32 (issue 22) ---------------------------------------------


def rewrite_index(shard: Path, chunks: int, edit: Callable[[np.ndarray], None]) -> None:
    """Edit the (chunks, 2) index at the end of a shard file in place and give it a valid crc32c again: what
    a crafted (or carefully edited) file holds. The index crc32c alone cannot tell it from a sound one."""
    data = bytearray(shard.read_bytes())
    start = len(data) - chunks * INDEX_ENTRY - INDEX_CRC
    index = np.frombuffer(bytes(data[start:-INDEX_CRC]), dtype="<u8").reshape(chunks, 2).copy()
    edit(index)
    raw = index.astype("<u8").tobytes()
    data[start:] = raw + google_crc32c.value(raw).to_bytes(INDEX_CRC, "little")
    shard.write_bytes(bytes(data))


def swap_first_two(index: np.ndarray) -> None:
    index[[0, 1]] = index[[1, 0]]


def mark_first_empty(index: np.ndarray) -> None:
    index[0] = EMPTY


@pytest.mark.parametrize("edit", [swap_first_two, mark_first_empty])
def test_a_crafted_shard_index_is_caught_on_read_naming_the_part_and_row(tmp_path, edit) -> None:
    """Part p000001's first shard gets an index that points row 0 at row 1's chunk (or marks it empty), with a
    valid crc32c: RoiDataset, ShardedRoiDataset and export refuse it instead of serving wrong or black ROIs."""
    root = tmp_path / "store"
    clean = np.concatenate([rois_like_cells(7, seed=1), rois_like_cells(5, seed=2)])
    writer = StoreWriter.create(root, "candidates", {}, [["a.png"], ["b.png"]], layout=StoreConfig(rois_per_shard=4))
    writer.commit_part(0, part(clean[:7], "a.png"))
    writer.commit_part(1, part(clean[7:], "b.png"))
    writer.close()
    rewrite_index(root / "parts" / "p000001" / "rois" / "c" / "0" / "0" / "0" / "0", 4, edit)
    unchecked = RoiStore(root, check_rois=False).roi(7)  # what a reader without the check hands a trainer
    assert np.array_equal(unchecked, clean[8] if edit is swap_first_two else np.zeros_like(clean[7]))
    where = r"part p000001, row 0: the ROI read differs from its crc32"
    with pytest.raises(RoiChecksumError, match=where):
        RoiDataset(root)[7]
    assert np.array_equal(RoiDataset(root)[10].numpy(), clean[10].transpose(2, 0, 1))  # the rest still reads
    with pytest.raises(RoiChecksumError, match=r"part p000001, row [01]:"):
        list(ShardedRoiDataset(root, shuffle=False))
    with pytest.raises(RoiChecksumError, match=where):
        RoiStore(root).roi(7)  # (S, S, 3), the other layout
    with pytest.raises(RoiChecksumError, match=where):
        export_store(root, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()
    problems = verify_store(root, deep=True)  # verify still lists every ROI that differs
    assert any(p.startswith("p000001: ") and "rows 0" in p for p in problems), problems


@pytest.mark.parametrize("stored_channels_first", [True, False])
@pytest.mark.parametrize("channels_first", [True, False])
def test_checksums_are_checked_in_every_layout(tmp_path, stored_channels_first, channels_first) -> None:
    """Read as stored or transposed: the checksum covers the (S, S, 3) pixels either way."""
    rois = rois_like_cells(6)
    path = write_array(tmp_path / "parts" / "p000003" / "rois", rois, 4, "lz4", stored_channels_first)
    crc = np.array([zlib.crc32(roi.tobytes()) for roi in rois], dtype=np.uint32)
    got = ShardReader.open(path, crc).read([5, 0, 3], channels_first)
    assert np.array_equal(got, rois[[5, 0, 3]].transpose(0, 3, 1, 2) if channels_first else rois[[5, 0, 3]])
    crc[3] ^= 1
    with pytest.raises(RoiChecksumError, match="part p000003, row 3:"):
        ShardReader.open(path, crc).read([5, 0, 3], channels_first)
    with pytest.raises(RoiChecksumError, match="part p000003, row 3:"):
        list(ShardReader.open(path, crc).iter_rois([3], channels_first))


def test_rois_read_through_zarr_are_checked_too(tmp_path) -> None:
    root, rois, plain = _store_with_plain_zarr_rois(tmp_path)
    plain[2] = rois[3]  # another ROI where row 2 should be
    store = RoiStore(root)
    assert np.array_equal(store.part_rois(0, np.array([4, 1])), rois[[4, 1]])
    with pytest.raises(RoiChecksumError, match="part p000000, row 2:"):
        store.part_rois(0)
    with pytest.raises(RoiChecksumError, match="part p000000, row 2:"):
        store.roi(2, channels_first=True)
