"""Stain normalization (engine/stain.py): the same images as torchstain's normalizers, references that travel
in a config, tiles whose stains cannot be measured left as read, and the filter and calibrate that use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from activessf_engine import stain
from activessf_engine.cli.demo import SAMPLE_DATA
from activessf_engine.config import FilterConfig, StainReference, load_config
from activessf_engine.filter.regions import StageTimes, find_regions, quantize
from activessf_engine.inspect import calibration

TILES = SAMPLE_DATA / "tiles" / "bccd"
METHODS = ("macenko", "reinhard")


def _tile(name: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(TILES / name) as image:
        return torch.from_numpy(np.array(image.convert("RGB")))


@pytest.fixture(scope="module")
def tiles() -> tuple[torch.Tensor, torch.Tensor]:
    return _tile("BloodImage_00001.jpg"), _tile("BloodImage_00101.jpg")


def _torchstain(method: str, reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

    normalizer = TorchMacenkoNormalizer() if method == "macenko" else TorchReinhardNormalizer()
    normalizer.fit(reference.permute(2, 0, 1).contiguous())
    chw = image.permute(2, 0, 1).contiguous()
    return normalizer.normalize(chw, stains=False)[0] if method == "macenko" else normalizer.normalize(chw)


@pytest.mark.parametrize("method", METHODS)
def test_every_pixel_as_torchstain_normalizes_it(method, tiles, monkeypatch):
    """Measured on all pixels (as torchstain does), the one-map-per-tile normalization gives torchstain's own
    image within one level (Macenko: its lstsq is pinv(HE); Reinhard: kornia's LAB against torchstain's)."""
    monkeypatch.setattr(stain, "SAMPLE_PIXELS", 1 << 30)
    monkeypatch.setattr(stain, "REFERENCE_PIXELS", 1 << 30)
    image, reference_tile = tiles
    out = stain.StainNormalizer(stain.fit_stain_reference(method, [reference_tile])).image(image)
    expected = _torchstain(method, reference_tile, image)
    difference = (out.int() - expected.int()).abs()
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert int(difference.max()) <= 1 and float(difference.float().mean()) < 0.6
    assert float((out.float() - image.float()).abs().mean()) > 2  # it did change the tile


def test_reinhard_gives_a_tile_the_references_lab_statistics_and_a_normalized_tile_is_a_fixed_point(tiles):
    """(Macenko has no such property to test: it keeps only the two stains' part of each pixel's optical
    density and clips at white, so a normalized tile measures near, not at, the reference; its check is that it
    is torchstain's image, above.)"""
    image, reference_tile = tiles
    reference = stain.fit_stain_reference("reinhard", [reference_tile])
    normalizer = stain.StainNormalizer(reference)
    moved = normalizer.image(image)
    np.testing.assert_allclose(stain.measure("reinhard", moved.reshape(-1, 3)), reference.values, atol=0.05)
    assert float((normalizer.image(moved).float() - moved.float()).abs().mean()) < 0.1


@pytest.mark.parametrize("method", METHODS)
def test_tiles_without_measurable_stains_are_left_as_read_and_counted(method, tiles):
    normalizer = stain.StainNormalizer(stain.fit_stain_reference(method, [tiles[1]]))
    blank = torch.full((64, 80, 3), 250, dtype=torch.uint8)
    grey = tiles[0].float().mean(dim=2, keepdim=True).expand(-1, -1, 3).to(torch.uint8).contiguous()
    assert normalizer.image(blank) is blank
    if method == "reinhard":  # a grey tile has flat a and b; Macenko finds its one stain well enough
        assert normalizer.image(grey) is grey
    assert normalizer.left_as_read == (2 if method == "reinhard" else 1)
    with pytest.raises(ValueError, match="cannot be measured"):
        stain.fit_stain_reference(method, [blank])


def test_a_huge_tile_is_mapped_in_slices_as_a_small_one_is(tiles, monkeypatch):
    image, reference_tile = tiles
    normalizer = stain.StainNormalizer(stain.fit_stain_reference("macenko", [reference_tile]))
    whole = normalizer.image(image)
    monkeypatch.setattr(stain, "SLICE_PIXELS", 4099)  # not a divisor of the tile's pixels
    assert torch.equal(normalizer.image(image), whole)


def test_a_reference_is_checked_and_travels_in_a_config_file(tmp_path, tiles):
    with pytest.raises(ValueError, match=r"macenko stain reference holds 8 values, got 2.*calibrate"):
        StainReference("macenko", (1.0, 2.0))
    with pytest.raises(ValueError, match=r"stain\.values must be a finite number"):
        StainReference("reinhard", (1.0, 2.0, 3.0, float("nan"), 1.0, 1.0))
    config = FilterConfig(stain=stain.fit_stain_reference("reinhard", [tiles[1]]))
    toml = tmp_path / "c.toml"
    calibration.write_filter_toml(toml, config, ["a test"])  # raises unless it loads back equal
    assert load_config(toml).filter.stain == config.stain
    toml.write_text('[filter]\nstain = { method = "macenko", values = [1.0] }\n')
    with pytest.raises(ValueError, match="holds 8 values"):
        load_config(toml)
    toml.write_text('[filter]\nstain = "macenko"\n')  # a method alone: the reference is measured, not named
    with pytest.raises(ValueError, match=r"filter\.stain must be a table, got 'macenko'.*as `calibrate` writes it"):
        load_config(toml)


def test_references_saved_by_the_first_prototypes_still_load(tiles):
    """Prototypes of Nov. 2026 saved torchstain's arrays: read back, they are the reference measured now."""
    from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

    chw = tiles[1].permute(2, 0, 1).contiguous()
    macenko, reinhard = TorchMacenkoNormalizer(), TorchReinhardNormalizer()
    macenko.fit(chw)
    reinhard.fit(chw)
    old_macenko = {
        "method": "macenko",
        "stain_matrix": macenko.HERef.tolist(),
        "max_concentrations": macenko.maxCRef.tolist(),
    }
    old_reinhard = {
        "method": "reinhard",
        "means": reinhard.target_means.tolist(),
        "stds": reinhard.target_stds.tolist(),
    }
    converted = stain.reference_of_record(old_reinhard)
    measured = stain.measure("reinhard", tiles[1].reshape(-1, 3))
    np.testing.assert_allclose(converted.values, measured, rtol=0.02, atol=0.05)
    assert stain.reference_of_record(old_macenko).values[:6] == tuple(np.ravel(macenko.HERef.tolist()))
    assert stain.reference_of_record({}) == StainReference()
    new = stain.fit_stain_reference("macenko", [tiles[1]])
    assert stain.reference_of_record(json.loads(json.dumps({"method": "macenko", "values": new.values}))) == new


def test_the_filter_reads_its_masks_from_the_normalized_tile_and_records_tiles_left_as_read(tiles):
    image, reference_tile = tiles
    config = FilterConfig(stain=stain.fit_stain_reference("macenko", [reference_tile]), min_fill=0.5)
    blank = torch.full(image.shape, 250, dtype=torch.uint8)
    quantized = quantize(torch.stack([image, blank]), config, times := StageTimes())
    normalized = stain.StainNormalizer(config.stain).image(image)
    plain = quantize(normalized[None], FilterConfig(min_fill=0.5), StageTimes())
    assert torch.equal(quantized.smooth[0], plain.smooth[0]) and quantized.stain_left_as_read == [False, True]
    assert times.seconds["stain"] > 0
    found = find_regions([image, blank], config)
    assert [r.stain_left_as_read for r in found] == [False, True]
    assert found[1].quality_record()["stain_left_as_read"] is True


def test_filter_run_names_the_tiles_left_as_read(tmp_path, tiles, capsys):
    from PIL import Image

    from activessf_engine.cli import main

    folder = tmp_path / "tiles"
    folder.mkdir()
    Image.fromarray(tiles[0].numpy()).save(folder / "smear.png")
    Image.fromarray(np.full((200, 200, 3), 250, np.uint8)).save(folder / "blank.png")
    toml = tmp_path / "stain.toml"
    config = FilterConfig(stain=stain.fit_stain_reference("reinhard", [tiles[1]]), min_fill=0.5)
    calibration.write_filter_toml(toml, config, [])
    assert main(["filter", "--config", str(toml), "--input", str(folder), "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr()
    assert "stain as read    1 source(s): blank.png" in printed.out + printed.err
    assert main(["filter", "--config", str(toml), "--input", str(folder), "--limit", "2", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stain_left_as_read"] == ["blank.png"] and summary["rois"] > 0


def test_calibrate_may_choose_a_stain_normalization_and_filter_takes_it(tmp_path, capsys, monkeypatch):
    from activessf_engine.cli import main

    monkeypatch.setattr(calibration, "NORMALIZATIONS", (("macenko", "minmax"),))
    toml = tmp_path / "calibrated.toml"
    annotations = SAMPLE_DATA / "annotations"
    args = ["calibrate", "--input", str(TILES), "--annotations", str(annotations), "--label", "WBC"]
    assert main([*args, "--out", str(toml), "--stain", "macenko", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    picked = load_config(toml).filter.stain
    assert picked.method == "macenko" and len(picked.values) == 8 and "stain" in summary["changed"]
    assert main(["filter", "--config", str(toml), "--input", str(TILES), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(tmp_path / "x.toml"), "--stain", "gray"])
    assert info.value.code == 2 and "--stain: invalid choice: 'gray'" in capsys.readouterr().err
