"""Decoding: every kind of bad or unusual input becomes a record, never an exception; finding sources."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BCCD, PURPLE, draw_tile, write_image
from PIL import Image

from activessf_engine.config import InputConfig
from activessf_engine.filter.decode import DaliDecoder, TorchvisionDecoder, _first_line, decode_files
from activessf_engine.filter.sources import Source, find_sources

CONFIG = InputConfig(batch_size=4, threads=1)


@pytest.fixture
def decoder() -> DaliDecoder:
    return DaliDecoder(CONFIG.batch_size, CONFIG.threads, "cpu")


def decode(paths, decoder, config: InputConfig = CONFIG):
    records = list(decode_files([Path(p) for p in paths], config, "cpu", decoder))
    assert len(records) == len(paths)
    for record, path in zip(records, paths, strict=True):
        assert record.path == Path(path)
        if record.image is None:
            assert record.error and record.decoder == ""
        else:
            assert record.error is None
            assert record.image.dtype.is_floating_point is False
            assert tuple(record.image.shape) == (record.height, record.width, 3)
    return records


def rgb_gradient(height: int = 40, width: int = 50) -> np.ndarray:
    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = 200
    arr[..., 1] = (np.arange(width) * 5)[None, :]
    arr[..., 2] = 30
    return arr


def write_png16_rgb(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand (Pillow has no 16-bit RGB mode to save from)."""
    height, width, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# --- files that cannot be decoded -------------------------------------------------------------------


def test_unreadable_inputs_become_records_with_reasons(tmp_path, decoder):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 8)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is text, not a picture\n")
    (tmp_path / "x.jpg").mkdir()
    paths = [tmp_path / n for n in ("corrupt.jpg", "empty.png", "text.png", "x.jpg", "missing.jpg")]
    records = decode(paths, decoder)
    errors = [r.error for r in records]
    assert all(r.image is None for r in records)
    assert errors[0].startswith("not a readable image")
    assert errors[1] == "empty file"
    assert errors[2].startswith("not a readable image")
    assert errors[3].startswith("unreadable") and "directory" in errors[3].lower()
    assert errors[4].startswith("unreadable")


def test_truncated_jpeg_is_a_record(tmp_path, decoder):
    data = (BCCD / "BloodImage_00016.jpg").read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    (record,) = decode([path], decoder)
    assert record.image is None
    assert "truncated" in record.error.lower()
    assert (record.width, record.height) == (640, 480)  # the header was read


def test_tiny_image_skipped_too_small(tmp_path, decoder):
    path = write_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "tiny.png")
    (record,) = decode([path], decoder)
    assert record.image is None and record.error.startswith("too small")


def test_huge_image_skipped_too_large(tmp_path, decoder):
    path = write_image(rgb_gradient(200, 200), tmp_path / "big.png")
    (record,) = decode([path], decoder, InputConfig(batch_size=4, threads=1, max_pixels=10_000))
    assert record.image is None and record.error.startswith("too large")
    assert "max_pixels" in record.error
    (record,) = decode([path], decoder, InputConfig(batch_size=4, threads=1, max_pixels=40_000))
    assert record.image is not None  # the limit is inclusive: 200 x 200 = 40,000


# --- files that decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "convert", "decoder_name"),
    [
        ("rgb.png", None, "dali-cpu"),
        ("rgba.png", "RGBA", "dali-cpu"),
        ("gray.png", "L", "dali-cpu"),
        ("palette.png", "P", "dali-cpu"),
        ("rgb.tif", None, "dali-cpu"),
        ("rgb.bmp", None, "dali-cpu"),
        ("upper.PNG", None, "dali-cpu"),
        ("cmyk.jpg", "CMYK", "pillow"),
    ],
)
def test_lossless_and_converted_modes(tmp_path, decoder, name, convert, decoder_name):
    arr = rgb_gradient()
    image = Image.fromarray(arr)
    if convert:
        image = image.convert(convert)
    path = tmp_path / name
    image.save(path)
    (record,) = decode([path], decoder)
    assert record.error is None and record.decoder == decoder_name
    got = record.image.numpy()
    if convert in (None, "RGBA"):
        assert np.array_equal(got, arr)  # lossless, alpha dropped
    else:
        with Image.open(path) as reread:  # what the file holds, as Pillow converts it to RGB
            want = np.asarray(reread.convert("RGB"))
        assert np.abs(got.astype(int) - want).max() <= (0 if decoder_name == "pillow" else 1)


def test_jpeg_goes_to_dali(tmp_path, decoder):
    path = write_image(draw_tile([("disk", 50, 50, 30)]), tmp_path / "t.jpg", quality=95)
    (record,) = decode([path], decoder)
    assert record.decoder == "dali-cpu"
    assert np.abs(record.image.numpy()[50, 50].astype(int) - PURPLE).max() <= 6


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path, decoder):
    g16 = np.full((20, 30), 65535, np.uint16)
    g16[:, 10:20] = 32896
    g16[:, 20:] = 0
    path = tmp_path / "g16.png"
    Image.fromarray(g16).save(path)
    assert Image.open(path).mode.startswith("I")
    (record,) = decode([path], decoder)
    assert record.decoder == "pillow"
    img = record.image.numpy()
    assert img[0, 0].tolist() == [255, 255, 255]
    assert img[0, 15].tolist() == [128, 128, 128]
    assert img[0, 25].tolist() == [0, 0, 0]


def test_16bit_rgb_png(tmp_path, decoder):
    a16 = np.zeros((20, 30, 3), np.uint16)
    a16[..., 0], a16[..., 1], a16[..., 2] = 65535, 32896, 257 * 30
    (record,) = decode([write_png16_rgb(tmp_path / "rgb16.png", a16)], decoder)
    assert record.error is None and record.decoder in ("dali-cpu", "pillow")
    assert record.image.numpy()[5, 5].tolist() == [255, 128, 30]


def test_mixed_batch_decodes_good_files_with_dali(tmp_path, decoder):
    good = [write_image(rgb_gradient(), tmp_path / f"good{i}.png") for i in range(3)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage" * 20)
    paths = [good[0], bad, good[1], good[2], bad]  # spans two batches of 4
    records = decode(paths, decoder)
    assert [r.image is None for r in records] == [False, True, False, False, True]
    assert {records[i].decoder for i in (0, 2, 3)} == {"dali-cpu"}


def test_dali_refusal_does_not_poison_the_decoder(tmp_path, decoder):
    data = (BCCD / "BloodImage_00016.jpg").read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    good = [write_image(rgb_gradient(), tmp_path / f"good{i}.png") for i in range(5)]
    records = decode([half, *good], decoder)  # batches [half, g0, g1, g2] and [g3, g4]
    assert records[0].image is None
    assert [r.decoder for r in records[1:]] == ["dali-cpu"] * 5


def test_default_decoder_is_built_when_none_given(tmp_path):
    path = write_image(rgb_gradient(), tmp_path / "a.png")
    (record,) = list(decode_files([path], CONFIG))
    assert record.decoder == "dali-cpu"


# --- finding sources -----------------------------------------------------------------------------------


def test_find_sources_skips_dotfiles_and_directories_and_sorts(tmp_path):
    arr = rgb_gradient()
    for rel in ("b.png", "a/z.JPG", "a/y.jpeg", ".hidden.jpg", ".dotdir/in.png", "c.txt", "d.tiff", "e.Bmp"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".txt":
            path.write_text("x")
        else:
            write_image(arr, path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None)
    (tmp_path / "x.jpg").mkdir()
    found = find_sources(tmp_path, InputConfig().extensions)
    assert [s.relpath for s in found] == ["a/y.jpeg", "a/z.JPG", "b.png", "d.tiff", "e.Bmp"]
    assert all(s.path == tmp_path / s.relpath for s in found)


def test_find_sources_single_file_and_missing_root(tmp_path):
    path = write_image(rgb_gradient(), tmp_path / "one.png")
    assert find_sources(path, InputConfig().extensions) == [Source("one.png", path)]
    with pytest.raises(FileNotFoundError):
        find_sources(tmp_path / "nope", InputConfig().extensions)


def test_source_ids_are_stable_and_distinct(tmp_path):
    a = Source("a/b.png", tmp_path / "a/b.png")
    elsewhere = Source("a/b.png", Path("/somewhere/else/a/b.png"))
    assert a.id == elsewhere.id  # depends on the relative path only
    assert len(a.id) == 16
    assert Source("a/c.png", tmp_path).id != a.id
    assert a.id == hashlib.sha1(b"a/b.png").hexdigest()[:16]


def test_pillow_decoded_images_are_writable():
    from activessf_engine.filter.decode import _to_rgb8  # torch hides the flag and warns only once per process

    assert _to_rgb8(Image.fromarray(rgb_gradient()).convert("CMYK")).flags.writeable


class _JpegOnlyDecoder:
    """Stands in for nvJPEG: accepts JPEG files only, and fails a batch (with an empty message) when asked to."""

    name = "fake-gpu"
    batch_size = 4
    device = torch.device("cpu")

    def __init__(self, fail_batches: bool = False) -> None:
        self.fail_batches = fail_batches
        self.seen: list[int] = []

    def accepts(self, image_format: str, mode: str) -> bool:
        return image_format == "JPEG"

    def decode(self, blobs):
        self.seen.append(len(blobs))
        if self.fail_batches and len(blobs) > 1:
            raise RuntimeError("")  # an empty message: logging its first line must not raise
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))) for b in blobs]


def test_files_the_decoder_does_not_accept_go_to_pillow_alone(tmp_path):
    jpeg = write_image(rgb_gradient(), tmp_path / "a.jpg")
    png = write_image(rgb_gradient(), tmp_path / "b.png")
    fake = _JpegOnlyDecoder()
    records = decode([jpeg, png, jpeg], fake)
    assert [r.decoder for r in records] == ["fake-gpu", "pillow", "fake-gpu"]
    assert fake.seen == [2]  # the PNG did not send the batch elsewhere: both JPEGs went in one call


def test_batch_failure_with_an_empty_message_falls_back_file_by_file(tmp_path):
    paths = [write_image(rgb_gradient(), tmp_path / f"{i}.jpg") for i in range(3)]
    fake = _JpegOnlyDecoder(fail_batches=True)
    records = decode(paths, fake)
    assert [r.decoder for r in records] == ["fake-gpu"] * 3
    assert fake.seen == [3, 1, 1, 1]


def test_first_line_of_an_empty_message_is_the_type():
    assert _first_line(RuntimeError("")) == "RuntimeError"
    assert _first_line(ValueError("bad\nmore")) == "bad"


def test_torchvision_decoder_routes_by_device(tmp_path):
    gpu, cpu = TorchvisionDecoder(4, "cuda"), TorchvisionDecoder(4, "cpu")  # building one touches no GPU
    assert gpu.accepts("JPEG", "RGB") and not gpu.accepts("PNG", "RGB") and not gpu.accepts("JPEG", "CMYK")
    assert cpu.accepts("PNG", "RGBA")
    jpeg = write_image(rgb_gradient(), tmp_path / "a.jpg")
    png = write_image(rgb_gradient(), tmp_path / "b.png")
    records = decode([jpeg, png], cpu)
    assert [r.decoder for r in records] == ["torchvision-cpu"] * 2
    assert np.array_equal(records[1].image.numpy(), rgb_gradient())
