"""DataModule over a latent cache: token grids (or continuous latents) with labels, memory-mapped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from latentgen.data.sampler import ResumableTrainLoader
from latentgen.stages.latent_cache import SPLITS, load_split


class LatentDataset(Dataset):
    """Items ``(x, label)`` where x is a token grid (int64 [h, w]) or latent (float32 [C, h, w])."""

    def __init__(self, cache_dir: str | Path, split: str, field: str) -> None:
        if field not in ("tokens", "latents"):
            raise ValueError(f"field={field!r}: a prior reads 'tokens' (discrete) or 'latents' (continuous)")
        arrays = load_split(cache_dir, split)
        self.x, self.labels = arrays[field], arrays["labels"]
        self.is_tokens = field == "tokens"

    def __len__(self) -> int:
        return len(self.labels)

    def _convert(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.long() if self.is_tokens else t.float()

    def __getitem__(self, i: int):
        return self._convert(self.x[i]), torch.tensor(int(self.labels[i]))

    def __getitems__(self, indices: Sequence[int]):
        """Whole-batch fetch (one fancy-index per array instead of one read per item)."""
        rows = np.asarray(indices)
        order = np.argsort(rows)  # sorted reads are sequential on the memory map
        x = np.empty((len(rows), *self.x.shape[1:]), dtype=self.x.dtype)
        x[order] = self.x[rows[order]]
        return _Batch(self._convert(x), torch.from_numpy(np.asarray(self.labels[rows], dtype=np.int64)))


class _Batch(tuple):
    """A pre-collated batch; ``collate`` passes it through untouched."""

    def __new__(cls, x: torch.Tensor, y: torch.Tensor):
        return super().__new__(cls, (x, y))


def _collate(batch):
    if isinstance(batch, _Batch):
        return [batch[0], batch[1]]
    xs, ys = zip(*batch, strict=True)
    return [torch.stack(xs), torch.stack(ys)]


class LatentDataModule(ResumableTrainLoader):
    """Reads a latent cache built by ``latentgen.stages.latent_cache`` (the builder sets ``cache_dir``)."""

    def __init__(self, field: str = "tokens", batch_size: int = 128, eval_batch_size: int | None = None,
                 num_workers: int = 0, pin_memory: bool = False, cache_dir: str | None = None) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"data.batch_size={batch_size}: it must be a positive number of latents, e.g. data.batch_size=128")
        self.field, self.batch_size = field, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.cache_dir = cache_dir
        self.datasets: dict[str, LatentDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.cache_dir is None:
            raise RuntimeError("LatentDataModule.cache_dir is unset: build it through latentgen.stages.builder")
        for split in SPLITS:
            self.datasets.setdefault(split, LatentDataset(self.cache_dir, split, self.field))

    def dataloader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        bs = batch_size or (self.batch_size if split == "train" else self.eval_batch_size)
        return DataLoader(self.datasets[split], batch_size=bs, shuffle=shuffle, drop_last=shuffle,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=_collate,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch), resumable mid-epoch (``latentgen.data.sampler``)."""
        if "train" not in self.datasets:
            self.setup()
        return self.resumable_train_loader(self.datasets["train"], self.batch_size, drop_last=True,
                                           num_workers=self.num_workers, pin_memory=self.pin_memory,
                                           collate_fn=_collate, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")
