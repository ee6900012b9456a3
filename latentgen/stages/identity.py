"""What a trained model in the artefact store is: its kind, its key, and the ``meta.json`` it gets.

A model's key hashes the parts of its resolved training config that decide the trained weights: the
data (without where it is read from or how fast), the model, the training budget and precision, the
seed and the latentgen version. Where it runs is *not* part of it: ``trainer.devices`` and
``trainer.num_nodes`` (and so the effective batch size they give) change nothing in the key, so a
stage 1 trained on 4 GPUs serves a prior that runs on 1. ``meta.json`` records them under
``training`` instead, and a run that reuses a model trained with another effective batch size than
its own config would train with says so in a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from latentgen import __version__
from latentgen.stages.artifacts import hash_json


@dataclass(frozen=True)
class ArtifactKind:
    """A trained model kept in the artefact store: its folder, its name in messages, the config node
    that asks for it, and the hyperparameters copied into its ``meta.json``."""

    kind: str
    name: str
    config_node: str  # the node of a run's config that asks for it (its overrides, auto_train, ...)
    meta_keys: tuple[str, ...] = ()


STAGE1 = ArtifactKind("stage1", "stage 1", "stage1", ("num_codes",))

# Keys that say where or how fast something runs, not what is trained.
_VOLATILE_DATA = {"data_dir", "num_workers", "pin_memory", "persistent_workers", "download", "eval_batch_size"}
_TRAINER_IDENTITY = {
    "max_epochs", "max_steps", "min_epochs", "precision", "fast_dev_run", "limit_train_batches",
    "overfit_batches", "gradient_clip_val", "accumulate_grad_batches",
}


def stage1_identity(cfg: DictConfig) -> dict[str, Any]:
    """The parts of a resolved training config that determine the trained weights."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k not in _VOLATILE_DATA}
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("num_log_images", None)
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k in _TRAINER_IDENTITY}
    return {"data": data, "model": model, "trainer": trainer, "seed": cfg.get("seed"), "version": __version__}


def artifact_key(run_cfg: DictConfig) -> str:
    """Store key of the model the run ``run_cfg`` trains (the hash of its :func:`stage1_identity`)."""
    return hash_json(stage1_identity(run_cfg))[:16]


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def training_scale(run_cfg: DictConfig, devices: int | None = None, num_nodes: int | None = None) -> dict[str, Any]:
    """Devices, nodes, gradient accumulation and batch size of a training run, and the effective batch
    size they give (None when one of them is unknown, e.g. ``trainer.devices=auto``). ``devices`` and
    ``num_nodes`` are what the run really used, when known; else they are read from the config."""
    trainer = run_cfg.trainer
    scale = {
        "devices": devices or _count(trainer.get("devices")),
        "num_nodes": num_nodes or _count(trainer.get("num_nodes", 1)),
        "accumulate_grad_batches": _count(trainer.get("accumulate_grad_batches") or 1),
        "batch_size": _count(run_cfg.data.get("batch_size")),
    }
    known = all(scale.values())
    scale["effective_batch_size"] = (scale["devices"] * scale["num_nodes"] * scale["accumulate_grad_batches"]
                                     * scale["batch_size"]) if known else None
    return scale


def describe_scale(scale: dict[str, Any]) -> str:
    """``64 (batch 32 x 2 devices x 1 node(s) x 1 accumulated)``."""
    return (f"{scale.get('effective_batch_size')} (batch {scale.get('batch_size')} x {scale.get('devices')} "
            f"device(s) x {scale.get('num_nodes')} node(s) x {scale.get('accumulate_grad_batches')} accumulated)")


def other_scale_warning(meta: dict[str, Any], run_cfg: DictConfig, artifact: ArtifactKind) -> str | None:
    """A warning when the stored model ``meta`` describes was trained with another effective batch size
    than ``run_cfg`` would train it with (None when they agree or one of them is unknown)."""
    stored = meta.get("training") or {}
    wanted = training_scale(run_cfg)
    if not stored.get("effective_batch_size") or not wanted["effective_batch_size"]:
        return None
    if stored["effective_batch_size"] == wanted["effective_batch_size"]:
        return None
    node = artifact.config_node
    return (f"The stored {artifact.name} {meta.get('key')} was trained with effective batch size "
            f"{describe_scale(stored)}, but this run's {node} config would train it with "
            f"{describe_scale(wanted)}. Devices and nodes are not part of a stored model's identity, so it is "
            f"reused as it is. To train a separate one, change a setting that is, e.g. "
            f"{node}.overrides=[data.batch_size=...] or [trainer.accumulate_grad_batches=...].")


def artifact_meta(run_cfg: DictConfig, artifact: ArtifactKind, run_dir: Path, metrics: dict[str, Any],
                  hparams: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """``meta.json`` content of a trained model's artefact (its validation/test metrics are checked)."""
    return {"experiment": run_cfg.task_name, "run_dir": str(run_dir),
            "metrics": {k: float(v) for k, v in metrics.items() if k.startswith(("val/", "test/"))},
            "identity": stage1_identity(run_cfg), "training": training,
            **{k: hparams[k] for k in artifact.meta_keys}}
