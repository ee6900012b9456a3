"""Checkpoints that make restarts cheap: every N steps (a kill -9 loses little), and on exceptions.

Both write atomically (temporary file, then rename), so a job killed while saving never leaves a
truncated checkpoint for the next start to trip over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, OnExceptionCheckpoint

from latentgen.callbacks.finite_check import NonFiniteTrainingError
from latentgen.callbacks.slurm_requeue import SlurmRequeued


def save_atomically(trainer: pl.Trainer, path: str | Path) -> Path:
    """``trainer.save_checkpoint`` (collective: call on every rank) into ``path`` via a temp file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(tmp)
    if trainer.is_global_zero:
        os.replace(tmp, path)
    trainer.strategy.barrier("save_atomically")
    return path


class PeriodicCheckpoint(Callback):
    """Write ``<dirpath>/<filename>.ckpt`` every ``every_n_train_steps`` optimizer steps, in place.

    Complements ``ModelCheckpoint`` (best/last at validation): a run killed between validations
    resumes from at most ``every_n_train_steps`` steps back (``ckpt_path=auto`` picks the newest).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 500, filename: str = "periodic") -> None:
        if int(every_n_train_steps) < 1:
            raise ValueError(f"every_n_train_steps={every_n_train_steps}: must be >= 1 (remove the callback to disable)")
        self.dirpath, self.every_n_train_steps = Path(dirpath), int(every_n_train_steps)
        self.path = self.dirpath / f"{filename}.ckpt"
        self._last_saved_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        if trainer.fast_dev_run or trainer.sanity_checking or step == 0 or step == self._last_saved_step:
            return
        if step % self.every_n_train_steps == 0:
            self._last_saved_step = step
            self.dirpath.mkdir(parents=True, exist_ok=True)
            save_atomically(trainer, self.path)


class ExceptionCheckpoint(OnExceptionCheckpoint):
    """``OnExceptionCheckpoint`` that skips the save when ``SlurmRequeue`` has just saved and requeued,
    and when training stopped on non-finite values (the weights are no resume point then)."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (SlurmRequeued, NonFiniteTrainingError)):
            return
        super().on_exception(trainer, pl_module, exception)
