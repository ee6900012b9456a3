"""Build the datamodule and LightningModule of the stage a config describes."""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig


def build_stage(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """Instantiate ``cfg.data`` and ``cfg.model`` for a stage-1 (image) model."""
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    return datamodule, model
