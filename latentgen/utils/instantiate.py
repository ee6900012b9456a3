"""Instantiate callbacks and loggers from their config groups."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig
from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger

from latentgen.utils.pylogger import RankedLogger

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
            out.append(hydra.utils.instantiate(conf))
        else:
            raise ValueError(f"{kind} entry {name!r} has no _target_: give it one or remove it from the config")
    return out


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    return _instantiate_group(cfg, "callback")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return _instantiate_group(cfg, "logger")
