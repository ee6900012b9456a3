"""Resumable shuffling for train loaders: a restarted run sees the same batches in the same order.

* ``ResumableSampler``: the permutation of ``DistributedSampler`` (from ``seed + epoch``) and its
  split over ranks (one rank: the whole permutation). After a restore it skips the positions of the
  epoch that were already trained on.
* ``ResumableDataLoader``: counts the batches it hands to training; ``state_dict()`` is that
  position.
* ``ResumableTrainLoader``: data-module mixin that saves the position in every checkpoint and hands
  it to the train loader on resume. Lightning's fit loop also stores the state of stateful train
  loaders, but it skips restoring it when the loader was built before the checkpoint was loaded,
  which ``trainer.estimated_stepping_batches`` (LR schedules) does; the data module's state is
  loaded before any loader exists.

The position counts batches handed out, not indices the sampler produced, so worker processes
that prefetch ahead do not shift it. Worker seeds come from ``(seed, epoch)`` and the loader never
draws from the global torch RNG, so a resumed run's RNG stream matches the uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


def default_shuffle_seed() -> int:
    """The run's seed as set by ``seed_everything`` (``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableSampler(DistributedSampler):
    """Shuffled indices of this rank for one epoch, skipping the ``consumed`` positions.

    A ``DistributedSampler`` subclass, so Lightning keeps it under DDP instead of wrapping it.
    Rank ``r`` of ``W`` takes positions ``r, r+W, ...`` of the epoch's permutation (padded to a
    multiple of ``W`` unless ``drop_last``), so the samples trained on so far are always a prefix
    of the permutation, whatever the number of ranks.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=drop_last)
        self.consumed = 0  # positions of this rank's share already handed to training this epoch
        self._restored = False

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a restored position belongs to its own epoch only
            self._restored = False
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        """This epoch's indices, from the restored position if a checkpoint just set one, else all."""
        start = self.consumed if self._restored else 0
        self.consumed, self._restored = start, False
        return iter(list(super().__iter__())[start:])

    def state_dict(self) -> dict[str, int]:
        # ``consumed`` over all ranks: positions of the whole permutation, valid for any world size
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed * self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.consumed = min(int(state["consumed"]) // self.num_replicas, self.num_samples)
        self._restored = True

    def advance(self, batch_size: int) -> None:
        self.consumed = min(self.consumed + batch_size, self.num_samples)


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a ``ResumableSampler`` whose position goes into Lightning checkpoints.

    The underlying iterator is created on the first ``next()``: Lightning asks for the iterator
    before it calls ``set_epoch``, and worker processes would otherwise start on the old epoch.
    """

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):  # Lightning swapped it (e.g. overfit_batches)
            yield from super().__iter__()
            return
        # worker seeds from (seed, epoch): the same after a restart, and no global RNG draw
        self.generator = torch.Generator().manual_seed(sampler.seed * 100_003 + sampler.epoch)
        for batch in super().__iter__():
            sampler.advance(self.batch_size)
            yield batch

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict() if isinstance(self.sampler, ResumableSampler) else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state and isinstance(self.sampler, ResumableSampler):
            self.sampler.load_state_dict(state)


def resumable_loader(dataset: Dataset, batch_size: int, *, seed: int | None = None, rank: int = 0,
                     world_size: int = 1, drop_last: bool = True, **loader_kwargs: Any) -> ResumableDataLoader:
    """Shuffling train loader of ``dataset`` for rank ``rank`` of ``world_size`` that resumes mid-epoch.

    ``seed`` defaults to the run's seed (``default_shuffle_seed``); ``loader_kwargs`` go to the
    ``DataLoader`` (``num_workers``, ``pin_memory``, ...).
    """
    seed = default_shuffle_seed() if seed is None else seed
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                               **loader_kwargs)


class ResumableTrainLoader(pl.LightningDataModule):
    """Data-module mixin: ``train_dataloader`` returns ``self.resumable_train_loader(...)``, and a run
    resumed from a checkpoint continues its epoch where the checkpoint was written."""

    _train_loader: ResumableDataLoader | None = None
    _train_loader_state: dict[str, int] | None = None

    def resumable_train_loader(self, dataset: Dataset, batch_size: int, *, seed: int | None = None,
                               **loader_kwargs: Any) -> ResumableDataLoader:
        """``resumable_loader`` for this trainer's rank, at the restored position if there is one."""
        trainer = self.trainer  # None outside a Trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        loader_kwargs.setdefault("drop_last", len(dataset) // world_size >= batch_size)
        loader = resumable_loader(dataset, batch_size, seed=seed, rank=rank, world_size=world_size,
                                  **loader_kwargs)
        if self._train_loader_state:
            loader.load_state_dict(self._train_loader_state)
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        loader = self._train_loader
        return {"train_loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_loader_state = state_dict.get("train_loader")
        if self._train_loader is not None and self._train_loader_state:
            self._train_loader.load_state_dict(self._train_loader_state)
