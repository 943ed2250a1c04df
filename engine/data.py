"""A map-style PyTorch dataset over a ROI store, for any SSL trainer (MAE, ConvMAE, MoCo v3, ...)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from activessf_engine.store import RoiStore


class RoiDataset(Dataset):
    """ROIs of a store (candidates or selected) as (3, S, S) uint8 tensors, with random access.

    The store is opened lazily in each process, so the dataset can be handed to DataLoader workers
    (fork or spawn). `transform` receives the uint8 tensor (torchvision v2 transforms accept it).
    With `with_meta`, items are (image, {"roi", "source", "box", "slide", "level", "level0_box", ...}) for
    provenance.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[torch.Tensor], Any] | None = None,
        with_meta: bool = False,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.with_meta = with_meta
        self._store: RoiStore | None = None
        self._length = len(self.store)

    @property
    def store(self) -> RoiStore:
        if self._store is None:
            self._store = RoiStore(self.root)
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += self._length
        image = torch.from_numpy(self.store.roi(index)).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        if not self.with_meta:
            return image
        cols = self.store.columns()
        meta = {"roi": index, "source": str(cols["source_path"][index]), "box": cols["box"][index].tolist()}
        if "level0_box" in cols:  # where to find it again in a viewer: slide, level, box in level-0 pixels
            meta.update(slide=str(cols["slide"][index]), level=int(cols["level"][index]))
            meta["level0_box"] = cols["level0_box"][index].tolist()
        for name in ("cluster", "distance"):
            if name in cols:
                meta[name] = cols[name][index].item()
        return image, meta
