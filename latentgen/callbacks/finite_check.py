"""Stop a run whose loss, metrics or weights stop being finite, and never checkpoint NaN weights.

* every training step: the step's loss (one ``isfinite`` check, one host sync);
* at the end of every validation: the logged metrics and all weights (one host sync each);
* before any checkpoint is written: the weights in it, so ``last.ckpt``, the best, periodic and
  requeue checkpoints always hold the last finite weights.

A fault raises :class:`NonFiniteTrainingError`, naming the step, the metric, the last finite
checkpoint of the run dir (kept) and the usual fixes; the run then exits non-zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from latentgen.utils.finite import all_finite, nonfinite_names, shorten
from latentgen.utils.resume import find_resume_checkpoint


class NonFiniteTrainingError(RuntimeError):
    """Training produced a NaN/inf loss, metric or weight."""


class FiniteCheck(Callback):
    """Raise :class:`NonFiniteTrainingError` as soon as training stops being finite."""

    def __init__(self) -> None:
        self._step = 0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           *args: Any, **kwargs: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not torch.is_tensor(loss):
            return
        ok = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(ok, all=True):
            bad = nonfinite_names(trainer.callback_metrics) or ["the training loss"]
            self._fail(trainer, pl_module, self._step, "the training loss", bad)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        ok = all_finite(metrics.values()) and all_finite(pl_module.state_dict().values())
        if not trainer.strategy.reduce_boolean_decision(ok, all=True):
            bad = nonfinite_names(metrics) + [f"weight {n}" for n in nonfinite_names(pl_module.state_dict())]
            self._fail(trainer, pl_module, trainer.global_step, "validation", bad or ["a weight on another rank"])

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict") or {}
        if not all_finite(state.values()):
            bad = [f"weight {n}" for n in nonfinite_names(state)]
            self._fail(trainer, pl_module, trainer.global_step,
                       "a checkpoint about to be saved (not written: it would hold non-finite weights)", bad)

    @staticmethod
    def _fail(trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, where: str, bad: list[str]) -> None:
        raise NonFiniteTrainingError(describe_fault(trainer, pl_module, step, where, bad))


def describe_fault(trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, where: str,
                   bad: list[str]) -> str:
    """The error message: step, metric, last finite checkpoint and what to change."""
    found = find_resume_checkpoint(trainer.default_root_dir)
    if found is None:
        kept = "No checkpoint had been written in this run dir yet, so there is none to resume from."
    else:
        kept = f"Last finite checkpoint (kept): {found[0]} (global step {found[1]})."
    lr = ((pl_module.hparams.get("optimizer") or {}) if hasattr(pl_module, "hparams") else {}).get("lr")
    lr_now = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
    lr_text = f"model.optimizer.lr={lr:g}" if lr is not None else "the learning rate"
    if lr_now is not None:
        lr_text += f" (learning rate at this step: {lr_now:g})"
    return (
        f"Training stopped: non-finite values (NaN/inf) at global step {step} "
        f"(epoch {trainer.current_epoch}), found in {where}: {shorten(bad)}.\n{kept}\n"
        f"Likely fixes: lower {lr_text}, e.g. ten times smaller; clip gradients with "
        f"trainer.gradient_clip_val=1.0 (now {trainer.gradient_clip_val}); with 16-bit or bf16 mixed precision, "
        f"train in fp32 with trainer.precision=32-true (now {trainer.precision})."
    )
