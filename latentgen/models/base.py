"""Shared LightningModule plumbing: optimiser/schedule from plain hyperparameters, image logging."""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from latentgen.utils.images import make_grid, save_grid, to_pil


class LatentGenModule(pl.LightningModule):
    """Base for every stage: AdamW with linear warm-up and optional cosine decay, PNG + W&B images.

    Subclasses call ``save_hyperparameters()`` so a checkpoint alone rebuilds the model.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"

    def set_optim(
        self,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] | list[float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr={lr}: the learning rate must be positive, e.g. model.lr=3e-4")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule={lr_schedule!r}: choose 'constant' or 'cosine'")
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.lr_schedule = warmup_steps, lr_schedule

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
        checkpoint["latentgen_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.trainable_parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer else 1
        warmup, cosine = self.warmup_steps, self.lr_schedule == "cosine"

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

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
