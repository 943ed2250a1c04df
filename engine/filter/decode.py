"""Decode tiles to (H, W, 3) uint8 RGB tensors: a batched DALI pipeline, Pillow for what DALI cannot read.

A file that cannot be decoded becomes a `DecodedImage` with an error, never an exception that stops
the run. Every file is first probed with Pillow (header only) so that the size guard
(decompression bombs), the tiny-image guard and the routing by pixel mode happen before any
decoding: 8-bit RGB, grayscale, palette and RGBA images go to DALI (alpha is dropped), other modes
(16-bit, 32-bit, float, CMYK) go to Pillow and are converted. EXIF orientation is never applied, by
any decoder: pixels (and so boxes) are in the order the file stores them, as in a slide scanner's tiles;
the orientation tag is recorded with each source (`DecodedImage.orientation`, 1 = none).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from activessf_engine.config import InputConfig
from activessf_engine.device import DeviceChoice, as_choice, available_cores

T = TypeVar("T")

log = logging.getLogger(__name__)

DALI_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA"}
DALI_FORMATS = {"JPEG", "PNG", "BMP", "TIFF"}
EXIF_ORIENTATION = 0x0112


@dataclass
class DecodedImage:
    path: Path
    image: torch.Tensor | None  # (H, W, 3) uint8 on the decode device; None when `error` is set
    error: str | None = None
    decoder: str = ""  # "dali-cpu", "dali-gpu", "pillow" or "" for failures
    width: int = 0
    height: int = 0
    orientation: int = 1  # EXIF orientation tag of the file (never applied; 1 = none or absent)


class Decoder(Protocol):
    """Decodes a batch of encoded images to (H, W, 3) uint8 tensors on `device`; raises RuntimeError
    when any of them fails. Files it does not `accept` (by Pillow's format and mode) go to Pillow."""

    name: str
    batch_size: int
    device: torch.device

    def accepts(self, image_format: str, mode: str) -> bool: ...

    def decode(self, blobs: Sequence[bytes]) -> list[torch.Tensor]: ...


def _without_addresses(text: str) -> str:
    """Pillow names the file it read as `<_io.BytesIO object at 0x7f...>` or `<_io.BufferedReader name=7>`: drop
    the address or descriptor (it differs on every run and tells the user nothing)."""
    return _ADDRESS.sub(r"<\1>", text)


_ADDRESS = re.compile(r"<([\w.]+) (?:object at 0x[0-9a-fA-F]+|name=\d+)>")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass
class _Probe:
    path: Path
    data: bytes | None = None
    mode: str = ""
    format: str = ""
    width: int = 0
    height: int = 0
    orientation: int = 1
    error: str | None = None

    def failed(self, reason: str) -> DecodedImage:
        return DecodedImage(self.path, None, reason, "", self.width, self.height, self.orientation)

    def decoded(self, image: torch.Tensor, decoder: str) -> DecodedImage:
        return DecodedImage(self.path, image, None, decoder, image.shape[1], image.shape[0], self.orientation)


# The bytes an image file may hold: its pixels at 8 bytes each (16-bit RGBA, uncompressed) and this much more
# for its metadata (ICC profile, EXIF, XMP, thumbnails). A file beyond it carries data after the image (a JPEG
# with a trailer of gigabytes): it is refused from its header and size, before it is read.
MAX_BYTES_PER_PIXEL = 8
METADATA_BYTES = 16 << 20


def _probe(path: Path, config: InputConfig) -> _Probe:
    """What the header of `path` says (format, mode, size, orientation) and, if it passes every guard, its bytes.

    Nothing is read beyond the header before the guards pass. The file is opened without blocking, so a FIFO
    (or any file that is not a regular one) is refused instead of waiting forever for a writer."""
    probe = _Probe(path)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        probe.error = "file name is not valid UTF-8 (renaming the file lets it be read)"
        return probe
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        probe.error = f"unreadable: {exc.strerror or exc}: {path}"
        return probe
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            probe.error = f"unreadable: {os.strerror(errno.EISDIR)}"
        else:
            probe.error = f"not a regular file ({_file_kind(info.st_mode)}); only image files are read"
        return probe
    with os.fdopen(fd, "rb") as fh:
        if not info.st_size:
            probe.error = "empty file"
        else:
            _read_header(probe, fh, config)
        if probe.error is None:
            most = probe.width * probe.height * MAX_BYTES_PER_PIXEL + METADATA_BYTES
            if info.st_size > most:
                probe.error = (
                    f"{info.st_size} bytes for a {probe.width}x{probe.height} image, more than its pixels can take: "
                    "data after the image (a damaged or padded file)"
                )
        if probe.error is None:
            fh.seek(0)
            probe.data = fh.read(info.st_size)
    return probe


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device"}
    return next((name for test, name in kinds.items() if test(mode)), "not a plain file")


def _read_header(probe: _Probe, fh: BinaryIO, config: InputConfig) -> None:
    """Format, mode, size and orientation from the file's header (Pillow opens lazily), and the size guards.
    Pillow's own decompression-bomb limit (a process-wide setting of Pillow's) is raised to `config.max_pixels`
    when it is lower, since this probe enforces that limit itself, with its own message."""
    Image.MAX_IMAGE_PIXELS = max(config.max_pixels, Image.MAX_IMAGE_PIXELS or 0)
    try:
        with Image.open(fh) as img:
            probe.mode, probe.format = img.mode, img.format or ""
            probe.width, probe.height = img.size
            if probe.width * probe.height <= config.max_pixels:
                probe.orientation = _orientation(img)
    except Image.DecompressionBombError:
        probe.error = (
            f"too large: over {2 * config.max_pixels} pixels, twice max_pixels={config.max_pixels} "
            "(decompression-bomb guard; raise input.max_pixels to accept it)"
        )
        return
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        probe.error = f"not a readable image: {_without_addresses(str(exc))}"
        return
    if probe.width * probe.height > config.max_pixels:
        probe.error = (
            f"too large: {probe.width}x{probe.height} pixels exceeds max_pixels={config.max_pixels} "
            "(decompression-bomb guard; raise input.max_pixels to accept it)"
        )
    elif min(probe.width, probe.height) < config.min_side:
        probe.error = f"too small: {probe.width}x{probe.height}, the shorter side is below min_side={config.min_side}"


def _orientation(img: Image.Image) -> int:
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # Pillow would decode every pixel to look for an eXIf chunk after them (writers put it before)
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block is no reason to refuse the pixels
        return 1
    return value if 1 <= value <= 8 else 1


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Pillow image of any mode -> (H, W, 3) uint8; deeper modes are scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max(initial=0)), 1e-12)
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _decode_pillow(probe: _Probe) -> DecodedImage:
    try:
        with Image.open(io.BytesIO(probe.data)) as img:
            img.load()
            rgb = _to_rgb8(img)
    except Exception as exc:  # Pillow raises many types for damaged files; each becomes a record
        return probe.failed(f"decode failed: {type(exc).__name__}: {_without_addresses(str(exc))}")
    return probe.decoded(torch.from_numpy(rgb), "pillow")


class DaliDecoder:
    """A DALI pipeline fed encoded bytes through `external_source`; CPU (`device_id=None`) or mixed."""

    def __init__(self, batch_size: int, threads: int, device: torch.device | str = "cpu") -> None:
        from nvidia.dali import fn, pipeline_def, types

        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        device_id = (self.device.index or 0) if on_gpu else None

        @pipeline_def(
            batch_size=batch_size,
            num_threads=threads or available_cores(),
            device_id=device_id,
            prefetch_queue_depth=1,
            exec_async=False,
            exec_pipelined=False,
        )
        def pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            device = "mixed" if on_gpu else "cpu"
            return fn.decoders.image(encoded, device=device, output_type=types.RGB, adjust_orientation=False)

        self.name = "dali-gpu" if on_gpu else "dali-cpu"
        self.batch_size = batch_size
        self._make = pipe
        self._pipe = self._build()

    def _build(self):
        pipe = self._make()
        pipe.build()
        return pipe

    def accepts(self, image_format: str, mode: str) -> bool:
        return image_format in DALI_FORMATS and mode in DALI_MODES

    def decode(self, blobs: Sequence[bytes]) -> list[torch.Tensor]:
        """Decode one batch (at most batch_size); raises RuntimeError if any file fails.

        After a failure DALI's pipeline refuses every later batch, so it is built anew.
        """
        self._pipe.feed_input("encoded", [np.frombuffer(b, dtype=np.uint8) for b in blobs])
        try:
            (out,) = self._pipe.run()
        except RuntimeError:
            self._pipe = self._build()
            raise
        if self.device.type == "cuda":
            images = [torch.from_dlpack(out[i]).clone() for i in range(len(blobs))]
            # the next run() reuses DALI's output buffers: the clones must be done before it starts
            torch.cuda.synchronize(self.device)
            return images
        return [torch.from_numpy(np.array(out[i])) for i in range(len(blobs))]


class TorchvisionDecoder:
    """Used where DALI is not installed: torchvision's decoders; on CUDA, nvJPEG for JPEG files only (the
    others are not accepted and go to Pillow, then to the GPU)."""

    def __init__(self, batch_size: int, device: torch.device | str = "cpu", threads: int = 0) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.name = "torchvision-gpu" if self.device.type == "cuda" else "torchvision-cpu"
        self._threads = threads or available_cores()  # CPU decoding: torchvision's ops release the GIL

    def accepts(self, image_format: str, mode: str) -> bool:
        if self.device.type == "cuda":
            return image_format == "JPEG" and mode in ("RGB", "L")
        return image_format in ("JPEG", "PNG") and mode in DALI_MODES

    def decode(self, blobs: Sequence[bytes]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        try:
            if self.device.type == "cuda":
                # nvJPEG output is allocated on the caller's stream but written from torchvision's own
                # stream, which does not wait for it: synchronize before (no memory that queued kernels
                # still read can be handed out) and after (the pixels are written before they are read).
                torch.cuda.synchronize(self.device)
                images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
                torch.cuda.synchronize(self.device)
            else:
                with ThreadPoolExecutor(max_workers=min(self._threads, len(data))) as pool:
                    images = list(pool.map(lambda d: decode_image(d, mode=ImageReadMode.RGB), data))
        except (RuntimeError, ValueError) as exc:
            raise RuntimeError(_first_line(exc)) from exc
        return [img.permute(1, 2, 0).contiguous() for img in images]


def make_decoder(batch_size: int, threads: int, device: DeviceChoice | str | torch.device = "cpu") -> Decoder:
    """The decoder that the device choice names: DALI (the engine's), or torchvision's where DALI is absent."""
    choice = as_choice(device)
    if choice.decoder == "dali":
        return DaliDecoder(batch_size, threads, choice.torch_device)
    return TorchvisionDecoder(batch_size, choice.torch_device, threads)


def _decode_batch(decoder: Decoder, probes: list[_Probe]) -> list[DecodedImage]:
    """The decoder on the files it accepts, as one batch; if that fails, file by file; then Pillow for the
    rest and for the files the decoder refused."""
    results: list[DecodedImage | None] = [None] * len(probes)
    accepted = [i for i, p in enumerate(probes) if decoder.accepts(p.format, p.mode)]
    try:
        images = decoder.decode([probes[i].data for i in accepted]) if accepted else []
    except RuntimeError:
        images = []
        for i in accepted:
            try:
                images.append(decoder.decode([probes[i].data])[0])
            except RuntimeError as exc:
                log.debug("%s refused %s (%s); trying Pillow", decoder.name, probes[i].path, _first_line(exc))
                images.append(None)
    for i, image in zip(accepted, images, strict=True):
        if image is not None:
            results[i] = probes[i].decoded(image, decoder.name)
    for i, probe in enumerate(probes):
        if results[i] is None:
            results[i] = _decode_pillow(probe)
            if results[i].image is not None and decoder.device.type == "cuda":
                results[i].image = results[i].image.to(decoder.device)
    return results


def decode_batches(
    paths: Sequence[Path],
    config: InputConfig,
    device: DeviceChoice | str | torch.device = "cpu",
    decoder: Decoder | None = None,
) -> Iterator[list[DecodedImage]]:
    """Decode `paths` in order, one list of `DecodedImage` per decode batch.

    A batch holds at most the decoder's batch size of files and `config.max_batch_pixels` pixels, so the
    memory of decoded tiles is bounded whatever their size (an image larger than the cap is decoded alone).
    """
    decoder = decoder or make_decoder(config.batch_size, config.threads, device)
    for probes in _probe_batches(paths, config, decoder.batch_size):
        good = [p for p in probes if p.error is None]
        decoded = iter(_decode_batch(decoder, good)) if good else iter(())
        yield [probe.failed(probe.error) if probe.error is not None else next(decoded) for probe in probes]


def pixel_bounded_batches(
    items: Iterable[T], pixels_of: Callable[[T], int], batch_size: int, max_pixels: int
) -> Iterator[list[T]]:
    """Consecutive batches of `items`, each of at most `batch_size` items and `max_pixels` pixels (by
    `pixels_of`); an item larger than `max_pixels` makes a batch alone."""
    batch: list[T] = []
    pixels = 0
    for item in items:
        size = pixels_of(item)
        if batch and (len(batch) == batch_size or pixels + size > max_pixels):
            yield batch
            batch, pixels = [], 0
        batch.append(item)
        pixels += size
    if batch:
        yield batch


def why_unreadable(path: Path, config: InputConfig) -> str | None:
    """Why the file at `path` would be skipped (its header read, nothing decoded), or None if it is an image."""
    return _probe(path, config).error


def _probe_batches(paths: Sequence[Path], config: InputConfig, batch_size: int) -> Iterator[list[_Probe]]:
    probes = (_probe(Path(path), config) for path in paths)
    return pixel_bounded_batches(
        probes, lambda p: p.width * p.height if p.error is None else 0, batch_size, config.max_batch_pixels
    )


def decode_files(
    paths: Sequence[Path],
    config: InputConfig,
    device: DeviceChoice | str | torch.device = "cpu",
    decoder: Decoder | None = None,
) -> Iterator[DecodedImage]:
    """Decode `paths` in order, batch by batch (`decode_batches`); yields one `DecodedImage` per path."""
    for batch in decode_batches(paths, config, device, decoder):
        yield from batch
