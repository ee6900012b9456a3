"""Find, or train once, the noise-conditional latent classifier that guides a latent DDPM, the way a
prior finds its stage 1.

A sampling or evaluation config has a ``guidance_classifier`` node::

    guidance_classifier:
      experiment: null     # null: latent_classifier_<dataset of the LDM> (latent_classifier_mnist, ...)
      overrides: []        # extra overrides for it, e.g. [trainer.max_epochs=5]
      debug: null          # a debug preset for it (limit, fdr): a tiny classifier for smoke tests
      logger: csv          # logger of its training run when it is trained here
      ckpt_path: null      # or an explicit latent-classifier checkpoint (skips the lookup)
      auto_train: true     # train it now (under the artefact lock) if no stored one matches

Without ``ckpt_path`` the classifier experiment is composed on the LDM's own stage 1:
``stage1.ckpt_path`` is pinned to the LDM's recorded stage-1 checkpoint and ``model.stage1_sha256`` to its
SHA-256 (part of the store key, so each stage 1 gets its own classifier), and the latents and noise
schedule are the LDM's. It is hashed like stage 1 and looked up in
``paths.artifact_dir/latent_classifier/<hash>``; a missing one is trained in a child process. Either way
the classifier is checked against the LDM (:meth:`LatentClassifier.check_matches`) before it is returned.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from latentgen.metrics.classifier_lookup import classifier_overrides
from latentgen.models.latent_classifier import LatentClassifier
from latentgen.stages.artifacts import ArtifactStore, sha256_file
from latentgen.stages.checkpoints import load_model
from latentgen.stages.child_train import experiment_name
from latentgen.stages.commands import hydra_value, shell_command
from latentgen.stages.identity import STAGE1, ArtifactKind
from latentgen.stages.stage1 import compose_experiment, find_or_train
from latentgen.utils.checkpoint_io import CheckpointError
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.resolvers import CONF_DIR

log = RankedLogger(__name__)

LATENT_CLASSIFIER = ArtifactKind("latent_classifier", "latent classifier", "guidance_classifier", ("num_classes",))
STAGE = "latent_classifier"


def load_guidance_classifier(path: str | Path, device: str | torch.device = "cpu") -> LatentClassifier:
    """The latent classifier stored in ``path`` (read as data), frozen, in eval mode on ``device``."""
    path = Path(path).expanduser()
    model = load_model(path, map_location=device, purpose="guide a latent DDPM")
    if not isinstance(model, LatentClassifier):
        raise CheckpointError(path, f"holds a {type(model).__name__}, not a latent classifier",
                              "pass the checkpoint of a latent_classifier_* run as guidance_classifier.ckpt_path "
                              "(or leave it null to find or train one for the LDM)")
    model.ckpt_path = path
    return model.to(device).eval().requires_grad_(False)


def default_experiment(ldm) -> str:
    """``latent_classifier_<dataset>`` of the data the LDM's stage 1 encodes; it must exist in conf/experiment."""
    target = ((ldm.hparams.get("stage1_info") or {}).get("data") or {}).get("target")
    if not target:
        raise ValueError("the LDM does not record its dataset (stage1_info.data): set guidance_classifier.experiment "
                         "(e.g. latent_classifier_mnist) or guidance_classifier.ckpt_path")
    dataset = hydra.utils.get_class(target).dataset_name
    name = f"latent_classifier_{dataset.replace('-', '_')}"
    if not (CONF_DIR / "experiment" / f"{name}.yaml").is_file():
        raise ValueError(f"no latent-classifier experiment for dataset {dataset!r} (conf/experiment/{name}.yaml does "
                         "not exist): set guidance_classifier.experiment, or guidance_classifier.ckpt_path to a "
                         "trained latent classifier")
    return name


def stage1_checkpoint(ldm, artifact_dir: str | Path) -> tuple[Path, str]:
    """The LDM's stage-1 checkpoint file and its SHA-256: where it was recorded, or its stored artefact."""
    info = ldm.hparams.get("stage1_info") or {}
    sha = info.get("sha256")
    if not sha:
        raise ValueError("the LDM does not record its stage-1 checkpoint (stage1_info.sha256), so no classifier can be "
                         "trained on it here: pass guidance_classifier.ckpt_path")
    candidates = [Path(info["ckpt_path"])] if info.get("ckpt_path") else []
    if info.get("config_hash"):
        candidates.append(ArtifactStore(artifact_dir).path(STAGE1.kind, info["config_hash"]) / "model.ckpt")
    for path in candidates:
        if path.is_file() and sha256_file(path) == sha:
            return path.resolve(), sha
    tried = ", ".join(str(p) for p in candidates) or "no path recorded"
    raise ValueError(f"the LDM's stage-1 checkpoint (SHA-256 {sha[:12]}) is not here ({tried}): point paths.artifact_dir "
                     "at the store it was trained with, add guidance_classifier.overrides=[stage1.ckpt_path=<that "
                     "checkpoint>], or pass guidance_classifier.ckpt_path")


def ldm_pins(ldm, artifact_dir: str | Path) -> list[str]:
    """Overrides that train the classifier on the LDM's stage 1, latents and noise schedule."""
    path, sha = stage1_checkpoint(ldm, artifact_dir)
    hp = ldm.hparams
    return [f"stage1.ckpt_path={hydra_value(path)}", f"model.stage1_sha256={hydra_value(sha)}",
            f"model.latent={hp['latent']}", f"model.num_train_timesteps={int(hp['num_train_timesteps'])}",
            f"model.beta_schedule={hp['beta_schedule']}"]


def compose_classifier_run(spec: DictConfig, paths: DictConfig, ldm) -> tuple[DictConfig, list[str]]:
    """The training config of the classifier ``spec`` asks for on the LDM's stage 1, and its overrides."""
    experiment = spec.get("experiment") or default_experiment(ldm)
    overrides = classifier_overrides(spec, experiment)
    overrides[1:1] = ldm_pins(ldm, paths.artifact_dir)  # the spec's own overrides still come last
    run_cfg = compose_experiment(overrides, paths)
    if run_cfg.get("stage") != STAGE:
        raise ValueError(f"guidance_classifier.experiment={experiment} trains a {run_cfg.get('stage')!r} stage, not a "
                         "latent classifier: pick a latent_classifier_* experiment")
    return run_cfg, overrides


def resolve_guidance_classifier(spec: DictConfig, paths: DictConfig, ldm,
                                device: str | torch.device = "cpu") -> LatentClassifier:
    """The latent classifier that guides ``ldm``: ``spec.ckpt_path``, a stored artefact, or trained now."""
    if spec.get("ckpt_path"):
        log.info(f"Using the latent classifier given in guidance_classifier.ckpt_path: {spec.ckpt_path}")
        classifier = load_guidance_classifier(spec.ckpt_path, device)
        classifier.check_matches(ldm)
        return classifier

    run_cfg, overrides = compose_classifier_run(spec, paths, ldm)
    experiment = experiment_name(overrides, run_cfg.task_name)

    def missing(key: str, folder: Path) -> str:
        shown = shell_command(["python", "-m", "latentgen.train", *overrides])
        return (f"No trained latent classifier matches guidance_classifier.experiment={experiment} on the LDM's stage 1 "
                f"(hash {key}) under {folder}, and guidance_classifier.auto_train=false. Rerun with "
                "guidance_classifier.auto_train=true to train and store it now (later runs reuse it), or train it "
                f"with\n  {shown}\nand pass guidance_classifier.ckpt_path=<its run dir>"
                "/checkpoints/last.ckpt.")

    path, _ = find_or_train(run_cfg, paths.artifact_dir, LATENT_CLASSIFIER, bool(spec.get("auto_train", True)),
                            missing, overrides)
    classifier = load_guidance_classifier(path, device)
    classifier.check_matches(ldm)
    return classifier
