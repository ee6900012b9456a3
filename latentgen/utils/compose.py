"""Compose a config of ``conf/`` the way the CLI does, for code that runs outside ``@hydra.main``."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from latentgen.utils.resolvers import CONF_DIR, experiment_in_slot


def compose_config(overrides: Sequence[str], config_name: str = "train.yaml") -> DictConfig:
    """``conf/<config_name>`` with ``overrides`` and its ``hydra`` node, set as the current Hydra config
    so that ``${hydra:...}`` interpolations resolve. Clears a Hydra instance already initialised."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name=config_name, overrides=experiment_in_slot(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg
