"""Build the datamodule and LightningModule of the stage a config describes, from the config and the
artefacts resolved for it beforehand (:func:`latentgen.stages.resolver.resolve_dependencies`).

Stage 1 (no ``stage1`` node): instantiate ``cfg.data`` and ``cfg.model``. A prior (``stage1`` node):
the latent datamodule of the resolved latent cache, the prior's expectations checked against the
resolved stage 1, and both handed to the prior. Nothing here trains, encodes or reads the store.
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from latentgen.stages.latent_data import LatentDataModule
from latentgen.stages.resolver import ResolvedArtifacts
from latentgen.stages.stage1 import Stage1


def check_prior_matches_stage1(model_cfg: DictConfig, stage1: Stage1, grid_shape: tuple[int, int]) -> dict:
    """Compare what the prior's config expects with the loaded stage 1; fill in what it leaves null."""
    if "num_tokens" in model_cfg:
        stage1.model.require_discrete(f"a token prior ({model_cfg.get('_target_')})")
    actual = {"num_tokens": stage1.model.num_codes, "grid_shape": list(grid_shape),
              "latent_channels": stage1.model.latent_dim}
    what = {"num_tokens": "codebook size", "grid_shape": "latent grid shape", "latent_channels": "latent channels"}
    filled = {}
    for key, value in actual.items():
        if key not in model_cfg:
            continue
        wanted = model_cfg.get(key)
        wanted = list(wanted) if wanted is not None and key == "grid_shape" else wanted
        if wanted is None:
            filled[key] = value
        elif wanted != value:
            raise ValueError(
                f"stage-1 mismatch: the prior's config has model.{key}={wanted} but the stage-1 checkpoint "
                f"{stage1.ckpt_path} has {what[key]} {value}. Set model.{key}={value} (or null to take it "
                "from stage 1), or use a stage 1 that matches (stage1.ckpt_path / stage1.overrides)."
            )
    return filled


def build_stage(cfg: DictConfig, resolved: ResolvedArtifacts) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """Datamodule and model of ``cfg`` from what ``resolve_dependencies(cfg)`` returned."""
    if not cfg.get("stage1"):
        return hydra.utils.instantiate(cfg.data), hydra.utils.instantiate(cfg.model, _convert_="all")

    stage1, cache_dir = resolved.stage1, resolved.cache_dir
    datamodule: LatentDataModule = hydra.utils.instantiate(cfg.data, cache_dir=str(cache_dir))
    datamodule.setup()
    grid = tuple(datamodule.datasets["train"].x.shape[-2:])
    filled = check_prior_matches_stage1(cfg.model, stage1, grid)
    model = hydra.utils.instantiate(
        cfg.model, _convert_="all", **filled, stage1_hparams=dict(stage1.model.hparams), stage1_info=stage1.describe(),
    )
    model.attach_stage1(stage1.model, cache_dir=str(cache_dir))
    return datamodule, model
