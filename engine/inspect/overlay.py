"""`overlay`: what the filter saw in a tile and why it kept or rejected each region, drawn as a PNG.

Left panel: the tile with its composite HSV mask tinted yellow and a box round every region: green kept,
red rejected for its fill rate, orange rejected for its size (regions smaller than half of min_box on both
sides are boxed thinly, without a label, so specks do not hide the tile). Right panel: the connected
components of the mask, one colour each. The verdicts are those of `regions_of_masks` under the same config.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch
from PIL import Image, ImageDraw, ImageFont

from activessf_engine.config import EngineConfig, FilterConfig
from activessf_engine.device import DeviceChoice, as_choice
from activessf_engine.filter import decode_files, find_regions, find_sources, regions_of_masks

log = logging.getLogger(__name__)

KEPT, TOO_SMALL, LOW_FILL = "kept", "too small", "fill rate"
COLOURS = {KEPT: (30, 200, 60), TOO_SMALL: (255, 150, 0), LOW_FILL: (230, 30, 30)}
MASK_TINT = np.array([255, 230, 0], dtype=np.float32)


@dataclass
class Verdict:
    """One connected component of a tile's mask and what the filter did with it."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    fill_rate: float
    reason: str  # KEPT, TOO_SMALL or LOW_FILL


def verdicts(mask: torch.Tensor, config: FilterConfig) -> list[Verdict]:
    """Every component of one (H, W) mask with the filter's verdict: the size test first, then the fill rate."""
    every = regions_of_masks(mask[None], dataclasses.replace(config, min_box=1, min_fill=0.0))[0]
    found = []
    for box, fill in zip(every.boxes.tolist(), every.fill_rates.tolist(), strict=True):
        small = min(box[2] - box[0], box[3] - box[1]) < config.min_box
        reason = TOO_SMALL if small else (LOW_FILL if fill < config.min_fill else KEPT)
        found.append(Verdict(tuple(box), fill, reason))
    return found


def _label(verdict: Verdict, config: FilterConfig) -> str:
    width, height = verdict.box[2] - verdict.box[0], verdict.box[3] - verdict.box[1]
    if verdict.reason == TOO_SMALL:
        return f"small {width}x{height}<{config.min_box}"
    if verdict.reason == LOW_FILL:
        return f"fill {verdict.fill_rate:.2f}<{config.min_fill:.2f}"
    return f"kept fill {verdict.fill_rate:.2f}"


def draw_overlay(
    tile: np.ndarray, mask: np.ndarray, found: list[Verdict], config: FilterConfig, title: str
) -> Image.Image:
    """The two panels (tile with mask and verdicts; components) side by side, with a title and a tally."""
    font = ImageFont.load_default(size=12)
    height, width = mask.shape
    tinted = tile.astype(np.float32)
    tinted[mask] = 0.55 * tinted[mask] + 0.45 * MASK_TINT
    left = Image.fromarray(tinted.astype(np.uint8))
    draw = ImageDraw.Draw(left)
    for verdict in sorted(found, key=lambda v: v.reason == KEPT):  # kept boxes drawn last, on top
        x0, y0, x1, y1 = verdict.box
        speck = verdict.reason == TOO_SMALL and max(x1 - x0, y1 - y0) < config.min_box / 2
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=COLOURS[verdict.reason], width=1 if speck else 3)
        if not speck:
            draw.text((x0 + 2, max(0, y0 - 14)), _label(verdict, config), fill=COLOURS[verdict.reason], font=font)
    labels, count = ndi.label(mask, structure=np.ones((3, 3)) if config.connectivity == 8 else None)
    palette = np.random.default_rng(0).integers(60, 256, size=(count + 1, 3), dtype=np.uint8)
    palette[0] = 0
    right = Image.fromarray(palette[labels])
    tally = {reason: sum(v.reason == reason for v in found) for reason in (KEPT, LOW_FILL, TOO_SMALL)}
    caption = (
        f"{title}: {len(found)} regions; kept {tally[KEPT]} (green), fill rate < {config.min_fill} {tally[LOW_FILL]} "
        f"(red), box < {config.min_box} px {tally[TOO_SMALL]} (orange); yellow: HSV mask; right: components"
    )
    sheet = Image.new("RGB", (2 * width + 8, height + 22), (255, 255, 255))
    sheet.paste(left, (0, 22))
    sheet.paste(right, (width + 8, 22))
    ImageDraw.Draw(sheet).text((4, 4), caption, fill=(0, 0, 0), font=font)
    return sheet


def write_overlays(
    input_path: str | Path,
    out_dir: str | Path,
    config: EngineConfig,
    limit: int | None = None,
    device: DeviceChoice | str = "cpu",
) -> list[dict]:
    """An overlay PNG per tile under `input_path` (the first `limit` in path order) into `out_dir`; returns
    per tile its PNG and the count of each verdict."""
    sources = find_sources(input_path, config.input.extensions)[:limit]
    if not sources:
        raise FileNotFoundError(f"no images ({', '.join(config.input.extensions)}) found under {input_path}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source, image in zip(
        sources, decode_files([s.path for s in sources], config.input, as_choice(device)), strict=True
    ):
        if image.image is None:
            log.warning("skipped %s: %s", source.relpath, image.error)
            continue
        mask = find_regions([image.image], config.filter, keep_masks=True)[0].mask
        found = verdicts(mask, config.filter)
        png = out / (Path(source.relpath).with_suffix("").as_posix().replace("/", "__") + ".overlay.png")
        draw_overlay(image.image.cpu().numpy(), mask.cpu().numpy(), found, config.filter, source.relpath).save(png)
        written.append(
            {"source": source.relpath, "overlay": str(png), **{r: sum(v.reason == r for v in found) for r in COLOURS}}
        )
    return written
