"""Run bookkeeping around a task: extras, hyperparameter logging, metric lookup, clean shutdown."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from latentgen.callbacks.slurm_requeue import SlurmRequeued
from latentgen.utils.config_tree import print_config_tree, scrub_secrets
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.resume import find_resume_checkpoint, record_resume

log = RankedLogger(__name__)


def extras(cfg: DictConfig) -> None:
    """Optional start-up utilities controlled by ``cfg.extras``."""
    ex = cfg.get("extras")
    if not ex:
        return
    if ex.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if ex.get("enforce_tags") and not cfg.get("tags"):
        raise ValueError("no tags given: add some, e.g. `tags=[mnist,baseline]`, or set extras.enforce_tags=false")
    if ex.get("print_config"):
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        print_config_tree(cfg, resolve=True, save_to=out / "config_tree.log")


def close_wandb(failed: bool) -> None:
    """Finish the W&B run (if any) so its files are complete even when the task failed."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        log.info(f"Closing W&B run {wandb.run.id} ({'failed' if failed else 'finished'})")
        wandb.finish(exit_code=1 if failed else 0)


def task_wrapper(task: Callable[[DictConfig], tuple[dict, dict]]) -> Callable[[DictConfig], tuple[dict, dict]]:
    """Run ``task``; on any exception log it and re-raise, always closing loggers."""

    @functools.wraps(task)
    def wrap(cfg: DictConfig) -> tuple[dict, dict]:
        failed = True
        try:
            result = task(cfg)
            failed = False
            return result
        except SlurmRequeued as stop:
            failed = stop.code != 0  # requeued: the next job continues this run (same dir and W&B run)
            raise
        except Exception:
            log.exception("Task failed; run dir: %s", cfg.paths.get("output_dir"))
            raise
        finally:
            close_wandb(failed)

    return wrap


def log_hyperparameters(objects: dict[str, Any]) -> None:
    """Send the full resolved config (secrets scrubbed), parameter counts and run dir to all loggers."""
    cfg: DictConfig = objects["cfg"]
    trainer = objects["trainer"]
    model = objects["model"]
    if not trainer.loggers:
        return
    hparams = scrub_secrets(resolved_container(cfg))
    hparams["output_dir"] = str(cfg.paths.output_dir)
    hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
    hparams["model/params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def resolved_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers, without Hydra's own node."""
    return {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in cfg if key != "hydra"
    }


def get_metric_value(metric_dict: dict[str, Any], metric_name: str | None) -> float | None:
    """The metric a sweeper optimises; a clear error if the run did not produce it."""
    if not metric_name:
        return None
    if metric_name not in metric_dict:
        raise KeyError(
            f"optimized_metric={metric_name!r} was not logged by this run; logged metrics: "
            f"{sorted(metric_dict)}. Set optimized_metric to one of them."
        )
    value = metric_dict[metric_name]
    return float(value.item() if hasattr(value, "item") else value)


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: ``auto``/``last`` resume from the newest checkpoint in this run dir (none: start
    fresh), a path loads that file, ``null`` always starts fresh."""
    path = cfg.get("ckpt_path")
    if path is None:
        return None
    if path in ("auto", "last"):
        found = find_resume_checkpoint(cfg.paths.output_dir)
        if found is None:
            return None
        record_resume(cfg.paths.output_dir, *found)
        return str(found[0])
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"ckpt_path={path} does not exist: give the path of a .ckpt file, 'auto' (resume this run dir), or null"
        )
    return str(path)

