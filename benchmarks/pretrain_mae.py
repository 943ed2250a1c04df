"""A worked example of feeding an SSL trainer from a ROI store: a small but real MAE pretraining loop.

This is an example of reading the store at training speed, NOT a training framework: no resuming, no
distributed launch, no evaluation. Bring your own trainer (the official MAE, ConvMAE, MoCo v3, MixMIM)
for real runs; what it needs from the engine is the few lines around `ShardedRoiDataset` below, or an
export (`activessf-engine export`).

What it does (He et al., MAE; the ActiveSSF paper's pretraining settings):
- a timm ViT encoder sees 25% of the patches (mask ratio 0.75), a light transformer decoder
  reconstructs the pixels of the masked ones, loss = MSE on masked patches of per-patch normalized pixels;
- AdamW, weight decay 0.05 (none on biases, norms, tokens), betas (0.9, 0.95), lr = base_lr x batch / 256
  with base_lr 1e-3, linear warmup then cosine decay, per step;
- data: the store read through the shard-order fast path in DataLoader workers, augmented there
  (random resized crop, scale 0.2-1, and horizontal flip, as MAE does);
- the encoder is saved as ``encoder.safetensors``, which the engine's feature extractor loads back:
  ``activessf-engine prototypes ... --model vit_small_patch16_224 --weights OUT/encoder.safetensors``.

Run: ``python benchmarks/pretrain_mae.py --store run/selected --out mae-out --steps 2000`` (a GPU helps);
``--ci`` is the CI-sized run (a tiny ViT, a handful of steps on the CPU). Import `pretrain` to reuse it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchvision.transforms import v2

from activessf_engine.feed.datasets import ShardedRoiDataset

CHECKPOINT = "encoder.safetensors"


@dataclass(frozen=True)
class MaeSettings:
    model: str = "vit_small_patch16_224"  # any timm ViT; the engine loads the encoder back by this name
    mask_ratio: float = 0.75  # MAE's and the paper's masking ratio
    decoder_dim: int = 256  # the decoder is light: it only serves pretraining and is not saved
    decoder_depth: int = 4
    decoder_heads: int = 8
    batch_size: int = 64
    steps: int = 1000
    warmup_steps: int = 100  # linear warmup, then cosine decay to 0
    base_lr: float = 1e-3  # the paper's: lr = base_lr x batch_size / 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    norm_pix_loss: bool = True  # targets are each patch's pixels normalized by that patch's mean and std
    min_scale: float = 0.2  # RandomResizedCrop scale range (0.2, 1), as MAE
    num_workers: int = 2  # DataLoader workers reading the store (0: in this process)
    seed: int = 0

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256


# The CI-sized run: a tiny ViT, a few steps on the CPU. Its base_lr is larger than the paper's so that a
# handful of steps visibly lowers the loss; everything else is as above.
CI_SETTINGS = MaeSettings(
    model="vit_tiny_patch16_224",
    decoder_dim=64,
    decoder_depth=1,
    decoder_heads=4,
    batch_size=8,
    steps=8,
    warmup_steps=2,
    base_lr=3e-2,
    num_workers=0,
)


class MaskedAutoencoder(nn.Module):
    """A timm ViT encoder run on the visible patches only, and a small decoder that predicts the masked ones."""

    def __init__(self, encoder: VisionTransformer, settings: MaeSettings) -> None:
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise ValueError(f"{settings.model!r} is not a timm VisionTransformer; choose a ViT (vit_*_patch16_224)")
        self.encoder = encoder
        self.patch = encoder.patch_embed.patch_size[0]
        patches = encoder.patch_embed.num_patches
        self.prefix = encoder.num_prefix_tokens
        self.decoder_embed = nn.Linear(encoder.embed_dim, settings.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, settings.decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.prefix + patches, settings.decoder_dim))
        self.decoder = nn.Sequential(
            *(Block(settings.decoder_dim, settings.decoder_heads, mlp_ratio=4.0) for _ in range(settings.decoder_depth))
        )
        self.decoder_norm = nn.LayerNorm(settings.decoder_dim)
        self.predict = nn.Linear(settings.decoder_dim, self.patch * self.patch * 3)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        self.mask_ratio, self.norm_pix_loss = settings.mask_ratio, settings.norm_pix_loss

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, patches, p*p*3), patches in row-major order as the patch embedding reads them."""
        p = self.patch
        b, c, h, w = images.shape
        x = images.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def encode_visible(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder tokens of a random 1 - mask_ratio of the patches; the mask (1 = hidden) and the restoring order."""
        enc = self.encoder
        x = enc._pos_embed(enc.patch_embed(images))  # prefix tokens first, position embeddings added
        prefix, tokens = x[:, : self.prefix], x[:, self.prefix :]
        b, n, d = tokens.shape
        keep = max(1, round(n * (1 - self.mask_ratio)))
        order = torch.rand(b, n, device=images.device).argsort(dim=1)
        restore = order.argsort(dim=1)
        visible = torch.gather(tokens, 1, order[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(b, n, device=images.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        x = enc.norm(enc.blocks(enc.norm_pre(torch.cat([prefix, visible], dim=1))))
        return x, mask, restore

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The reconstruction loss of a batch of normalized images."""
        latent, mask, restore = self.encode_visible(images)
        x = self.decoder_embed(latent)
        prefix, visible = x[:, : self.prefix], x[:, self.prefix :]
        hidden = self.mask_token.expand(x.shape[0], restore.shape[1] - visible.shape[1], -1)
        tokens = torch.cat([visible, hidden], dim=1)
        tokens = torch.gather(tokens, 1, restore[:, :, None].expand(-1, -1, x.shape[-1]))
        x = self.decoder(torch.cat([prefix, tokens], dim=1) + self.decoder_pos)
        predicted = self.predict(self.decoder_norm(x))[:, self.prefix :]
        target = self.patchify(images)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = ((predicted.float() - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()


def augmentation(size: int, mean: tuple[float, ...], std: tuple[float, ...], min_scale: float) -> v2.Compose:
    """MAE's augmentation of a (3, S, S) uint8 ROI, to a normalized float tensor of the model's size."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def _batches(loader: DataLoader, dataset: Dataset) -> Iterator[torch.Tensor]:
    """Batches forever, epoch after epoch (`set_epoch` before each, where the dataset has it)."""
    for epoch in itertools.count():
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch[0] if isinstance(batch, list | tuple) else batch
        if empty:
            raise ValueError("the data set is empty: nothing to pretrain on")


def _as_input(batch: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """A batch as the model takes it: uint8 batches (from a caller's own dataset) scaled, resized, normalized."""
    if batch.dtype == torch.uint8:
        batch = batch.float().div_(255)
        batch = (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    if batch.shape[-2:] != (size, size):
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return batch


def _schedule(settings: MaeSettings):
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class PretrainResult:
    checkpoint: Path  # encoder.safetensors: load it with --model settings.model --weights this path
    encoder: VisionTransformer
    losses: list[float]  # one per step
    settings: MaeSettings
    seconds: float
    images_per_second: float


def pretrain(
    data: str | Path | Dataset,
    out: str | Path,
    settings: MaeSettings = MaeSettings(),
    device: str | torch.device = "cpu",
    log_every: int = 0,
) -> PretrainResult:
    """MAE-pretrain a timm ViT on `data` for `settings.steps` steps; save the encoder under `out`.

    `data` is a ROI store (read through `ShardedRoiDataset`, augmented in the DataLoader workers) or any
    dataset of (3, S, S) images, uint8 or already normalized float (items may be (image, anything) pairs).
    """
    torch.manual_seed(settings.seed)
    device = torch.device(device)
    encoder = timm.create_model(settings.model, pretrained=False, num_classes=0)
    model = MaskedAutoencoder(encoder, settings).to(device)
    size = encoder.patch_embed.img_size[0]
    mean, std = encoder.pretrained_cfg["mean"], encoder.pretrained_cfg["std"]
    if isinstance(data, str | Path):
        dataset: Dataset = ShardedRoiDataset(
            data, transform=augmentation(size, mean, std, settings.min_scale), seed=settings.seed
        )
    else:
        dataset = data
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=not isinstance(dataset, IterableDataset),
        num_workers=settings.num_workers,
        persistent_workers=settings.num_workers > 0,
        drop_last=len(dataset) >= settings.batch_size,
        pin_memory=device.type == "cuda",
    )
    groups = param_groups_weight_decay(model, settings.weight_decay, no_weight_decay_list=_no_decay(model))
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings))
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    for step, batch in zip(range(settings.steps), _batches(loader, dataset), strict=False):
        images = _as_input(batch, size, mean, std).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == settings.steps - 1):
            print(f"step {step:5d}  loss {losses[-1]:.4f}  lr {scheduler.get_last_lr()[0]:.2e}", file=sys.stderr)
    seconds = time.perf_counter() - start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT
    encoder = model.encoder.cpu().eval()
    safetensors.torch.save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(checkpoint))
    record = {"settings": dataclasses.asdict(settings), "losses": losses, "checkpoint": str(checkpoint)}
    (out / "pretrain.json").write_text(json.dumps(record, indent=2))
    rate = len(losses) * settings.batch_size / seconds if seconds else 0.0
    return PretrainResult(checkpoint, encoder, losses, settings, seconds, rate)


def _no_decay(model: MaskedAutoencoder) -> set[str]:
    """Tokens and position embeddings, which MAE leaves out of weight decay (biases and norms are out anyway)."""
    encoder = {f"encoder.{name}" for name in model.encoder.no_weight_decay()}
    return {*encoder, "mask_token", "decoder_pos"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, type=Path, help="a ROI store (candidates or selected)")
    parser.add_argument("--out", required=True, type=Path, help="folder for encoder.safetensors and pretrain.json")
    parser.add_argument("--ci", action="store_true", help="the CI-sized run: vit_tiny, 8 steps of 8 ROIs, on the CPU")
    parser.add_argument("--model", help="timm ViT name")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--workers", type=int, help="DataLoader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    settings = CI_SETTINGS if args.ci else MaeSettings()
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("model", args.model),
            ("steps", args.steps),
            ("batch_size", args.batch_size),
            ("warmup_steps", args.warmup_steps),
            ("num_workers", args.workers),
        )
        if value is not None
    }
    settings = dataclasses.replace(settings, **changes)
    result = pretrain(args.store, args.out, settings, device=args.device, log_every=max(1, settings.steps // 20))
    print(
        f"{settings.model}: {len(result.losses)} steps of {settings.batch_size}, loss {result.losses[0]:.4f} -> "
        f"{result.losses[-1]:.4f}, {result.images_per_second:.1f} images/s; encoder: {result.checkpoint}\n"
        f"use it: activessf-engine prototypes ... --model {settings.model} --weights {result.checkpoint}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
