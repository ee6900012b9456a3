"""Frozen LeNet features for FID/KID-LeNet: a torchmetrics-compatible custom ``feature`` module."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from latentgen.models.classifier import Classifier
from latentgen.nets.lenet import LeNet
from latentgen.utils.checkpoint_io import load_checkpoint

TRAIN_HINT = "train one with `python -m latentgen.train +experiment=classifier_mnist`"


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """``Classifier.load_from_checkpoint`` with errors that say what is wrong and how to fix it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint {path} does not exist: {TRAIN_HINT} "
                                "and pass <run dir>/checkpoints/last.ckpt")
    load_checkpoint(path, purpose="load the LeNet classifier")  # refuses unsafe or damaged files
    try:
        model = Classifier.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    except (KeyError, RuntimeError, TypeError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path} is not a latentgen Classifier checkpoint ({type(err).__name__}: "
                         f"{err}); {TRAIN_HINT}") from err
    return model


class LeNetFeatureExtractor(nn.Module):
    """Penultimate-layer features of a trained LeNet classifier, frozen and always in eval mode.

    ``source`` is a checkpoint path (loaded with ``Classifier.load_from_checkpoint``), a
    ``Classifier`` or a bare ``LeNet``. As a torchmetrics ``feature`` module
    (``FrechetInceptionDistance(feature=extractor, normalize=True)``) it takes float images in
    [0, 1] ``[B, C, H, W]`` (uint8 in [0, 255] is accepted too) and returns float features
    ``[B, num_features]``; ``num_features`` tells torchmetrics the dimension without a dummy pass.
    ``logits``/``probs`` give the classifier's outputs for the classifier score.
    """

    feature_name = "LeNet"

    def __init__(self, source: str | Path | Classifier | LeNet, map_location: str | torch.device = "cpu") -> None:
        super().__init__()
        if isinstance(source, (str, Path)):
            source = load_classifier(source, map_location)
        if isinstance(source, Classifier):
            source = source.net
        if not isinstance(source, LeNet):
            raise TypeError(f"LeNetFeatureExtractor needs a checkpoint path, Classifier or LeNet, "
                            f"got {type(source).__name__}")
        self.net = source
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.num_features: int = int(source.feature_dim)
        self.num_classes: int = int(source.num_classes)
        self.in_channels: int = int(source.in_channels)
        self.image_size: int = int(source.image_size)

    def train(self, mode: bool = True) -> LeNetFeatureExtractor:
        """Stay in eval mode (BatchNorm statistics and dropout frozen) whatever the caller asks."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def prepare(self, imgs: torch.Tensor) -> torch.Tensor:
        """Validate and convert a batch to float32 [0, 1] on the extractor's device."""
        if imgs.dim() == 3:
            imgs = imgs.unsqueeze(1)
        expected = (self.in_channels, self.image_size, self.image_size)
        if imgs.dim() != 4 or tuple(imgs.shape[1:]) != expected:
            raise ValueError(
                f"{self.feature_name} features need images [B, {', '.join(map(str, expected))}] like the "
                f"classifier's training data, got {tuple(imgs.shape)}: evaluate with a classifier "
                "trained on the same dataset"
            )
        if imgs.dtype == torch.uint8:
            imgs = imgs.float() / 255.0
        elif not imgs.is_floating_point():
            raise TypeError(f"images must be float in [0, 1] or uint8, got {imgs.dtype}")
        imgs = imgs.to(self.device, torch.float32)
        if imgs.numel():
            if not torch.isfinite(imgs).all():
                raise ValueError("images contain NaN or inf: check the sampler output")
            lo, hi = imgs.aminmax()
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(
                    f"images must lie in [0, 1], got values in [{lo.item():.3f}, {hi.item():.3f}]: "
                    "map [-1, 1] outputs with (x + 1) / 2 and clamp(0, 1)"
                )
        return imgs.clamp(0.0, 1.0)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.net.features(self.prepare(imgs))

    @torch.no_grad()
    def logits(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(imgs))

    @torch.no_grad()
    def probs(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.logits(imgs).double().softmax(dim=-1)
