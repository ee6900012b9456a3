"""Shared LightningModule plumbing: optimizer and LR schedule from configs, image logging."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import nn

from latentgen.utils.checkpoint_io import plain_data
from latentgen.utils.images import make_grid, save_grid, to_pil


def class_path(cls: type) -> str:
    """``module.QualName`` of a class: what a checkpoint's ``latentgen_class`` entry records."""
    return f"{cls.__module__}.{cls.__qualname__}"


# the optimizer when a model is built without one, and the old hyperparameters it replaces
ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
WARMUP = {"_target_": "latentgen.models.base.warmup_schedule", "_partial_": True}
OLD_OPTIM_KEYS = ("lr", "weight_decay", "betas", "warmup_steps", "lr_schedule")
DECAYED_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters of ``module`` in optimizer groups: ``weight_decay`` on the weight matrices
    of linear and conv layers, none on biases, norm weights, embeddings and positional tables."""
    decay, no_decay, seen = [], [], set()
    for layer in module.modules():
        for name, p in layer.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                (decay if isinstance(layer, DECAYED_LAYERS) and name == "weight" else no_decay).append(p)
    groups = ({"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    decay: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then a constant LR or a cosine decay to 5% at ``total_steps``."""
    if decay not in ("constant", "cosine"):
        raise ValueError(f"decay={decay!r}: choose model.scheduler.decay=constant or cosine")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class LatentGenModule(pl.LightningModule):
    """Base for every stage: optimizer and LR schedule from configs, PNG + W&B images.

    Subclasses call ``save_hyperparameters()`` and then ``set_optim``, so a checkpoint alone rebuilds the model.
    """

    def set_optim(self, optimizer: Mapping | None, scheduler: Mapping | None, old: dict[str, Any]) -> None:
        """Keep the ``optimizer`` and ``scheduler`` configs (dicts with ``_target_``, called with the parameters
        and with ``(optimizer, total_steps=...)``) in ``hparams``; ``None``: AdamW, no schedule.

        ``old``: the ``lr, weight_decay, betas, warmup_steps, lr_schedule`` arguments of checkpoints written
        before these configs; they become the same AdamW and warm-up schedule."""
        unknown = sorted(set(old) - set(OLD_OPTIM_KEYS))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {unknown}")
        if old and (optimizer or scheduler):
            raise TypeError(f"pass the optimizer/scheduler configs or the old arguments {sorted(old)}, not both")
        if old:
            optimizer = {**ADAMW, **{k: old[k] for k in ("lr", "weight_decay", "betas") if k in old}}
            scheduler = {**WARMUP, "warmup_steps": old.get("warmup_steps", 0), "decay": old.get("lr_schedule", "cosine")}
        # plain data: the numbers reach the optimizer state, which checkpoints hold as data
        optimizer, scheduler = plain_data(ADAMW if optimizer is None else optimizer), plain_data(scheduler)
        if not isinstance(optimizer, Mapping) or "_target_" not in optimizer or not (
                scheduler is None or isinstance(scheduler, Mapping) and "_target_" in scheduler):
            raise TypeError(f"optimizer={optimizer!r}, scheduler={scheduler!r}: pass configs with a _target_ (the "
                            "model's config must keep `_recursive_: false` so Hydra passes them on as configs)")
        if not float(optimizer.get("lr", 1.0)) > 0:
            raise ValueError(f"lr={optimizer['lr']}: the learning rate must be positive, e.g. model.optimizer.lr=3e-4")
        for key in old:
            self.hparams.pop(key, None)
        self.hparams.update(optimizer=optimizer, scheduler=scheduler)

    # -- steps: subclasses implement ``shared_step(batch, split)`` for "train", "val" and "test" ----
    def shared_step(self, batch, split: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # lets ``latentgen.stages.checkpoints.load_model`` rebuild any stage from its checkpoint alone
        checkpoint["latentgen_class"] = class_path(type(self))
        # hyperparameters as plain data, so the checkpoint loads with ``weights_only=True``
        for key in (self.CHECKPOINT_HYPER_PARAMS_KEY, pl.LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY):
            if key in checkpoint:
                checkpoint[key] = plain_data(checkpoint[key])

    def configure_optimizers(self):
        weight_decay = self.hparams.optimizer.get("weight_decay", 0.0)
        make_optimizer = hydra.utils.instantiate(self.hparams.optimizer, _partial_=True, _convert_="all")
        optimizer = make_optimizer(param_groups(self, weight_decay))
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer else 1
        make_scheduler = hydra.utils.instantiate(self.hparams.scheduler, _partial_=True, _convert_="all")
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": make_scheduler(optimizer, total_steps=total), "interval": "step"}}

    # -- images -----------------------------------------------------------------------------------
    @property
    def image_dir(self) -> Path:
        root = self.trainer.default_root_dir if self._trainer else "."
        return Path(root) / "images"

    def log_image_grid(self, key: str, images: torch.Tensor, nrow: int | None = None, caption: str = "") -> Path | None:
        """Write ``images`` ([B, C, H, W] in [0, 1]) as ``images/<key>_step<N>.png`` and to W&B."""
        if self._trainer is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return None
        step = self.trainer.global_step
        name = key.replace("/", "_")
        path = save_grid(images, self.image_dir / f"{name}_step{step:07d}.png", nrow=nrow)
        save_grid(images, self.image_dir / f"{name}_latest.png", nrow=nrow)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                grid = to_pil(make_grid(images.detach().float().cpu(), nrow=nrow), scale=2)
                logger.log_image(key=key, images=[grid], step=step, caption=[caption or key])
        return path
