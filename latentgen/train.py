"""Training entrypoint: ``python -m latentgen.train +experiment=NAME [overrides]``.

Instantiates datamodule, model, callbacks, loggers and trainer from the config, fits, tests and
returns the optimised metric (for sweeps).
"""

from __future__ import annotations

from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from latentgen.callbacks.slurm_requeue import cluster_plugins
from latentgen.stages.builder import build_stage
from latentgen.stages.resolver import resolve_dependencies
from latentgen.utils import resolvers
from latentgen.utils.errors import ClearError
from latentgen.utils.instantiate import instantiate_callbacks, instantiate_loggers
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.resume import prepare_wandb_resume
from latentgen.utils.run import (
    extras,
    get_metric_value,
    log_hyperparameters,
    pinned_ckpt_path,
    resolve_ckpt_path,
    task_wrapper,
)
from latentgen.utils.summary import print_run_summary
from latentgen.utils.validate import validate_config

log = RankedLogger(__name__)


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit (and test) the stage described by ``cfg``; returns (metrics, instantiated objects)."""
    validate_config(cfg)  # before a stage 1 is trained or anything is built
    # the stored models this run builds on, found or trained (in a child process) before anything is
    # seeded: the run's initial weights and data order do not depend on whether they were trained now
    resolved = resolve_dependencies(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule, model = build_stage(cfg, resolved)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    prepare_wandb_resume(cfg)  # a restarted run continues its W&B run
    loggers = instantiate_loggers(cfg.get("logger"))
    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, plugins=cluster_plugins()
    )

    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer,
               "callbacks": callbacks, "loggers": loggers}
    log_hyperparameters(objects)

    if cfg.get("train"):
        log.info("Starting training")
        ckpt_path = resolve_ckpt_path(cfg, model)  # checked: safe to load, and a checkpoint of this model
        with pinned_ckpt_path(trainer, ckpt_path):  # null stays "start fresh" to Lightning too
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = dict(trainer.callback_metrics)

    if cfg.get("test"):
        ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not ckpt or trainer.fast_dev_run:
            ckpt = None
            log.info("Testing the current weights (no best checkpoint)")
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update(trainer.callback_metrics)

    print_run_summary(cfg, trainer, metrics)
    return metrics, objects


@resolvers.experiment_slot_cli
@hydra.main(version_base="1.3", config_path=str(resolvers.CONF_DIR), config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    try:
        extras(cfg)
        metrics, _ = train(cfg)
        return get_metric_value(metrics, cfg.get("optimized_metric"))
    except ClearError as error:
        # exit with the message alone: raising would add a traceback, and Hydra would print the
        # job's overrides, secrets included
        raise SystemExit(f"Error: {error}") from None


if __name__ == "__main__":
    main()
