"""Instantiate callbacks and loggers from their config groups."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger

from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.secrets import is_secret_key

log = RankedLogger(__name__)


def _instantiate_group(cfg: DictConfig | None, kind: str) -> list:
    out: list = []
    if not cfg:
        return out
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"the {kind} config must be a mapping of name -> {{_target_: ...}}, got {type(cfg)}")
    for name, conf in cfg.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info(f"Instantiating {kind} <{conf._target_}>")
            out.append(hydra.utils.instantiate(_without_secret_placeholders(conf)))
        else:
            raise ValueError(f"{kind} entry {name!r} has no _target_: give it one or remove it from the config")
    return out


def _without_secret_placeholders(conf: DictConfig) -> DictConfig | dict:
    """``conf`` without top-level secret keys left null (``logger.wandb.api_key: null`` exists only so
    that a key given on the command line reaches the check that refuses it)."""
    placeholders = {k for k, v in conf.items_ex(resolve=False) if is_secret_key(k) and v is None}
    if not placeholders:
        return conf
    resolved = OmegaConf.to_container(conf, resolve=True)
    return {k: v for k, v in resolved.items() if k not in placeholders}


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    return _instantiate_group(cfg, "callback")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return _instantiate_group(cfg, "logger")
