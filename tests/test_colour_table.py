"""Learned colour tables (config.ColourTable): the mask on every device, the config's checks, the filter's use."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest
import torch
from conftest import PURPLE, draw_tile, hsv_range_table

from activessf_engine.config import (
    ColourTable,
    EngineConfig,
    FilterConfig,
    HsvRange,
    dumps_toml,
    load_config,
    replace_section,
    to_dict,
)
from activessf_engine.filter.regions import find_regions
from activessf_engine.kernels import colour_table_mask, table_index
from activessf_engine.kernels.colour_table import _table


def _every_colour() -> torch.Tensor:
    code = torch.arange(1 << 24, dtype=torch.int64)
    return torch.stack([code >> 16, (code >> 8) & 255, code & 255], dim=1).to(torch.uint8).reshape(16, -1, 3)


def test_the_numba_mask_is_the_lookup_on_every_colour():
    table = hsv_range_table()
    cells = np.unpackbits(np.frombuffer(table.packed(), dtype=np.uint8)).astype(bool)
    pixels = _every_colour()
    got = colour_table_mask(pixels, table)
    rgb = pixels.numpy().astype(np.int64) >> 3
    want = cells[(rgb[..., 0] << 10) | (rgb[..., 1] << 5) | rgb[..., 2]]
    assert 0 < want.mean() < 1
    np.testing.assert_array_equal(got.numpy(), want)
    torch.testing.assert_close(_table(table.packed(), pixels.device)[table_index(pixels)], got)  # the CUDA path's ops


def test_a_table_loads_back_from_toml(tmp_path):
    config = replace_section(EngineConfig(), "filter", cell_colours=hsv_range_table())
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml({"filter": to_dict(config.filter)}))
    assert load_config(path).filter == config.filter


@pytest.mark.parametrize(
    ("cells", "words"),
    [
        ("not base64!", "does not decode"),
        (base64.b64encode(b"not zlib").decode(), "does not decode"),
        (base64.b64encode(zlib.compress(bytes(100))).decode(), "holds 800 bits, not 32768"),
        (
            base64.b64encode(zlib.compress(bytes(1 << 26))).decode(),
            "holds 32776 bits, not 32768",
        ),  # inflated no further
    ],
)
def test_a_table_that_does_not_decode_is_refused(cells, words):
    with pytest.raises(ValueError, match=f"{words}.*written by `calibrate`"):
        ColourTable(cells)


def test_a_bare_string_for_the_table_says_how_it_is_written(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[filter]\ncell_colours = "purple"\n')
    with pytest.raises(ValueError, match=r"filter\.cell_colours must be a table.*written by `calibrate`"):
        load_config(path)


def test_the_filter_keeps_the_cells_of_the_table_colours():
    """A purple disk on pink: found under a table of the purple's cell (as G has it after minmax) with HSV ranges
    that hold nothing, which are not read; not found under an empty table, nor without one."""
    import dataclasses

    tile = torch.from_numpy(draw_tile([("disk", 100, 100, 50)], colour=PURPLE))
    purple_in_g = torch.tensor([[[65, 0, 144]]], dtype=torch.uint8)  # conftest: PURPLE after the default minmax
    cells = np.zeros(1 << 15, dtype=bool)
    cells[table_index(purple_in_g).item()] = True
    nothing = HsvRange((0, 0), (255, 255), (0, 0))
    config = FilterConfig(
        purple=nothing, deep_blue=nothing, cell_colours=ColourTable.of_packed(np.packbits(cells).tobytes())
    )
    assert len(find_regions([tile], config)[0].boxes) == 1
    empty = ColourTable.of_packed(bytes(1 << 12))
    assert len(find_regions([tile], dataclasses.replace(config, cell_colours=empty))[0].boxes) == 0
    assert len(find_regions([tile], dataclasses.replace(config, cell_colours=ColourTable()))[0].boxes) == 0


def test_an_hsv_flag_given_with_a_colour_table_is_said_to_be_unread(tmp_path, caplog):
    from activessf_engine.cli import main
    from activessf_engine.cli.demo import SAMPLE_DATA

    toml = tmp_path / "table.toml"
    toml.write_text(dumps_toml({"filter": to_dict(FilterConfig(cell_colours=hsv_range_table()))}))
    args = ["filter", "--config", str(toml), "--input", str(SAMPLE_DATA / "tiles" / "bccd"), "--limit", "1", "--json"]
    assert main([*args, "--purple", "100-150,40-255,0-255"]) == 0
    assert any(r.getMessage().startswith("--purple not read") for r in caplog.records)
    caplog.clear()
    assert main(args) == 0
    assert not any("not read" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("pixels", [torch.zeros((2, 4, 4, 3), dtype=torch.uint8), torch.zeros((2, 4, 3))])
def test_the_per_pixel_masks_refuse_what_is_not_a_batch_of_pixels(pixels):
    from activessf_engine.kernels import hsv_mask

    for mask in (lambda p: colour_table_mask(p, hsv_range_table()), lambda p: hsv_mask(p, [FilterConfig().purple])):
        with pytest.raises(ValueError, match=r"uint8 tensor of shape \(B, N, 3\)"):
            mask(pixels)


def test_a_colour_table_that_keeps_nothing_is_warned_about_with_its_own_fix(tmp_path, capsys):
    """No region under a learned table: the warning says to calibrate again, not to tune HSV ranges it does not
    read."""
    from activessf_engine.cli import main
    from activessf_engine.cli.demo import SAMPLE_DATA

    toml = tmp_path / "empty.toml"
    toml.write_text(dumps_toml({"filter": to_dict(FilterConfig(cell_colours=ColourTable.of_packed(bytes(1 << 12))))}))
    assert main(["filter", "--config", str(toml), "--input", str(SAMPLE_DATA / "tiles" / "bccd"), "--limit", "2"]) == 0
    printed = capsys.readouterr()
    warning = next(line for line in (printed.out + printed.err).splitlines() if "no region passed" in line)
    assert "calibrate again" in warning and "--purple" not in warning
