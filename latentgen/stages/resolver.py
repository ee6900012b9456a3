"""A run's dependencies, resolved before the run seeds and builds anything.

``train()`` first calls :func:`resolve_dependencies` (a prior: its stage 1, found in the artefact store
or trained in a child process under the artefact lock, then the latent cache of its data), then seeds,
then builds its datamodule and model from the config and what was resolved
(:func:`latentgen.stages.builder.build_stage`). Whether stage 1 was trained in this run or reused
therefore changes nothing in the prior's initial weights or data order.

``latentgen-launch`` asks :func:`stage1_dependency` what a stage-2 experiment depends on, and submits
the training command of a missing one (:meth:`Dependency.command`) as its stage-1 job.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from latentgen.stages.artifacts import ArtifactStore
from latentgen.stages.child_train import PATH_KEYS, experiment_name, train_command
from latentgen.stages.identity import STAGE1, ArtifactKind, artifact_key
from latentgen.stages.latent_cache import build_latent_cache
from latentgen.stages.stage1 import Stage1, compose_experiment, resolve_stage1, stage1_overrides


@dataclass
class ResolvedArtifacts:
    """What a run builds on: a prior's frozen stage 1 and its latent cache (None for stage 1 itself)."""

    stage1: Stage1 | None = None
    cache_dir: Path | None = None


def resolve_dependencies(cfg: DictConfig) -> ResolvedArtifacts:
    """Stage 1 and the latent cache of the prior ``cfg`` describes, trained or built now if missing."""
    if not cfg.get("stage1"):
        return ResolvedArtifacts()
    stage1 = resolve_stage1(cfg)
    cache_cfg = cfg.get("latent_cache") or {}
    cache_dir = build_latent_cache(stage1, stage1.config.data, cfg.paths.artifact_dir,
                                   batch_size=cache_cfg.get("batch_size", 1000), max_items=cache_cfg.get("max_items"))
    return ResolvedArtifacts(stage1, cache_dir)


@dataclass(frozen=True)
class Dependency:
    """A stored model a run needs: the training run that makes it, and its key in the store."""

    artifact: ArtifactKind
    experiment: str  # the experiment of the training run
    overrides: tuple[str, ...]  # python -m latentgen.train <overrides> trains it
    paths: Mapping[str, Any]  # the folders of the run that needs it (data, logs, store)
    key: str
    stored: bool  # already in the store (complete and sound)
    run_cfg: DictConfig = field(compare=False, repr=False)  # the composed config of its training run

    def command(self, run_dir: Path | str, python: str = sys.executable) -> list[str]:
        """The command that trains it into ``run_dir``; ``latentgen-artifacts register RUN_DIR`` then stores it."""
        return train_command(self.overrides, self.paths, run_dir, python)


def stage1_dependency(spec: DictConfig, paths: DictConfig) -> Dependency | None:
    """The stage 1 a prior's ``stage1`` node ``spec`` asks for (None for an explicit ``ckpt_path``).

    Composed exactly as the prior composes it when it runs (debug preset and logger follow the Hydra
    config current here), so the key is the one the prior looks up.
    """
    if spec.get("ckpt_path"):
        return None
    overrides = stage1_overrides(spec)
    run_cfg = compose_experiment(overrides, paths)
    key = artifact_key(run_cfg)
    stored = ArtifactStore(paths.artifact_dir).inspect(STAGE1.kind, key)[0] is not None
    resolved_paths = {k: run_cfg.paths[k] for k in PATH_KEYS}
    return Dependency(STAGE1, experiment_name(overrides, run_cfg.task_name), tuple(overrides), resolved_paths, key, stored, run_cfg)
