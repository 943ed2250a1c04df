from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from activessf_engine.config import FeatureConfig
from activessf_engine.select.features import (
    Backbone,
    extract,
    iter_extract,
    load_backbone,
    read_weights_file,
    state_dict_fingerprint,
)

MODEL = "test_resnet"  # timm's tiny ResNet for tests (96-d features)


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return load_backbone(FeatureConfig(model=MODEL, weights="random"))


@pytest.fixture(scope="module")
def rois() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def trained_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    """Weights other than the `random` ones, as a checkpoint with a classifier head would hold them."""
    generator = torch.Generator().manual_seed(1)
    state = {
        k: (torch.randn(v.shape, generator=generator) * 0.1 + v if v.is_floating_point() else v.clone())
        for k, v in backbone.model.state_dict().items()
    }
    state["fc.weight"] = torch.zeros(10, backbone.feature_dim)
    state["fc.bias"] = torch.zeros(10)
    return state


def test_random_weights_give_float32_features(backbone: Backbone, rois: np.ndarray) -> None:
    features = extract(backbone, rois, batch_size=3)
    assert features.shape == (len(rois), backbone.feature_dim)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    assert backbone.untrained and backbone.weights == "random"
    assert not backbone.model.training


def test_batch_size_and_input_type_do_not_change_features(backbone: Backbone, rois: np.ndarray) -> None:
    expected = extract(backbone, rois, batch_size=len(rois))
    np.testing.assert_allclose(extract(backbone, torch.from_numpy(rois), batch_size=2), expected, atol=1e-5)
    streamed = np.concatenate(list(iter_extract(backbone, [rois[:4], rois[4:]])))
    np.testing.assert_allclose(streamed, expected, atol=1e-5)
    assert extract(backbone, rois[:0]).shape == (0, backbone.feature_dim)


def test_random_weights_are_deterministic(backbone: Backbone) -> None:
    again = load_backbone(FeatureConfig(model=MODEL, weights="random"))
    assert again.fingerprint == backbone.fingerprint
    assert len(backbone.fingerprint) == 64


def test_fingerprint_covers_names_shapes_and_bytes() -> None:
    state = {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    base = state_dict_fingerprint(state)
    assert base == state_dict_fingerprint(dict(reversed(state.items())))
    assert base != state_dict_fingerprint({**state, "a": torch.zeros(3, 2)})
    assert base != state_dict_fingerprint({**state, "a": torch.zeros(2, 3, dtype=torch.float64)})
    assert base != state_dict_fingerprint({"c": state["a"], "b": state["b"]})
    changed = state["a"].clone()
    changed[1, 2] = 1e-30
    assert base != state_dict_fingerprint({**state, "a": changed})


def test_random_weights_log_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="activessf_engine.select.features"):
        load_backbone(FeatureConfig(model=MODEL, weights="random"))
    assert "UNTRAINED" in caplog.text


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weight_files_round_trip(
    tmp_path: Path, suffix: str, trained_state: dict[str, torch.Tensor], rois: np.ndarray
) -> None:
    safetensors_path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(trained_state, str(safetensors_path))
    reference = load_backbone(FeatureConfig(model=MODEL, weights=str(safetensors_path)))
    path = tmp_path / f"checkpoint{suffix}"
    if suffix == ".pth":  # a training checkpoint: wrapped, DataParallel prefixes, extra plain values
        wrapped = {f"module.{k}": v for k, v in trained_state.items()}
        torch.save({"epoch": 3, "state_dict": wrapped}, path)
    else:
        path = safetensors_path
    loaded = load_backbone(FeatureConfig(model=MODEL, weights=str(path)))
    assert loaded.weights == str(path) and not loaded.untrained
    assert loaded.fingerprint == reference.fingerprint
    np.testing.assert_array_equal(extract(loaded, rois), extract(reference, rois))


def test_loaded_weights_differ_from_random(
    tmp_path: Path, backbone: Backbone, trained_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "w.pt"
    torch.save(trained_state, path)
    assert load_backbone(FeatureConfig(model=MODEL, weights=str(path))).fingerprint != backbone.fingerprint


class _Payload:
    """Unpickling this creates the file `trace` (a stand-in for running any code)."""

    def __init__(self, trace: Path) -> None:
        self.trace = trace

    def __reduce__(self):
        return (open, (str(self.trace), "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path, trained_state: dict[str, torch.Tensor]) -> None:
    trace = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": trained_state, "extra": _Payload(trace)}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        read_weights_file(path)
    assert not trace.exists()
    with pytest.raises(ValueError, match="refusing to load"):
        load_backbone(FeatureConfig(model=MODEL, weights=str(path)))
    assert not trace.exists()


def test_missing_keys_are_reported(tmp_path: Path, trained_state: dict[str, torch.Tensor]) -> None:
    partial = {k: v for k, v in trained_state.items() if not k.startswith("layer1.")}
    partial["foreign.weight"] = torch.zeros(1)
    path = tmp_path / "partial.safetensors"
    safetensors.torch.save_file(partial, str(path))
    with pytest.raises(ValueError, match=r"missing key\(s\).*layer1\..*unexpected key\(s\).*foreign\.weight"):
        load_backbone(FeatureConfig(model=MODEL, weights=str(path)))


def test_wrong_shapes_are_reported(tmp_path: Path, trained_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file({**trained_state, "conv1.0.weight": torch.zeros(1, 1, 1, 1)}, str(path))
    with pytest.raises(ValueError, match="do not fit"):
        load_backbone(FeatureConfig(model=MODEL, weights=str(path)))


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(FeatureConfig(model=MODEL, weights=str(tmp_path / "nope.pth")))


def test_unknown_model_lists_close_names() -> None:
    with pytest.raises(ValueError, match=r"close names.*resnet50"):
        load_backbone(FeatureConfig(model="resnet5O", weights="random"))


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return hub


def test_pretrained_without_package_or_cache_explains_what_to_do(empty_caches: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no local pretrained weights for 'test_resnet'.*--weights PATH"):
        load_backbone(FeatureConfig(model=MODEL, weights="pretrained"))


def test_pretrained_reads_the_local_hub_cache(
    empty_caches: Path, trained_state: dict[str, torch.Tensor], rois: np.ndarray
) -> None:
    import os

    import timm

    repo = timm.create_model(MODEL, pretrained=False).pretrained_cfg["hf_hub_id"]
    commit = hashlib.sha1(b"snapshot").hexdigest()
    cache = empty_caches / f"models--{repo.replace('/', '--')}"
    snapshot = cache / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    safetensors.torch.save_file(trained_state, str(snapshot / "model.safetensors"))

    loaded = load_backbone(FeatureConfig(model=MODEL, weights="pretrained"))
    assert loaded.weights == f"pretrained:{snapshot / 'model.safetensors'}"
    assert loaded.fingerprint == state_dict_fingerprint(
        {k: v for k, v in trained_state.items() if not k.startswith("fc.")}
    )
    assert "HF_HUB_OFFLINE" not in os.environ  # restored after the call
    assert extract(loaded, rois).shape == (len(rois), loaded.feature_dim)


def test_damaged_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable"):
        read_weights_file(path)


def test_the_bf16_bound_tells_right_features_from_wrong_ones() -> None:
    """The bound the GPU tests use: bf16 features of real crops stay under it, ROI by ROI, and features that
    are wrong in the ways a broken pipeline would make them are far over it."""
    from conftest import BF16_FEATURE_BOUND, bccd_crops, per_roi_error

    crops = bccd_crops()
    fp32 = extract(load_backbone(FeatureConfig(model="resnet18", weights="random", dtype="float32")), crops)
    bf16 = extract(load_backbone(FeatureConfig(model="resnet18", weights="random", dtype="bfloat16")), crops)
    assert per_roi_error(bf16, fp32).max() < BF16_FEATURE_BOUND
    wrong = {
        "channels swapped": extract(
            load_backbone(FeatureConfig(model="resnet18", weights="random")), crops[..., ::-1].copy()
        ),
        "rows shuffled": fp32[np.roll(np.arange(len(fp32)), 1)],
        "batch mean": np.broadcast_to(fp32.mean(0), fp32.shape),
    }
    for name, features in wrong.items():
        assert np.median(per_roi_error(features, fp32)) > 3 * BF16_FEATURE_BOUND, name
