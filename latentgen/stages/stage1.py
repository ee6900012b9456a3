"""Stage-1 hand-off: find, train (once) or load the frozen VQ-VAE a prior needs.

A prior's config has a ``stage1`` node::

    stage1:
      experiment: vqvae_mnist   # the stage-1 experiment to compose (conf/experiment/...)
      overrides: []             # extra overrides for it, e.g. [model.num_codes=256]
      ckpt_path: null           # or an explicit stage-1 checkpoint (skips the lookup)
      auto_train: true          # train stage 1 now if no matching artefact exists
      debug: inherit            # stage 1 uses this run's debug preset (fdr, limit, ...)

Without ``ckpt_path`` the stage-1 config is composed and hashed (model, data identity, training
budget, seed); the artefact store under ``paths.artifact_dir`` holds one checkpoint per hash.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen import __version__
from latentgen.models.vqvae import VQVAE
from latentgen.stages.artifacts import ArtifactStore, hash_json, sha256_file
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.resolvers import CONF_DIR

log = RankedLogger(__name__, rank_zero_only=False)

KIND = "stage1"
# Keys that say where or how fast something runs, not what is trained.
_VOLATILE_DATA = {"data_dir", "num_workers", "pin_memory", "persistent_workers", "download", "eval_batch_size"}
_TRAINER_IDENTITY = {
    "max_epochs", "max_steps", "min_epochs", "precision", "fast_dev_run", "limit_train_batches",
    "overfit_batches", "gradient_clip_val", "accumulate_grad_batches",
}


@dataclass
class Stage1:
    """A loaded, frozen stage-1 model and where it came from."""

    model: VQVAE
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
                "experiment": self.config.get("task_name") if self.config is not None else None, "data": data}


def stage1_identity(cfg: DictConfig) -> dict[str, Any]:
    """The parts of a resolved stage-1 config that determine the trained weights."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k not in _VOLATILE_DATA}
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("num_log_images", None)
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k in _TRAINER_IDENTITY}
    return {"data": data, "model": model, "trainer": trainer, "seed": cfg.get("seed"), "version": __version__}


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
    if GlobalHydra.instance().is_initialized():
        run_cfg = compose(config_name="train.yaml", overrides=overrides)
    else:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            run_cfg = compose(config_name="train.yaml", overrides=overrides)
    with open_dict(run_cfg):
        for key in ("data_dir", "log_dir", "artifact_dir", "root_dir"):
            run_cfg.paths[key] = paths[key]
    return run_cfg


def compose_stage1(cfg: DictConfig) -> DictConfig:
    """Compose the stage-1 experiment with this run's paths."""
    return compose_experiment(stage1_overrides(cfg.stage1), cfg.paths)


def load_stage1(ckpt_path: str | Path, config_hash: str | None = None) -> Stage1:
    """Load a VQ-VAE checkpoint strictly, frozen and in eval mode."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"stage-1 checkpoint {path} does not exist: fix stage1.ckpt_path, or set it to null to "
            "resolve stage 1 from stage1.experiment"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    hparams = ckpt.get("hyper_parameters")
    if not hparams or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a latentgen VQ-VAE checkpoint (no hyper_parameters/state_dict)")
    try:
        model = VQVAE(**hparams)
    except TypeError as e:
        raise ValueError(f"{path} holds hyperparameters VQVAE does not accept ({e}): is it a stage-1 checkpoint?") from e
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"stage-1 checkpoint {path} does not match the VQ-VAE its own hyperparameters describe (written "
            f"by another latentgen version?). Retrain it, or delete {path.parent} if it is a stored artefact.\n{e}"
        ) from e
    model.eval().requires_grad_(False)
    return Stage1(model=model, ckpt_path=path, sha256=sha256_file(path), config_hash=config_hash)


def train_artifact(run_cfg: DictConfig, store: ArtifactStore, kind: str, key: str, name: str,
                   extra_meta: Callable[[Any], dict[str, Any]] | None = None) -> Path:
    """Train the run ``run_cfg`` describes and publish its checkpoint as artefact ``kind/key``."""
    from latentgen.train import train  # local import: train imports the stage builder

    staging = store.staging_dir(kind, key)
    run_dir = staging.parent / f"{key}.runs" / staging.name.split("tmp-")[-1]
    with open_dict(run_cfg):
        run_cfg.paths.output_dir = str(run_dir)
        run_cfg.extras.print_config = False
    log.info(f"Training {name} ({run_cfg.task_name}) now; run dir {run_dir}")
    metrics, objects = train(run_cfg)
    trainer, model = objects["trainer"], objects["model"]
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and not trainer.fast_dev_run:
        shutil.copyfile(best, staging / "model.ckpt")
    else:
        trainer.save_checkpoint(staging / "model.ckpt", weights_only=True)
    (staging / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg, resolve=True))
    meta = {"experiment": run_cfg.task_name, "run_dir": str(run_dir),
            "metrics": {k: float(v) for k, v in metrics.items() if k.startswith(("val/", "test/"))},
            "identity": stage1_identity(run_cfg), **(extra_meta(model) if extra_meta else {})}
    return store.publish(kind, key, staging, meta) / "model.ckpt"


def find_or_train(run_cfg: DictConfig, artifact_dir: str | Path, kind: str, name: str, auto_train: bool,
                  missing: Callable[[str, Path], str],
                  extra_meta: Callable[[Any], dict[str, Any]] | None = None) -> tuple[Path, str]:
    """Checkpoint of the stored artefact matching ``run_cfg`` (hashed like stage 1), and its key.

    Under the artefact lock: reuse a complete artefact, else train it now (``auto_train``) or raise
    a RuntimeError with ``missing(key, folder)``, which should name the command to run.
    """
    key = hash_json(stage1_identity(run_cfg))[:16]
    store = ArtifactStore(artifact_dir)
    with store.lock(kind, key, f"{name} {run_cfg.task_name} [{key}]"):
        if store.meta(kind, key) is not None:
            path = store.path(kind, key) / "model.ckpt"
            log.info(f"Reusing {name.replace(' ', '-')} artefact {key} ({run_cfg.task_name}): {path}")
        elif not auto_train:
            raise RuntimeError(missing(key, store.root / kind))
        else:
            path = train_artifact(run_cfg, store, kind, key, name, extra_meta)
            log.info(f"{name[:1].upper()}{name[1:]} trained and stored as artefact {key}: {path}")
    return path, key


def resolve_stage1(cfg: DictConfig) -> Stage1:
    """The frozen stage 1 for the prior described by ``cfg`` (training it first if needed)."""
    spec = cfg.stage1
    s1cfg = compose_stage1(cfg)
    if spec.get("ckpt_path"):
        log.info(f"Using the stage-1 checkpoint given in stage1.ckpt_path: {spec.ckpt_path}")
        stage1 = load_stage1(spec.ckpt_path)
        stage1.config = s1cfg
        return stage1

    def missing(key: str, folder: Path) -> str:
        cmd = "python -m latentgen.train " + " ".join(stage1_overrides(spec))
        return (f"No trained stage 1 matches this prior's stage1 config (hash {key}) under {folder}, and "
                f"stage1.auto_train=false. Train it first with:\n  {cmd}\n"
                "or point stage1.ckpt_path at an existing VQ-VAE checkpoint.")

    path, key = find_or_train(s1cfg, cfg.paths.artifact_dir, KIND, "stage 1", spec.get("auto_train", True),
                              missing, extra_meta=lambda model: {"num_codes": model.num_codes})
    stage1 = load_stage1(path, config_hash=key)
    stage1.config = s1cfg
    return stage1
