"""The packaged EfficientNet-Lite2 ImageNet weights: key mapping, a strict load, real predictions, defaults."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import BCCD
from PIL import Image
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from activessf_engine.config import FeatureConfig
from activessf_engine.select.features import DEFAULT_MODEL, extract, load_backbone, resolve_features, weights_source
from activessf_engine.select.packaged_weights import (
    packaged_state_dict,
    packaged_weights_file,
    rename_efficientnet_pytorch,
)

PALACE = 698  # ImageNet-1k class of scikit-learn's sample photo china.jpg (a Chinese palace)


@pytest.fixture(scope="module")
def lite2() -> torch.nn.Module:
    model = timm.create_model(DEFAULT_MODEL, pretrained=False)
    model.load_state_dict(packaged_state_dict(model, packaged_weights_file(DEFAULT_MODEL)), strict=True)
    return model.eval()


def test_packaged_checkpoint_fills_every_tensor_of_timm_lite2_with_the_right_shape() -> None:
    model = timm.create_model(DEFAULT_MODEL, pretrained=False)
    mapped = packaged_state_dict(model, packaged_weights_file(DEFAULT_MODEL))
    expected = model.state_dict()
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == expected[k].shape for k in expected)


def test_lite2_names_the_photo_it_sees(lite2: torch.nn.Module) -> None:
    """A wrong mapping between two layers of equal shape would still load; it would not name the photo."""
    transform = create_transform(**resolve_data_config({}, model=lite2))
    pixels = transform(Image.fromarray(load_sample_image("china.jpg")))[None]
    with torch.inference_mode():
        probabilities = lite2(pixels).softmax(-1)[0]
    top5 = probabilities.topk(5).indices.tolist()
    assert top5[0] == PALACE, [ImageNetInfo().index_to_description(i) for i in top5]
    assert probabilities[PALACE] > 0.2


def test_swapping_two_equal_layers_changes_the_prediction(lite2: torch.nn.Module) -> None:
    """The prediction test above can fail: the same photo through a mapping with two norms swapped."""
    model = timm.create_model(DEFAULT_MODEL, pretrained=False)
    state = packaged_state_dict(model, packaged_weights_file(DEFAULT_MODEL))
    for key in [k for k in state if k.startswith("blocks.2.0.bn1.")]:
        other = key.replace("bn1", "bn2")
        state[key], state[other] = state[other], state[key]
    model.load_state_dict(state, strict=True)
    pixels = create_transform(**resolve_data_config({}, model=model))(Image.fromarray(load_sample_image("china.jpg")))
    with torch.inference_mode():
        assert model.eval()(pixels[None]).argmax().item() != PALACE


def test_renaming_refuses_unknown_layers_and_extra_blocks() -> None:
    with pytest.raises(ValueError, match=r"unknown layer '_blocks\.1\._se_reduce\.weight'"):
        rename_efficientnet_pytorch({"_blocks.1._se_reduce.weight": torch.zeros(1)}, [1, 2])
    with pytest.raises(ValueError, match="block 3 beyond the model's 3 blocks"):
        rename_efficientnet_pytorch({"_blocks.3._bn0.weight": torch.zeros(1)}, [1, 2])
    renamed = rename_efficientnet_pytorch(
        {"_blocks.0._bn1.bias": torch.zeros(1), "_blocks.2._bn1.bias": torch.zeros(1), "_fc.weight": torch.zeros(1)},
        [1, 2],
    )
    assert set(renamed) == {"blocks.0.0.bn1.bias", "blocks.1.1.bn2.bias", "classifier.weight"}


def test_the_default_backbone_is_pretrained_lite2_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = load_backbone(FeatureConfig())
    assert (backbone.name, backbone.feature_dim, backbone.untrained) == (DEFAULT_MODEL, 1280, False)
    assert backbone.weights == f"pretrained:{packaged_weights_file(DEFAULT_MODEL)}"
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)  # the tf_ variant's preprocessing
    # real features tell cells from background: two crops of one BCCD cell are nearer than cell and plain pink
    tile = np.asarray(Image.open(BCCD / "BloodImage_00016.jpg").convert("RGB"))  # its white cell: x 151-329, y 118-279
    cell, shifted = tile[86:310, 128:352], tile[92:316, 134:358]
    pink = np.broadcast_to(np.median(tile.reshape(-1, 3), 0).astype(np.uint8), (224, 224, 3))
    f = extract(backbone, np.stack([cell, shifted, pink]))
    assert np.linalg.norm(f[0] - f[1]) < 0.5 * np.linalg.norm(f[0] - f[2])


def test_auto_means_lite2_for_prototypes_and_the_prototypes_own_for_select() -> None:
    assert resolve_features(FeatureConfig()) == FeatureConfig(model=DEFAULT_MODEL, weights="pretrained")
    made = ("resnet50", "/models/r50.safetensors")
    assert resolve_features(FeatureConfig(), made) == FeatureConfig(model="resnet50", weights=made[1])
    assert resolve_features(FeatureConfig(model="resnet50", weights="random"), made).weights == "random"
    with pytest.raises(ValueError, match=r"--model resnet18 was given, but the prototypes were made with resnet50"):
        resolve_features(FeatureConfig(model="resnet18"), made)
    with pytest.raises(ValueError, match="pass --weights"):
        resolve_features(FeatureConfig(), ("resnet50", ""))


def test_weights_are_checked_without_loading(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth does not exist"):
        weights_source(FeatureConfig(model="resnet50", weights=str(tmp_path / "nope.pth")))
    assert weights_source(FeatureConfig(model=DEFAULT_MODEL, weights="pretrained")).endswith(".pth")
    assert weights_source(FeatureConfig(model="resnet18", weights="random")) == "random"
