"""Downstream value of a pretraining set: SimCLR pretraining on it, then linear and kNN probes on labeled cells.

`selection_quality.py --downstream` runs this on each strategy's set; ``--downstream-inputs FILE.npz``
saves what it needs (the pool at the SSL resolution, each set's rows, the labeled cells), and this script
runs the table from such a file anywhere, a GPU machine without the data included::

    python benchmarks/ssl_probe.py /tmp/downstream.npz --device cuda --seeds 3 --steps 1000 --json /tmp/ssl.json

The paper measures selection by what a self-supervised model pretrained on the selected set learns. This
is the same measurement at a size that runs on two CPU cores: a small CNN (four stride-2 stages, 256-d
features) trained with SimCLR's NT-Xent loss (Chen et al. 2020) on 64x64 versions of the ROIs, every set
with the same number of steps and the same schedule. SimCLR rather than MAE: at this scale a contrastive
objective gives features a linear probe can read after a few hundred steps; MAE's need far longer.

The probes freeze the encoder and read the labeled set at a fixed stratified split: a logistic regression
(class-balanced weights) on standardized features and a cosine kNN (k = 5, distance-weighted), scored by
macro-F1 and per-class F1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn

MEAN = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
STD = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class SslSchedule:
    """The pretraining every set gets, identical for all of them."""

    steps: int = 300
    batch: int = 128  # images per step (two views each)
    resolution: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1  # fraction of the steps with a linear warmup, then cosine decay
    temperature: float = 0.2


def downsample(rois: np.ndarray, resolution: int) -> torch.Tensor:
    """(n, S, S, 3) uint8 -> (n, 3, r, r) float32 in [0, 1], antialiased, in chunks to bound memory."""
    out = []
    for start in range(0, len(rois), 256):
        chunk = torch.from_numpy(np.ascontiguousarray(rois[start : start + 256])).permute(0, 3, 1, 2).float() / 255
        out.append(F.interpolate(chunk, size=(resolution, resolution), mode="bilinear", antialias=True))
    return torch.cat(out) if out else torch.empty(0, 3, resolution, resolution)


def _stage(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, 2, 1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


def make_encoder() -> nn.Module:
    """Four stride-2 stages (32-64-128-256 channels), global average pooling: (n, 3, r, r) -> (n, 256)."""
    return nn.Sequential(
        _stage(3, 32), _stage(32, 64), _stage(64, 128), _stage(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def _augment(resolution: int) -> nn.Module:
    """SimCLR's views for stained cells: crops, flips, rotations (a cell has no up), brightness and contrast
    (scanners differ), focus blur. No hue, saturation or grayscale: the stain's colour tells the classes apart
    (eosinophil granules, basophil), so the views keep it. (Kornia's hue jitter was also 80% of the cost.)"""
    return nn.Sequential(
        K.RandomResizedCrop((resolution, resolution), scale=(0.35, 1.0)),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        K.RandomRotation(90.0, p=0.5),
        K.RandomBrightness((0.7, 1.3), p=0.8),
        K.RandomContrast((0.7, 1.3), p=0.8),
        K.RandomGaussianBlur((5, 5), (0.1, 1.5), p=0.3),
    )


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalized-temperature cross entropy over 2n views: each view's positive is its pair."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = len(a)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)
    return F.cross_entropy(logits, targets)


def _lr_at(step: int, schedule: SslSchedule) -> float:
    warm = max(1, int(schedule.warmup * schedule.steps))
    if step < warm:
        return schedule.lr * (step + 1) / warm
    progress = (step - warm) / max(1, schedule.steps - warm)
    return schedule.lr * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(images: torch.Tensor, schedule: SslSchedule, seed: int, device: str = "cpu") -> tuple[nn.Module, dict]:
    """SimCLR on `images` (n, 3, r, r) in [0, 1]; returns the encoder (eval mode) and the loss curve."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    encoder = make_encoder().to(device)
    projector = nn.Sequential(nn.Linear(256, 256), nn.ReLU(inplace=True), nn.Linear(256, 128)).to(device)
    params = [*encoder.parameters(), *projector.parameters()]
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    augment = _augment(schedule.resolution).to(device)
    mean, std = MEAN.to(device), STD.to(device)
    images = images.to(device)
    losses = []
    started = time.perf_counter()
    encoder.train()
    for step in range(schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, schedule)
        batch = images[torch.randint(len(images), (min(schedule.batch, len(images)),), generator=generator).to(device)]
        views = [(augment(batch) - mean) / std for _ in range(2)]
        loss = nt_xent(projector(encoder(views[0])), projector(encoder(views[1])), schedule.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    encoder.eval()
    first, last = np.mean(losses[: max(1, len(losses) // 10)]), np.mean(losses[-max(1, len(losses) // 10) :])
    return encoder, {
        "loss_first": round(float(first), 4),
        "loss_last": round(float(last), 4),
        "seconds": round(time.perf_counter() - started, 2),
    }


@torch.inference_mode()
def encode(encoder: nn.Module, images: torch.Tensor, device: str = "cpu") -> np.ndarray:
    """Frozen features (n, 256) of images (n, 3, r, r) in [0, 1]."""
    mean, std = MEAN.to(device), STD.to(device)
    out = [encoder((images[i : i + 512].to(device) - mean) / std).cpu() for i in range(0, len(images), 512)]
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class ProbeSplit:
    """The labeled set, downsampled, and a fixed stratified train/test split of it."""

    images: torch.Tensor
    labels: np.ndarray
    class_names: list[str]
    train: np.ndarray
    test: np.ndarray

    @classmethod
    def make(cls, images: torch.Tensor, labels: np.ndarray, class_names: list[str], seed: int = 0) -> ProbeSplit:
        index = np.arange(len(labels))
        train, test = train_test_split(index, test_size=0.5, stratify=labels, random_state=seed)
        return cls(images, labels, class_names, np.sort(train), np.sort(test))


def probe(features: np.ndarray, split: ProbeSplit) -> dict[str, dict]:
    """Linear and kNN probes: macro-F1 and per-class F1 on the test half."""
    scaler = StandardScaler().fit(features[split.train])
    train, test = scaler.transform(features[split.train]), scaler.transform(features[split.test])
    y_train, y_test = split.labels[split.train], split.labels[split.test]
    classes = np.arange(len(split.class_names))
    linear = LogisticRegression(max_iter=3000, class_weight="balanced").fit(train, y_train)
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine", weights="distance").fit(train, y_train)
    results = {}
    for name, model in (("linear", linear), ("knn", knn)):
        per_class = f1_score(y_test, model.predict(test), labels=classes, average=None, zero_division=0)
        results[name] = {
            "macro_f1": round(float(per_class.mean()), 4),
            "per_class_f1": {c: round(float(v), 4) for c, v in zip(split.class_names, per_class, strict=True)},
        }
    return results


UNTRAINED = "untrained encoder"


@dataclass(frozen=True)
class DownstreamInputs:
    """Everything the downstream table needs, at the SSL resolution: no store, no model, no raw data."""

    pool: np.ndarray  # (n, r, r, 3) uint8, the candidate pool
    sets: dict[str, np.ndarray]  # strategy -> pool rows it selected
    labeled: np.ndarray  # (m, r, r, 3) uint8, the labeled cells, framed like the candidates
    labels: np.ndarray  # (m,) int64
    class_names: list[str]
    rare: list[str]  # classes whose mean F1 is reported apart

    def save(self, path: Path) -> None:
        arrays = {f"set_{i}": rows for i, rows in enumerate(self.sets.values())}
        meta = {"sets": list(self.sets), "class_names": self.class_names, "rare": self.rare}
        np.savez_compressed(
            path,
            pool=self.pool,
            labeled=self.labeled,
            labels=self.labels,
            **arrays,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )

    @classmethod
    def load(cls, path: Path) -> DownstreamInputs:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            sets = {name: data[f"set_{i}"] for i, name in enumerate(meta["sets"])}
            return cls(data["pool"], sets, data["labeled"], data["labels"], meta["class_names"], meta["rare"])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, r, r, 3) uint8 -> (n, 3, r, r) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)


def to_images(pixels: torch.Tensor) -> np.ndarray:
    """(n, 3, r, r) float in [0, 1] -> (n, r, r, 3) uint8: the inverse of `to_tensor`, for saving."""
    return pixels.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def run_table(
    inputs: DownstreamInputs, schedule: SslSchedule, seeds: int, device: str = "cpu", only: list[str] | None = None
) -> dict[str, Any]:
    """SimCLR on each set (and an untrained encoder, the floor), probed over `seeds` seeds; `only` names
    the rows to run (default all)."""
    split = ProbeSplit.make(to_tensor(inputs.labeled), inputs.labels, inputs.class_names)
    pool = to_tensor(inputs.pool)
    results: dict[str, Any] = {"rare": inputs.rare, "schedule": dataclasses.asdict(schedule), "device": device}
    for name, rows in {UNTRAINED: None, **inputs.sets}.items():
        if only is not None and name not in only:
            continue
        runs = []
        for seed in range(seeds):
            if rows is None:
                torch.manual_seed(seed)
                encoder, curve = make_encoder().to(device).eval(), {}
            else:
                encoder, curve = pretrain(pool[torch.from_numpy(rows)], schedule, seed, device)
            scores = probe(encode(encoder, split.images, device), split)
            runs.append({"seed": seed, **curve, **scores})
            trained = (
                f", loss {curve['loss_first']:.2f} -> {curve['loss_last']:.2f} in {curve['seconds']:.0f} s"
                if curve
                else ""
            )
            rare_f1 = {p: np.mean([scores[p]["per_class_f1"][c] for c in inputs.rare]) for p in ("linear", "knn")}
            print(
                f"  {name:<32} seed {seed}: linear macro-F1 {scores['linear']['macro_f1']:.3f} "
                f"(rare {rare_f1['linear']:.3f}), kNN {scores['knn']['macro_f1']:.3f} (rare {rare_f1['knn']:.3f})"
                f"{trained}",
                flush=True,
            )
        results[name] = {"rois": None if rows is None else len(rows), "runs": runs, **aggregate(runs, inputs.rare)}
    return results


def aggregate(runs: list[dict], rare: list[str]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of macro-F1 and of the rare classes' mean F1, per probe."""
    out = {}
    for name in ("linear", "knn"):
        macro = [r[name]["macro_f1"] for r in runs]
        rare_f1 = [np.mean([r[name]["per_class_f1"][c] for c in rare]) for r in runs]
        classes = runs[0][name]["per_class_f1"]
        out[name] = {
            "macro_f1": [round(float(np.mean(macro)), 4), round(float(np.std(macro)), 4)],
            "rare_f1": [round(float(np.mean(rare_f1)), 4), round(float(np.std(rare_f1)), 4)],
            "per_class_f1": {c: round(float(np.mean([r[name]["per_class_f1"][c] for r in runs])), 4) for c in classes},
        }
    return out


def print_table(results: dict[str, Any]) -> None:
    print(
        f"{'pretraining set':<32}{'ROIs':>6}{'linear macro-F1':>18}{'linear rare-F1':>17}"
        f"{'kNN macro-F1':>15}{'kNN rare-F1':>14}"
    )
    for name, row in results.items():
        if not isinstance(row, dict) or "runs" not in row:
            continue
        cells = [row[p][m] for p in ("linear", "knn") for m in ("macro_f1", "rare_f1")]
        print(
            f"{name:<32}{(row['rois'] if row['rois'] is not None else '-'):>6}"
            + "".join(f"{f'{m:.3f} ± {s:.3f}':>{w}}" for (m, s), w in zip(cells, (18, 17, 15, 14), strict=True))
        )
    print(f"rare classes: {', '.join(results['rare'])}; mean ± std over seeds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", type=Path, help="an .npz written by selection_quality.py --downstream-inputs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=SslSchedule.steps)
    parser.add_argument("--batch", type=int, default=SslSchedule.batch)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", type=lambda v: v.split(","), help="comma-separated rows to run (default all)")
    args = parser.parse_args(argv)
    inputs = DownstreamInputs.load(args.inputs)
    schedule = SslSchedule(steps=args.steps, batch=args.batch, resolution=inputs.pool.shape[1])
    started = time.perf_counter()
    print(
        f"SimCLR {schedule.steps} steps x {schedule.batch} at {schedule.resolution}px, {args.seeds} seeds, "
        f"on {args.device}; pool {len(inputs.pool)}, labeled {len(inputs.labeled)}"
    )
    results = run_table(inputs, schedule, args.seeds, args.device, args.only)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_table(results)
    print(f"wall time {results['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
