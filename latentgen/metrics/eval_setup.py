"""What ``latentgen.evaluate`` and ``latentgen.compare`` share: the device, the sampler options asked
for, and the evaluator with its LeNet classifier (found in the artefact store, or trained in a child
process, before anything is sampled)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from latentgen.metrics.classifier_lookup import ResolvedClassifier, resolve_classifier
from latentgen.metrics.eval_data import DataSource, RealImages
from latentgen.metrics.evaluation import Evaluator, inception_weights


def pick_device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def sampling_options(cfg: DictConfig) -> dict[str, Any]:
    return {k: v for k, v in OmegaConf.to_container(cfg.sampling).items() if v is not None}


def make_evaluator(cfg: DictConfig, source: DataSource, device: str) -> tuple[Evaluator, ResolvedClassifier]:
    """The classifier for ``source``'s dataset and an evaluator against its first N test images."""
    classifier = resolve_classifier(cfg.classifier, cfg.paths, source.dataset, device)
    inception = inception_weights(cfg.inception.enabled, cfg.inception.weights)
    evaluator = Evaluator(RealImages(source, cfg.paths.data_dir), classifier.extractor, int(cfg.num_samples),
                          cfg.metrics.batch_size, cfg.metrics.kid_subsets, inception, cfg.show_progress)
    return evaluator, classifier
