"""prototypes -> select runs over real stores: provenance, cached features, fingerprints, the dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from activessf_engine.cli import main
from activessf_engine.config import EngineConfig, replace_section
from activessf_engine.feed.datasets import RoiDataset
from activessf_engine.select import run as curate
from activessf_engine.store.reader import RoiStore
from activessf_engine.store.writer import PartData, StoreWriter

SIZE = 64
COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 50)}


def _config(**selection) -> EngineConfig:
    config = EngineConfig()
    config = replace_section(config, "crop", size=SIZE)
    config = replace_section(config, "features", model="test_resnet", weights="random", batch_size=16)
    config = replace_section(config, "prototypes", clusters=3, n_init=2)
    return replace_section(config, "selection", **selection) if selection else config


def _blob(colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    image = np.clip(rng.normal(colour, 12, size=(SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return image


@pytest.fixture()
def labeled(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "labeled"
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range({"blue": 8, "green": 4, "red": 2}[name]):
            Image.fromarray(_blob(colour, rng)).save(root / name / f"{i}.png")
    return root


@pytest.fixture()
def candidates(tmp_path: Path) -> Path:
    """A candidate store of two parts with 12 + 9 ROIs of the three colours."""
    rng = np.random.default_rng(1)
    root = tmp_path / "candidates"
    config = _config()
    from activessf_engine.config import to_dict

    writer = StoreWriter.create(
        root, "candidates", {"config": to_dict(config), "input_root": "x"}, [["a.png", "b.png"], ["c.png"]]
    )
    colours = list(COLOURS.values())
    for part, (n, sources) in enumerate([(12, ["a.png", "b.png"]), (9, ["c.png"])]):
        rois = np.stack([_blob(colours[i % 3], rng) for i in range(n)])
        source = np.arange(n, dtype=np.int32) % len(sources)
        columns = {
            "box": np.tile(np.array([[0, 0, 80, 80]], np.int32), (n, 1)),
            "crop_box": np.tile(np.array([[0, 0, 88, 88]], np.int32), (n, 1)),
            "area": np.full(n, 5000, np.int64),
            "fill_rate": np.full(n, 0.78, np.float32),
            "source": source,
            "level0_box": np.tile(np.array([[0, 0, 80, 80]], np.int64), (n, 1)),
            "pad": np.zeros((n, 4), np.int16),
        }
        table = [
            {
                "path": p,
                "id": p,
                "width": 100,
                "height": 100,
                "status": "ok",
                "error": None,
                "rois": int((source == j).sum()),
            }
            for j, p in enumerate(sources)
        ]
        writer.commit_part(part, PartData(rois, columns, table))
    return root


def test_select_keeps_provenance_and_reuses_cached_features(
    tmp_path: Path, labeled: Path, candidates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config()
    protos = curate.run_prototypes(labeled, tmp_path / "protos", config)
    assert protos["labeled"] == 14 and protos["untrained_weights"]
    first = curate.run_select(candidates, tmp_path / "protos", tmp_path / "sel1", config)
    assert first["features_computed"] == 21 and first["features_cached"] == 0

    selected = RoiStore(tmp_path / "sel1")
    cand = RoiStore(candidates)
    cols = selected.columns()
    assert len(selected) == first["selected"]
    for i in range(len(selected)):  # every selected ROI is the candidate it says it is, pixel for pixel
        origin = int(cols["candidate"][i])
        assert np.array_equal(selected.roi(i), cand.roi(origin))
        assert cols["source_path"][i] == cand.columns()["source_path"][origin]
        assert cols["distance"][i] <= cols["threshold"][i] + 1e-5

    def no_features(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(curate, "iter_extract", no_features)
    again = curate.run_select(candidates, tmp_path / "protos", tmp_path / "sel2", _config(alpha=1.0))
    assert again["features_computed"] == 0 and again["features_cached"] == 21
    decisions = Path(tmp_path / "sel2" / "decisions" / "selected")
    assert decisions.exists()


def test_select_refuses_prototypes_of_other_weights(tmp_path: Path, labeled: Path, candidates: Path) -> None:
    curate.run_prototypes(labeled, tmp_path / "protos", _config())
    other = replace_section(_config(), "features", model="test_resnet", weights="random")
    torch.manual_seed(123)
    # a weights file with different values gives a different fingerprint
    from activessf_engine.select.features import load_backbone

    backbone = load_backbone(other.features)
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in backbone.model.state_dict().items()}
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"made with test_resnet, weights random .* the features would come"):
        curate.run_select(
            candidates, tmp_path / "protos", tmp_path / "sel", replace_section(other, "features", weights=str(path))
        )


@pytest.mark.parametrize("strategy", ["all", "random", "balanced"])
def test_baseline_strategies_write_stores(tmp_path: Path, labeled: Path, candidates: Path, strategy: str) -> None:
    curate.run_prototypes(labeled, tmp_path / "protos", _config())
    active = curate.run_select(candidates, tmp_path / "protos", tmp_path / "a", _config())
    summary = curate.run_select(candidates, tmp_path / "protos", tmp_path / "b", _config(strategy=strategy))
    expected = 21 if strategy == "all" else active["selected"]
    assert summary["selected"] == expected == len(RoiStore(tmp_path / "b"))


def test_cli_prototypes_and_select(tmp_path: Path, labeled: Path, candidates: Path) -> None:
    flags = ["--model", "test_resnet", "--weights", "random", "--clusters", "3", "--roi-size", str(SIZE), "--quiet"]
    assert main(["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), *flags]) == 0
    select = ["select", "--candidates", str(candidates), "--prototypes", str(tmp_path / "p"), "--out"]
    assert main([*select, str(tmp_path / "s"), *flags[:4], "--quiet"]) == 0
    assert main([*select, str(tmp_path / "s"), *flags[:4], "--quiet"]) == 2  # exists, no --overwrite
    assert main([*select, str(tmp_path / "s"), *flags[:4], "--quiet", "--overwrite", "--alpha", "0.75"]) == 0
    assert main(["verify", str(tmp_path / "s")]) == 0


def test_cli_json_toml_sections_and_manifest_of_a_selected_store(
    tmp_path: Path, labeled: Path, candidates: Path, capsys
) -> None:
    import csv
    import io
    import json

    toml = tmp_path / "engine.toml"
    toml.write_text(
        '[features]\nmodel = "test_resnet"\nweights = "random"\n\n[prototypes]\nclusters = 3\n\n'
        '[selection]\nalpha = 0.75\nstrategy = "activessf"\n\n[crop]\nsize = 64\n'
    )
    common = ["--config", str(toml), "--quiet", "--json"]
    assert main(["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), *common]) == 0
    protos = json.loads(capsys.readouterr().out)
    assert protos["model"] == "test_resnet" and len(protos["clusters"]) == 3 and protos["labeled"] == 14
    assert protos["kmeans_backend"] == "sklearn" and protos["device_choice"]["kind"] == "cpu"
    select = ["select", "--candidates", str(candidates), "--prototypes", str(tmp_path / "p")]
    assert main([*select, "--out", str(tmp_path / "s"), *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["alpha"] == 0.75 and summary["candidates"] == 21 and summary["selected"] > 0
    assert summary["selected"] == sum(c["selected"] for c in summary["clusters"]) == len(RoiStore(tmp_path / "s"))
    assert RoiStore(tmp_path / "s").meta["config"]["selection"]["alpha"] == 0.75
    assert main(["manifest", str(tmp_path / "s")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == summary["selected"]
    assert {"cluster", "distance", "threshold", "candidate"} <= set(rows[0])
    assert all(float(r["distance"]) <= float(r["threshold"]) + 1e-6 for r in rows)  # Eq. 9 held for every row


def test_hsv_range_flags_reach_the_config(tmp_path: Path) -> None:
    from conftest import tile_folder

    from activessf_engine.store.layout import read_attrs

    tiles = tile_folder(tmp_path / "tiles", 1)
    flags = ["--purple", "100-120,50-255,0-255", "--deep-blue", "0-10,0-20,30-40", "--roi-size", "64", "--quiet"]
    assert main(["filter", "--input", str(tiles), "--out", str(tmp_path / "s"), *flags]) == 0
    config = read_attrs(tmp_path / "s")["config"]["filter"]
    assert config["purple"] == {"h": [100, 120], "s": [50, 255], "v": [0, 255]}
    assert config["deep_blue"] == {"h": [0, 10], "s": [0, 20], "v": [30, 40]}
    with pytest.raises(SystemExit) as bad:
        main(["filter", "--input", str(tiles), "--out", str(tmp_path / "t"), "--purple", "1-2"])
    assert bad.value.code == 2


def test_roi_dataset_reads_store(candidates: Path) -> None:
    dataset = RoiDataset(candidates, with_meta=True)
    assert len(dataset) == 21
    image, meta = dataset[13]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    assert meta["source"] == "c.png" and meta["roi"] == 13
    assert torch.equal(dataset[-1][0], dataset[20][0])
    loader = torch.utils.data.DataLoader(RoiDataset(candidates), batch_size=8, num_workers=2)
    assert sum(len(batch) for batch in loader) == 21


def test_roi_dataset_in_spawned_workers_with_a_transform_in_order(candidates: Path) -> None:
    from torchvision.transforms import v2

    store = RoiStore(candidates)
    expected = torch.stack([torch.from_numpy(store.roi(i)).permute(2, 0, 1).flip(-1) for i in range(len(store))])
    dataset = RoiDataset(candidates, transform=v2.RandomHorizontalFlip(p=1.0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context="spawn")
    assert torch.equal(torch.cat(list(loader)), expected)
    assert dataset.__getstate__()["_store"] is None  # what workers receive: each opens the store itself


def test_roi_dataset_of_a_selected_store_carries_its_decisions(tmp_path: Path, labeled: Path, candidates: Path) -> None:
    curate.run_prototypes(labeled, tmp_path / "protos", _config())
    curate.run_select(candidates, tmp_path / "protos", tmp_path / "selected", _config())
    columns = RoiStore(tmp_path / "selected").columns()
    dataset = RoiDataset(tmp_path / "selected", with_meta=True)
    assert len(dataset) == len(columns["cluster"]) > 0
    for i in range(len(dataset)):
        _, meta = dataset[i]
        assert meta["cluster"] == columns["cluster"][i] and meta["distance"] == pytest.approx(columns["distance"][i])
        assert meta["source"] == columns["source_path"][i] and meta["box"] == columns["box"][i].tolist()


def test_labeled_images_are_framed_like_candidates(tmp_path: Path) -> None:
    """With labeled_crop="filter" a labeled image is cut around its central region, as a candidate would be;
    an image where no region passes the filter is taken whole."""
    from conftest import draw_tile

    root = tmp_path / "labeled"
    (root / "cell").mkdir(parents=True)
    tile = draw_tile([("disk", 160, 120, 50), ("disk", 40, 40, 38)])  # the central disk is the labeled cell
    Image.fromarray(tile).save(root / "cell" / "a.png")
    Image.fromarray(draw_tile([])).save(root / "cell" / "empty.png")
    rois, labels, names, report = curate.labeled_rois(root, _config())
    assert labels.tolist() == [0, 0]
    assert names == ["cell"] and report["filter_crops"] == 1 and report["whole_images"] == 1
    from activessf_engine.filter.crops import cut_rois
    from activessf_engine.filter.regions import find_regions

    regions = find_regions([torch.from_numpy(tile)], _config().filter)[0]
    central = regions.boxes[np.argmin(np.abs(regions.boxes[:, 0] - 110))]
    assert abs(int(central[0]) - 110) <= 1 and abs(int(central[2]) - 211) <= 1
    expected = cut_rois(torch.from_numpy(tile), central[None], _config().crop)[0][0]
    assert np.array_equal(rois[0], expected)
    whole = curate.labeled_rois(root, replace_section(_config(), "prototypes", labeled_crop="whole"))[3]
    assert whole == {"skipped": [], "filter_crops": 0, "whole_images": 2}


def test_cli_run_does_filter_prototypes_and_select(tmp_path: Path, labeled: Path, capsys) -> None:
    import json

    from conftest import tile_folder

    tiles = tile_folder(tmp_path / "tiles", 4)
    flags = ["--model", "test_resnet", "--weights", "random", "--clusters", "3", "--roi-size", str(SIZE)]
    args = ["run", "--input", str(tiles), "--labeled", str(labeled), "--out", str(tmp_path / "run"), "--json"]
    # `all`: on synthetic tiles with random weights activessf keeps nothing, which ends a run with exit 2
    assert main([*args, *flags, "--quiet", "--kmeans-sample", "2048", "--strategy", "all"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"device_choice", "filter", "prototypes", "select"}
    assert summary["filter"]["sources_read"] == 4 and summary["prototypes"]["labeled"] == 14
    assert summary["select"]["candidates"] == len(RoiStore(tmp_path / "run" / "candidates"))
    assert summary["select"]["selected"] == len(RoiStore(tmp_path / "run" / "selected")) == summary["filter"]["rois"]
    for store in ("candidates", "selected"):
        assert main(["verify", str(tmp_path / "run" / store), "--deep"]) == 0


def test_prototypes_with_a_broken_labeled_image_exits_3_and_names_it(tmp_path: Path, labeled: Path, capsys) -> None:
    import json

    (labeled / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    flags = ["--model", "test_resnet", "--weights", "random", "--clusters", "3", "--roi-size", str(SIZE)]
    code = main(["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), *flags, "--quiet", "--json"])
    assert code == 3
    summary = json.loads(capsys.readouterr().out)
    assert summary["labeled"] == 14 and [Path(s["path"]).name for s in summary["labeled_skipped"]] == ["broken.png"]


def test_select_takes_the_prototypes_model_and_weights_and_refuses_another_model(
    tmp_path: Path, labeled: Path, candidates: Path, capsys
) -> None:
    flags = ["--model", "test_resnet", "--weights", "random", "--clusters", "3", "--roi-size", str(SIZE), "--quiet"]
    assert main(["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), *flags]) == 0
    select = ["select", "--candidates", str(candidates), "--prototypes", str(tmp_path / "p"), "--quiet"]
    assert main([*select, "--out", str(tmp_path / "s")]) == 0  # no --model, no --weights: the prototypes' own
    assert RoiStore(tmp_path / "s").meta["model"] == "test_resnet"
    capsys.readouterr()
    assert main([*select, "--out", str(tmp_path / "s2"), "--model", "resnet18"]) == 2
    error = capsys.readouterr().err
    assert "--model resnet18 was given, but the prototypes were made with test_resnet" in error
    assert not (tmp_path / "s2").exists()


def test_prototypes_refuses_to_replace_prototypes_and_takes_filter_flags(tmp_path: Path, labeled: Path, capsys) -> None:
    import json

    flags = ["--model", "test_resnet", "--weights", "random", "--clusters", "3", "--roi-size", str(SIZE), "--quiet"]
    out = ["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), *flags]
    assert main(out) == 0
    before = (tmp_path / "p" / "prototypes.json").read_text()
    capsys.readouterr()
    assert main([*out, "--min-fill", "0.2"]) == 2
    assert "already holds prototypes" in capsys.readouterr().err
    assert (tmp_path / "p" / "prototypes.json").read_text() == before
    assert main([*out, "--min-fill", "0.2", "--min-box", "9", "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labeled"] == 14
    assert json.loads((tmp_path / "p" / "prototypes.json").read_text())["weights"] == "random"


def test_missing_weights_stop_prototypes_before_the_labeled_set_is_read(
    tmp_path: Path, labeled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("the labeled set was read before the weights were checked")

    monkeypatch.setattr(curate, "labeled_rois", no_decoding)
    config = replace_section(_config(), "features", weights=str(tmp_path / "resnet50.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"resnet50\.safetensors does not exist"):
        curate.run_prototypes(labeled, tmp_path / "p", config)


def test_a_selection_of_nothing_says_so(tmp_path: Path, labeled: Path, candidates: Path, capsys) -> None:
    import json

    flags = ["--model", "test_resnet", "--weights", "random", "--clusters", "3", "--roi-size", str(SIZE), "--quiet"]
    assert main(["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), *flags]) == 0
    select = ["select", "--candidates", str(candidates), "--prototypes", str(tmp_path / "p"), "--quiet"]
    fixed_zero = ["--threshold-mode", "fixed", "--fixed-threshold", "0"]
    capsys.readouterr()
    assert main([*select, "--out", str(tmp_path / "s"), *fixed_zero]) == 2  # issue 25: never a quiet exit 0
    err = capsys.readouterr().err
    assert "error: nothing was selected (0 of 21 candidates" in err and "No candidate was selected: " in err
    assert "WARNING" not in err and "Try: " in err  # the cause and the fix are the error, said once
    # the fixture's labeled images hold no region that passes the filter: prototypes.json records it, select names it
    assert "14 of 14 labeled images held no region passing the filter (min_fill 0.7, min_box 70)" in err
    assert len(RoiStore(tmp_path / "s")) == 0  # the empty store is still written, for the report
    assert main([*select, "--out", str(tmp_path / "s2"), *fixed_zero, "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert summary["selected"] == 0 and any("no candidate was selected" in w for w in summary["warnings"])


def test_help_shows_the_config_comments_and_only_the_flags_a_command_reads(capsys) -> None:
    import dataclasses

    from activessf_engine.cli.flags import field_comments
    from activessf_engine.config import EngineConfig

    for section in dataclasses.fields(EngineConfig):
        cls = section.type if isinstance(section.type, type) else type(getattr(EngineConfig(), section.name))
        missing = [f.name for f in dataclasses.fields(cls) if not field_comments(cls).get(f.name)]
        assert not missing, f"[{section.name}] fields without a comment in config.py: {missing}"
    pages = {}
    for command in ("prototypes", "select", "run"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        pages[command] = capsys.readouterr().out
    assert "--alpha" not in pages["prototypes"] and "--min-fill" in pages["prototypes"]
    assert "--clusters" not in pages["select"] and "--min-fill" not in pages["select"] and "--alpha" in pages["select"]
    assert "--alpha" in pages["run"] and "--clusters" in pages["run"]
    assert "tau: region pixels / bounding-box pixels (default: 0.7)" in " ".join(pages["prototypes"].split())


def test_select_refuses_prototypes_framed_unlike_the_candidates_and_like_fixes_it(
    tmp_path: Path, labeled: Path, candidates: Path, capsys
) -> None:
    """Issue 25: prototypes built with another --min-fill than the candidates' filter were used silently
    (the README's chain kept 0 ROIs, exit 0). Now select stops (exit 2) naming each field and the fix,
    and `prototypes --like STORE` takes the candidates' framing."""
    import json

    flags = ["--model", "test_resnet", "--weights", "random", "--clusters", "3", "--quiet"]
    made = main(["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), *flags, "--roi-size", "64",
                 "--min-fill", "0.5"])  # fmt: skip
    assert made == 0
    recorded = json.loads((tmp_path / "p" / "prototypes.json").read_text())
    assert recorded["framing"]["filter"]["min_fill"] == 0.5 and recorded["framing"]["crop"]["size"] == 64
    select = ["select", "--candidates", str(candidates), "--prototypes", str(tmp_path / "p"), "--quiet"]
    capsys.readouterr()
    assert main([*select, "--out", str(tmp_path / "s")]) == 2
    error = capsys.readouterr().err
    assert "filter.min_fill 0.5 (prototypes) vs 0.7 (candidates)" in error
    assert f"prototypes --labeled {labeled} --like {candidates} --out {tmp_path / 'p'} --overwrite" in error
    assert not (tmp_path / "s").exists()
    like = ["prototypes", "--labeled", str(labeled), "--out", str(tmp_path / "p"), "--overwrite", "--like"]
    assert main([*like, str(candidates), *flags, "--min-fill", "0.5"]) == 2  # a framing flag beside --like
    assert "leave out filter.min_fill" in capsys.readouterr().err
    assert main([*like, str(candidates), *flags]) == 0
    assert main([*select, "--out", str(tmp_path / "s")]) == 0


def test_select_summary_names_degenerate_clusters_and_a_budget_not_met(
    tmp_path: Path, labeled: Path, candidates: Path
) -> None:
    """Issue 25: clusters with n_i <= 2 (LB == UB) went unmentioned; a budget of 5000 kept a few, silently."""
    curate.run_prototypes(labeled, tmp_path / "p", replace_section(_config(), "prototypes", clusters=6))
    summary = curate.run_select(
        candidates, tmp_path / "p", tmp_path / "s", _config(strategy="gated-balanced", budget=5000)
    )
    small = [c["cluster"] for c in summary["clusters"] if c["n"] <= 2]
    assert small and summary["degenerate_clusters"]["clusters"] == small
    assert all(c["degenerate"] == (c["cluster"] in small) for c in summary["clusters"])
    not_met = f"budget 5000 (5000 ROIs) not met: kept {summary['selected']}"
    assert any(w.startswith(not_met) for w in summary["warnings"])


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_stain_normalization_is_recorded_with_the_prototypes_and_applied_to_the_candidates(
    tmp_path: Path, labeled: Path, candidates: Path, method: str
) -> None:
    """Issue 25: features of labeled cells and candidates brought to one stain reference (torchstain), the
    reference saved with the prototypes; the normalized features are cached apart from the plain ones."""
    import json

    config = replace_section(_config(), "prototypes", stain_normalization=method)
    protos = curate.run_prototypes(labeled, tmp_path / "p", config)
    assert protos["stain_normalization"] == method
    saved = json.loads((tmp_path / "p" / "prototypes.json").read_text())
    assert saved["stain"]["method"] == method and saved["config"]["stain_normalization"] == method
    summary = curate.run_select(candidates, tmp_path / "p", tmp_path / "s", _config())
    assert summary["stain_normalization"] == method and summary["features_computed"] == 21
    caches = sorted(p.name for p in (candidates / "features").iterdir())
    assert len(caches) == 1 and caches[0].split("-")[-2] == method
    plain = curate.run_prototypes(labeled, tmp_path / "q", _config())
    assert curate.run_select(candidates, tmp_path / "q", tmp_path / "t", _config())["features_computed"] == 21
    assert plain["stain_normalization"] == "none"


def test_stain_normalizer_brings_a_tinted_roi_towards_the_reference() -> None:
    from activessf_engine.config import StainReference
    from activessf_engine.stain import StainNormalizer, fit_stain_reference

    rng = np.random.default_rng(0)
    cells = np.stack([_blob((150, 90, 160), rng) for _ in range(4)])
    cells[:, 16:48, 16:48] = (70, 30, 110)  # a nucleus, so both stains are present
    tinted = np.clip(cells.astype(int) + np.array([40, -20, -30]), 0, 255).astype(np.uint8)
    for method in ("macenko", "reinhard"):
        normalizer = StainNormalizer(fit_stain_reference(method, cells))
        out = normalizer(tinted)
        assert out.shape == tinted.shape and out.dtype == np.uint8 and normalizer.left_as_read == 0
        before = np.abs(tinted.mean((0, 1, 2)) - cells.mean((0, 1, 2))).sum()
        after = np.abs(out.mean((0, 1, 2)) - cells.mean((0, 1, 2))).sum()
        assert after < before, method
    assert StainNormalizer(StainReference())(tinted) is tinted
