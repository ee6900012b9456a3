"""Find, or train once, the LeNet classifier behind FID/KID-LeNet, the way a prior finds stage 1.

An evaluation config has a ``classifier`` node::

    classifier:
      experiment: null     # null: classifier_<dataset> (classifier_mnist, classifier_fashion_mnist)
      overrides: []        # extra overrides for it, e.g. [trainer.max_epochs=5]
      debug: null          # a debug preset for it (limit, fdr): a tiny classifier for smoke tests
      ckpt_path: null      # or an explicit classifier checkpoint (skips the lookup)
      auto_train: true     # train it now (under the artefact lock) if no stored one matches

Without ``ckpt_path`` the classifier experiment is composed and hashed like stage 1 (model, data
identity, training budget, seed) and looked up in ``paths.artifact_dir/classifier/<hash>``; a missing
one is trained in a child process (``python -m latentgen.train +experiment=classifier_...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from latentgen.metrics.features import LeNetFeatureExtractor
from latentgen.stages.artifacts import sha256_file
from latentgen.stages.identity import ArtifactKind
from latentgen.stages.stage1 import compose_experiment, find_or_train, store_instructions
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.resolvers import CONF_DIR

log = RankedLogger(__name__)

CLASSIFIER = ArtifactKind("classifier", "classifier", "classifier", ("num_classes",))
KIND = CLASSIFIER.kind


@dataclass
class ResolvedClassifier:
    """The frozen feature extractor and where its checkpoint came from."""

    extractor: LeNetFeatureExtractor
    ckpt_path: Path
    sha256: str
    experiment: str | None = None
    config_hash: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"ckpt_path": str(self.ckpt_path), "sha256": self.sha256, "experiment": self.experiment,
                "config_hash": self.config_hash}


def default_experiment(dataset: str) -> str:
    """``classifier_<dataset>`` (``mnist`` -> ``classifier_mnist``), which must exist in conf/experiment."""
    name = f"classifier_{dataset.replace('-', '_')}"
    if not (CONF_DIR / "experiment" / f"{name}.yaml").is_file():
        raise ValueError(
            f"no classifier experiment for dataset {dataset!r} (conf/experiment/{name}.yaml does not exist): "
            "set classifier.experiment to a classifier experiment for this data, or classifier.ckpt_path "
            "to a trained classifier checkpoint"
        )
    return name


def classifier_overrides(spec: DictConfig, experiment: str) -> list[str]:
    """Overrides that compose the classifier's training run."""
    overrides = [f"+experiment={experiment}", *list(spec.get("overrides") or [])]
    if spec.get("debug"):
        overrides.append(f"debug={spec.debug}")
    if spec.get("logger"):
        overrides.append(f"logger={spec.logger}")
    return overrides


def resolve_classifier(spec: DictConfig, paths: DictConfig, dataset: str,
                       device: str | torch.device = "cpu") -> ResolvedClassifier:
    """The classifier for images of ``dataset``: ``spec.ckpt_path``, a stored artefact, or trained now."""
    if spec.get("ckpt_path"):
        path = Path(spec.ckpt_path).expanduser()
        log.info(f"Using the classifier checkpoint given in classifier.ckpt_path: {path}")
        return ResolvedClassifier(LeNetFeatureExtractor(path, map_location=device), path, sha256_file(path))

    experiment = spec.get("experiment") or default_experiment(dataset)
    overrides = classifier_overrides(spec, experiment)
    run_cfg = compose_experiment(overrides, paths)
    if run_cfg.get("stage") != "classifier":
        raise ValueError(f"classifier.experiment={experiment} trains a {run_cfg.get('stage')!r} stage, not a "
                         "classifier: pick a classifier_* experiment")

    def missing(key: str, folder: Path) -> str:
        shown = [o for o in overrides if not o.startswith("logger=")]
        how = store_instructions(shown, paths.artifact_dir, bool(run_cfg.trainer.get("fast_dev_run")))
        return (f"No trained classifier matches classifier.experiment={experiment} (hash {key}) under {folder}, "
                f"and classifier.auto_train=false. {how}Or pass classifier.ckpt_path=<a run dir>/checkpoints/"
                "last.ckpt, or rerun with classifier.auto_train=true to train and store it now (later "
                "evaluations reuse it).")

    path, key = find_or_train(run_cfg, paths.artifact_dir, CLASSIFIER, bool(spec.get("auto_train", True)), missing,
                              overrides)
    extractor = LeNetFeatureExtractor(path, map_location=device)
    return ResolvedClassifier(extractor, path, sha256_file(path), experiment, key)
