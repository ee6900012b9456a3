"""Stage-1 hand-off: find, train (once) or load the frozen stage-1 model a prior needs (any member of the
stage-1 family, :mod:`latentgen.models.stage1_base`).

A prior's config has a ``stage1`` node::

    stage1:
      experiment: vqvae_mnist   # the stage-1 experiment to compose (conf/experiment/...)
      overrides: []             # extra overrides for it, e.g. [model.num_codes=256]
      ckpt_path: null           # or an explicit stage-1 checkpoint (skips the lookup)
      auto_train: true          # train stage 1 now if no matching artefact exists
      debug: inherit            # stage 1 uses this run's debug preset (fdr, limit, ...)

Without ``ckpt_path`` the stage-1 config is composed and hashed (model, data identity, training
budget, seed; see :mod:`latentgen.stages.identity`); the artefact store under ``paths.artifact_dir``
holds one checkpoint per hash. A missing one is trained in a child process
(:mod:`latentgen.stages.child_train`), never in the process that asked for it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.models.stage1_base import Stage1Module, build_stage1, stage1_class_name
from latentgen.stages.artifacts import (
    TRAINING_FIXES,
    ArtifactCheckError,
    ArtifactStore,
    sha256_file,
)
from latentgen.stages.child_train import PATH_KEYS, experiment_name, train_in_child
from latentgen.stages.finished_run import stage_run
from latentgen.stages.identity import STAGE1, ArtifactKind, artifact_key, other_scale_warning
from latentgen.utils.checkpoint_io import load_checkpoint
from latentgen.utils.finite import nonfinite_names, shorten
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.resolvers import CONF_DIR, experiment_in_slot

log = RankedLogger(__name__, rank_zero_only=False)

KIND = STAGE1.kind


@dataclass
class Stage1:
    """A loaded, frozen stage-1 model and where it came from."""

    model: Stage1Module
    ckpt_path: Path
    sha256: str
    config_hash: str | None = None
    config: DictConfig | None = None  # the composed stage-1 config (its data feeds the latent cache)

    def describe(self) -> dict[str, Any]:
        """Provenance stored in a prior's checkpoint (and the data it was trained on)."""
        data = None
        if self.config is not None:
            d = OmegaConf.to_container(self.config.data, resolve=True)
            # "target", not "_target_": Hydra would instantiate it when building the prior
            data = {"target": d["_target_"], "val_size": d.get("val_size"), "split_seed": d.get("split_seed")}
        return {"ckpt_path": str(self.ckpt_path), "sha256": self.sha256, "config_hash": self.config_hash,
                "class": stage1_class_name(self.model),
                "experiment": self.config.get("task_name") if self.config is not None else None, "data": data}


def _parent_choice(group: str) -> str | None:
    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # not inside a Hydra run
        return None


def stage1_overrides(spec: DictConfig) -> list[str]:
    """Overrides that compose the stage-1 config a prior asks for."""
    if not spec.get("experiment"):
        raise ValueError(
            "stage1.experiment is not set: name the stage-1 experiment whose data and model the prior "
            "builds on (e.g. stage1.experiment=vqvae_mnist); stage1.ckpt_path may then pick the weights"
        )
    overrides = [f"+experiment={spec.experiment}", *list(spec.get("overrides") or [])]
    debug = spec.get("debug", "inherit")
    if debug == "inherit":
        debug = _parent_choice("debug")
    if debug:
        overrides.append(f"debug={debug}")
    logger = _parent_choice("logger")
    if logger:
        overrides.append(f"logger={logger}")
    return overrides


def compose_experiment(overrides: list[str], paths: DictConfig) -> DictConfig:
    """Compose ``train.yaml`` with ``overrides`` (``+experiment=...`` and extras) and the given paths."""
    overrides = experiment_in_slot(overrides)
    if GlobalHydra.instance().is_initialized():
        run_cfg = compose(config_name="train.yaml", overrides=overrides)
    else:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            run_cfg = compose(config_name="train.yaml", overrides=overrides)
    with open_dict(run_cfg):
        for key in PATH_KEYS:
            run_cfg.paths[key] = paths[key]
    return run_cfg


def compose_stage1(cfg: DictConfig) -> DictConfig:
    """Compose the stage-1 experiment with this run's paths."""
    return compose_experiment(stage1_overrides(cfg.stage1), cfg.paths)


def load_stage1(ckpt_path: str | Path, config_hash: str | None = None) -> Stage1:
    """Load a stage-1 checkpoint (of the class it records) strictly, frozen and in eval mode."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"stage-1 checkpoint {path} does not exist: fix stage1.ckpt_path, or set it to null to "
            "resolve stage 1 from stage1.experiment"
        )
    ckpt = load_checkpoint(path, purpose="load stage 1")
    hparams = ckpt.get("hyper_parameters")
    if not hparams or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a latentgen stage-1 checkpoint (no hyper_parameters/state_dict)")
    bad = nonfinite_names(ckpt["state_dict"])
    if bad:
        raise ArtifactCheckError(
            f"stage-1 checkpoint {path} has non-finite weights ({shorten(bad)}): its latents would be "
            f"NaN/inf. Use another checkpoint, or retrain stage 1 ({TRAINING_FIXES})."
        )
    try:
        model = build_stage1(hparams, ckpt.get("latentgen_class"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"stage-1 checkpoint {path} does not match the {model.family_label} its own hyperparameters describe (written "
            f"by another latentgen version?). Retrain it, or delete {path.parent} if it is a stored artefact.\n{e}"
        ) from e
    model.eval().requires_grad_(False)
    return Stage1(model=model, ckpt_path=path, sha256=sha256_file(path), config_hash=config_hash)


def store_instructions(overrides: list[str], artifact_dir: str | Path, fast_dev_run: bool) -> str:
    """The commands that put the model ``overrides`` describe into the store at ``artifact_dir``."""
    args = " ".join(shlex.quote(o) for o in overrides)
    store = shlex.quote(str(Path(artifact_dir).resolve()))
    text = f"Train and store it in one step with:\n  latentgen-artifacts train {args} paths.artifact_dir={store}\n"
    if not fast_dev_run:  # a fast_dev_run run saves no checkpoint that could be registered
        text += (f"or train it as a usual run with:\n  python -m latentgen.train {args}\n"
                 f"and then store that run (RUN_DIR: the run dir it prints) with:\n"
                 f"  latentgen-artifacts register RUN_DIR --artifact-dir {store}\n")
    return text


def recorded_overrides(run_cfg: DictConfig) -> list[str]:
    """The overrides ``run_cfg`` was composed with, when it holds Hydra's node (``compose_config``)."""
    task = OmegaConf.select(run_cfg, "hydra.overrides.task")
    if task is None:
        raise ValueError(f"cannot train {run_cfg.get('task_name')} for the store: pass the overrides it was "
                         "composed with (its config records none)")
    return list(task)


def find_or_train(run_cfg: DictConfig, artifact_dir: str | Path, artifact: ArtifactKind, auto_train: bool,
                  missing: Callable[[str, Path], str], overrides: Sequence[str] | None = None) -> tuple[Path, str]:
    """Checkpoint of the stored artefact matching ``run_cfg`` (hashed like stage 1), and its key.

    Reuses a complete, checked artefact (without a lock: the store may be read-only); else, with
    ``auto_train``, trains it now under the artefact lock, in a child process
    (``python -m latentgen.train <overrides>``, ``overrides`` being what ``run_cfg`` was composed from),
    and stores it; else raises a RuntimeError with ``missing(key, folder)``, which should name the
    commands to run.
    """
    key = artifact_key(run_cfg)
    store = ArtifactStore(artifact_dir)
    name = experiment_name(overrides or [], run_cfg.task_name)
    what = f"{artifact.name} {name} [{key}]"
    if not auto_train:
        meta = store.meta(artifact.kind, key)
        if meta is None:
            raise RuntimeError(missing(key, store.root / artifact.kind))
        folder, built = store.path(artifact.kind, key), False
    else:
        def train(staging: Path) -> dict[str, Any]:
            run_dir = ArtifactStore.build_run_dir(staging)
            log.info(f"Training {artifact.name} ({name}) now, in a child process; run dir {run_dir}")
            child = list(overrides) if overrides is not None else recorded_overrides(run_cfg)
            train_in_child(child, run_cfg.paths, run_dir, artifact, name)
            return stage_run(run_dir, artifact, staging, expected_key=key)

        folder, built = store.fetch_or_build(artifact.kind, key, what, train)
        meta = store.meta(artifact.kind, key, verify=False)
    path = folder / "model.ckpt"
    if built:
        log.info(f"{artifact.name[:1].upper()}{artifact.name[1:]} trained and stored as artefact {key}: {path}")
    else:
        log.info(f"Reusing {artifact.name.replace(' ', '-')} artefact {key} ({name}): {path}")
        warning = other_scale_warning(meta or {}, run_cfg, artifact)
        if warning:
            log.warning(warning)
    return path, key


def check_stage1_fits(cfg: DictConfig, cls: type, source: str) -> None:
    """A clear error when ``cls`` (the stage 1 at ``source``) is no stage-1 model, or has no tokens for a
    token prior; raised before anything is trained or encoded."""
    if not (isinstance(cls, type) and issubclass(cls, Stage1Module)):
        raise ValueError(f"{source} is a {getattr(cls, '__name__', cls)}, not a stage-1 model: set "
                         "stage1.experiment to a stage-1 experiment (vqvae_<data>, vqgan_<data>, fsq_<data> or "
                         "vae_<data>)")
    if OmegaConf.select(cfg, "data.field") == "tokens" and not cls.discrete:
        cls.require_discrete(f"the prior {cfg.get('task_name')} (models {cfg.model.get('_target_')}) "
                                      f"on stage 1 {source}")


def resolve_stage1(cfg: DictConfig) -> Stage1:
    """The frozen stage 1 for the prior described by ``cfg`` (training it first if needed)."""
    spec = cfg.stage1
    overrides = stage1_overrides(spec)
    s1cfg = compose_experiment(overrides, cfg.paths)
    if spec.get("ckpt_path"):
        log.info(f"Using the stage-1 checkpoint given in stage1.ckpt_path: {spec.ckpt_path}")
        stage1 = load_stage1(spec.ckpt_path)
        check_stage1_fits(cfg, type(stage1.model), f"stage1.ckpt_path={spec.ckpt_path}")
        stage1.config = s1cfg
        return stage1
    check_stage1_fits(cfg, hydra.utils.get_class(s1cfg.model._target_), f"stage1.experiment={spec.experiment}")

    def missing(key: str, folder: Path) -> str:
        how = store_instructions(overrides, cfg.paths.artifact_dir, bool(s1cfg.trainer.get("fast_dev_run")))
        return (f"No trained stage 1 matches this prior's stage1 config (hash {key}) under {folder}, and "
                f"stage1.auto_train=false. {how}"
                "Or point stage1.ckpt_path at an existing stage-1 checkpoint.")

    path, key = find_or_train(s1cfg, cfg.paths.artifact_dir, STAGE1, spec.get("auto_train", True), missing, overrides)
    stage1 = load_stage1(path, config_hash=key)
    stage1.config = s1cfg
    return stage1
