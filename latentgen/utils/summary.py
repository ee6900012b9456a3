"""End-of-run summary: where checkpoints, images and the W&B run are, and the final metrics."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table


def wandb_run_dir(trainer: pl.Trainer) -> str | None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            try:
                return str(Path(logger.experiment.dir).parent)
            except Exception:  # noqa: BLE001 - W&B disabled or failed: nothing to point to
                return None
    return None


@rank_zero_only
def print_run_summary(cfg: DictConfig, trainer: pl.Trainer, metrics: dict) -> None:
    out = Path(cfg.paths.output_dir)
    table = Table(title=f"latentgen run: {cfg.get('task_name')}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("run dir", str(out))
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "best_model_path", ""):
        table.add_row("best checkpoint", ckpt.best_model_path)
    if ckpt is not None and getattr(ckpt, "last_model_path", ""):
        table.add_row("last checkpoint", ckpt.last_model_path)
    images = out / "images"
    if images.is_dir():
        table.add_row("images", str(images))
    wandb_dir = wandb_run_dir(trainer)
    if wandb_dir:
        table.add_row("W&B run", f"{wandb_dir}  (upload: wandb sync {wandb_dir})")
    for name in sorted(metrics):
        if name.startswith(("test/", "val/")):
            value = metrics[name]
            table.add_row(name, f"{float(value):.5g}")
    Console().print(table)
