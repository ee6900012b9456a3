"""Run bookkeeping around a task: extras, hyperparameter logging, metric lookup, clean shutdown."""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from latentgen.callbacks.slurm_requeue import SlurmRequeued
from latentgen.models.base import class_path
from latentgen.utils.checkpoint_io import CheckpointError, load_checkpoint
from latentgen.utils.config_tree import print_config_tree
from latentgen.utils.errors import ClearError
from latentgen.utils.finite import shorten
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.resume import find_resume_checkpoint, record_resume, training_step
from latentgen.utils.secrets import mask_hydra_files, masked_argv, scrub_secrets
from latentgen.utils.validate import ConfigError

log = RankedLogger(__name__)


def extras(cfg: DictConfig) -> None:
    """Start-up: mask secrets in the files Hydra wrote, then the optional utilities controlled by
    ``cfg.extras``."""
    mask_hydra_files()
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
        except ClearError as error:  # its message says everything; a traceback would only bury it
            log.error("%s", error)
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
    with masked_argv():  # a W&B run starts on first use, here, and records the command line
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)


def resolved_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers, without Hydra's own node."""
    return {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in cfg if key != "hydra"
    }


# why a run may have logged no metric at all of a stage
UNLOGGED_STAGE_CAUSES = {
    "val": "it ended before its first validation, or validation is off: see trainer.max_steps, "
           "trainer.val_check_interval, trainer.check_val_every_n_epoch, trainer.limit_val_batches",
    "test": "testing is off: see test and trainer.limit_test_batches",
}


def get_metric_value(metric_dict: dict[str, Any], metric_name: str | None) -> float | None:
    """The metric a sweeper optimises.

    A ``val/`` or ``test/`` metric of a run that logged nothing of that stage (it ended before its
    first validation, or validation/testing is off) gives NaN and a warning: sweepers count the trial
    as failed and go on. A name that matches nothing although its stage did log metrics (a typo), or
    that names no stage, is a ConfigError.
    """
    if not metric_name:
        return None
    if metric_name in metric_dict:
        value = metric_dict[metric_name]
        return float(value.item() if hasattr(value, "item") else value)
    stage = metric_name.split("/")[0]
    if stage in UNLOGGED_STAGE_CAUSES and not any(str(k).startswith(f"{stage}/") for k in metric_dict):
        log.warning(
            f"optimized_metric={metric_name} has no value: this run logged no {stage}/ metric "
            f"({UNLOGGED_STAGE_CAUSES[stage]}). Returning NaN, which sweepers count as a failed trial."
        )
        return math.nan
    raise ConfigError(
        f"optimized_metric={metric_name} was not logged by this run; logged metrics: "
        f"{', '.join(sorted(map(str, metric_dict)))}. Set optimized_metric to one of them."
    )


def resolve_ckpt_path(cfg: DictConfig, model: pl.LightningModule) -> str | None:
    """The checkpoint ``trainer.fit`` loads for ``ckpt_path``, checked before training starts.

    ``auto``/``last`` resume from the newest usable checkpoint in this run dir (none: start fresh), a
    path loads that file, ``null`` always starts fresh. The file chosen is read as data
    (``weights_only=True``) and must be a training checkpoint of ``model``'s class and shapes; anything
    else raises :class:`CheckpointError` before Lightning writes a single file into the run dir.
    """
    path = cfg.get("ckpt_path")
    if path is None:
        return None
    if path in ("auto", "last"):
        found = find_resume_checkpoint(cfg.paths.output_dir)
        if found is None:
            return None
        check_checkpoint_fits(found[0], model)
        record_resume(cfg.paths.output_dir, *found)
        return str(found[0])
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"ckpt_path={path} does not exist: give the path of a .ckpt file, 'auto' (resume this run dir), or null"
        )
    check_checkpoint_fits(Path(path), model)
    return str(path)


def check_checkpoint_fits(path: Path, model: pl.LightningModule) -> None:
    """``path`` is a training checkpoint (not weights alone) written by ``model``'s class and holds exactly
    its weights; else CheckpointError."""
    ckpt = load_checkpoint(path, purpose="resume training", mmap=True)
    training_step(ckpt, path)
    wanted, found = class_path(type(model)), ckpt.get("latentgen_class")
    fix = (f"pass a checkpoint of a {type(model).__name__} run with this config, ckpt_path=auto to resume this "
           "run dir, or ckpt_path=null to start fresh")
    if found != wanted:
        raise CheckpointError(path, f"holds a {found or 'non-latentgen'} checkpoint, but this run trains {wanted}", fix)
    ours, theirs = model.state_dict(), ckpt.get("state_dict") or {}
    differ = sorted(set(ours) ^ set(theirs)) + sorted(
        k for k in set(ours) & set(theirs) if tuple(ours[k].shape) != tuple(theirs[k].shape))
    if differ:
        raise CheckpointError(path, f"does not match this run's {type(model).__name__} (weights {shorten(differ)} are "
                              "missing, extra or of another shape)", fix)


@contextlib.contextmanager
def pinned_ckpt_path(trainer: pl.Trainer, ckpt_path: str | None) -> Iterator[None]:
    """While fitting, make ``ckpt_path=None`` mean "start fresh" to Lightning as well.

    Lightning reads ``fit(ckpt_path=None)`` as ``"last"`` when an ``OnExceptionCheckpoint`` callback
    is present (and as ``"hpc"`` under Slurm), and would resume whatever checkpoint the run dir holds.
    A path set as ``trainer.ckpt_path`` is never reinterpreted, so ``None`` is set that way (through
    the private connector: the public setter treats ``None`` as "unset").
    """
    if ckpt_path is not None:
        yield
        return
    connector = trainer._checkpoint_connector
    connector._ckpt_path, connector._user_managed = None, True
    try:
        yield
    finally:
        connector._user_managed = False
