"""A finished training run dir as a model for the artefact store: its config, the checkpoint and the
metrics to store, copied into a staging folder the store then checks and publishes.

Both ways into the store end here: ``latentgen-artifacts register RUN_DIR`` (any finished run) and the
training a run (or ``latentgen-artifacts train``, or a ``latentgen-launch`` stage-1 job) starts for a
missing model, whose run dir holds what :class:`~latentgen.stages.run_export.StoreExport` exported.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.stages.identity import ArtifactKind, artifact_key, artifact_meta, training_scale
from latentgen.stages.run_export import read_result
from latentgen.utils.checkpoint_io import load_checkpoint


def run_config(run_dir: Path) -> DictConfig:
    """The training config a run dir was made with (``.hydra/config.yaml``), resolvable here."""
    cfg_file = run_dir / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a latentgen run dir (no .hydra/config.yaml): pass the run dir "
                                "that `python -m latentgen.train` printed")
    cfg = OmegaConf.load(cfg_file)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.work_dir = os.getcwd()
    return cfg


def finished_checkpoint(run_dir: Path, cfg: DictConfig) -> tuple[Path, dict[str, float]]:
    """The checkpoint a finished run (without an export) would have stored, its best, else
    ``last.ckpt``, and that best metric."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no checkpoints/last.ckpt, so there is nothing to register (a debug=fdr run saves no "
            "checkpoint): train and store it in one step with `latentgen-artifacts train <its overrides>`"
        )
    ckpt = load_checkpoint(last, purpose="be registered as an artefact", mmap=True)
    step, epoch = int(ckpt["global_step"]), int(ckpt["epoch"])
    max_steps, max_epochs = int(cfg.trainer.get("max_steps") or -1), cfg.trainer.get("max_epochs")
    unlimited = max_steps <= 0 and (max_epochs is None or max_epochs < 0)
    if not (unlimited or 0 < max_steps <= step or (max_epochs is not None and 0 < max_epochs <= epoch + 1)):
        raise ValueError(
            f"{run_dir} has not finished: its last checkpoint is at step {step}, epoch {epoch}, but the run trains "
            f"for trainer.max_steps={max_steps} / trainer.max_epochs={max_epochs}. Let it finish (rerun its command "
            f"with hydra.run.dir={run_dir} ckpt_path=last), then register it"
        )
    state = next((v for k, v in (ckpt.get("callbacks") or {}).items() if k.startswith("ModelCheckpoint")), {})
    best = run_dir / "checkpoints" / Path(state.get("best_model_path") or last).name
    score, monitor = state.get("best_model_score"), state.get("monitor")
    metrics = {monitor: float(score)} if monitor and score is not None else {}
    return (best if best.is_file() else last), metrics


def run_outcome(run_dir: Path, cfg: DictConfig) -> tuple[Path, dict[str, float], dict[str, Any]]:
    """Checkpoint, final metrics and training scale of a finished run: what it exported for the store,
    else its checkpoints (see :func:`finished_checkpoint`)."""
    exported = read_result(run_dir)
    if exported is not None:
        return exported.checkpoint, exported.metrics, training_scale(cfg, exported.devices, exported.num_nodes)
    ckpt, metrics = finished_checkpoint(run_dir, cfg)
    return ckpt, metrics, training_scale(cfg)


def stage_run(run_dir: Path, artifact: ArtifactKind, staging: Path, expected_key: str | None = None) -> dict[str, Any]:
    """Copy a finished run's model into ``staging``; returns its meta (the store checks it on publish).

    ``expected_key``: the key the model is stored under, which the run's own config must hash to.
    """
    cfg = run_config(run_dir)
    if expected_key is not None and artifact_key(cfg) != expected_key:
        raise ValueError(
            f"the run {run_dir} trained {artifact.name} {artifact_key(cfg)}, not the {expected_key} it was started "
            "for: its config differs in a setting that is part of the stored model's identity. Nothing was stored."
        )
    ckpt, metrics, training = run_outcome(run_dir, cfg)
    shutil.copyfile(ckpt, staging / "model.ckpt")
    (staging / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    hparams = load_checkpoint(staging / "model.ckpt", purpose="store it as an artefact", mmap=True)
    meta = artifact_meta(cfg, artifact, run_dir, metrics, dict(hparams.get("hyper_parameters") or {}), training)
    return {**meta, "checkpoint_from": str(ckpt)}
