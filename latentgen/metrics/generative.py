"""Sample-quality metrics computed offline with a LeNet classifier instead of Inception-v3.

* ``fid_kid``: FID-LeNet and KID-LeNet (torchmetrics FID/KID with ``LeNetFeatureExtractor``
  as the custom feature module; statistics in float64).
* ``classifier_score``: the Inception-Score analogue exp(E_x KL(p(y|x) || p(y))) from the
  classifier's softmax, plus class coverage and the entropy of the predicted-class histogram.
* ``inception_available``: whether real Inception FID could run offline (never downloads).

Scores are only comparable between runs that used the same classifier checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from latentgen.metrics.features import LeNetFeatureExtractor
from latentgen.utils.pylogger import RankedLogger

log = RankedLogger(__name__)

DISPLAY_NAMES = {
    "fid_lenet": "FID-LeNet",
    "kid_lenet_mean": "KID-LeNet (mean)",
    "kid_lenet_std": "KID-LeNet (std)",
    "classifier_score": "Classifier score (LeNet)",
    "classifier_score_std": "Classifier score (LeNet, std)",
    "class_coverage": "Class coverage (LeNet)",
    "class_entropy": "Predicted-class entropy (LeNet, nats)",
    "class_entropy_normalized": "Predicted-class entropy (LeNet, / log K)",
}

INCEPTION_WEIGHTS_ENV = "LATENTGEN_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name


def display_name(key: str) -> str:
    """Human-readable label of a metric key (``fid_lenet`` -> ``FID-LeNet``)."""
    return DISPLAY_NAMES.get(key, key)


def _check_images(x: Tensor, name: str, min_count: int = 1) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of images [N, C, H, W], got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"{name} must be images [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] < min_count:
        raise ValueError(f"{name} holds {x.shape[0]} images; at least {min_count} are needed")
    return x


class _Float64Features(nn.Module):
    """Casts the extractor's features to float64 so KID kernels and FID moments stay exact, and
    reuses the features of the previous batch when the same tensor comes again (FID then KID)."""

    def __init__(self, extractor: nn.Module, num_features: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = num_features
        self._last: tuple[Tensor, Tensor] | None = None

    def forward(self, imgs: Tensor) -> Tensor:
        if self._last is not None and self._last[0] is imgs:
            return self._last[1]
        features = self.extractor(imgs).double()
        self._last = (imgs, features)
        return features

    def clear(self) -> None:
        self._last = None


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def fid_kid(
    real: Tensor,
    fake: Tensor,
    extractor: nn.Module | str | Path,
    kid_subset_size: int | None = None,
    batch_size: int = 500,
    kid_subsets: int = 100,
    seed: int | None = 0,
) -> dict[str, float]:
    """FID and KID between ``real`` and ``fake`` images ([N, C, H, W] float in [0, 1]).

    ``extractor`` is a ``LeNetFeatureExtractor`` (or a classifier checkpoint path, or any module
    mapping images to [B, F] features). ``kid_subset_size`` defaults to min(1000, n_real, n_fake),
    so KID works with a few dozen samples; it averages ``kid_subsets`` random subsets (fewer are
    faster; a single one when both sets have exactly that size) and ``seed`` makes them
    reproducible without touching the global RNG.
    Returns ``fid_<name>``, ``kid_<name>_mean``, ``kid_<name>_std`` with ``<name>`` the
    extractor's ``feature_name`` lower-cased (``lenet``).
    """
    real, fake = _check_images(real, "real", 2), _check_images(fake, "fake", 2)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real images {tuple(real.shape[1:])} and fake images {tuple(fake.shape[1:])} "
                         "differ in shape: generate at the data's resolution and channels")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if kid_subsets < 1:
        raise ValueError(f"kid_subsets={kid_subsets}: must be >= 1 (100 is the usual choice)")
    if isinstance(extractor, (str, Path)):
        extractor = LeNetFeatureExtractor(extractor)
    name = str(getattr(extractor, "feature_name", "LeNet")).lower()
    n_min = min(len(real), len(fake))
    subset = min(1000, n_min) if kid_subset_size is None else int(kid_subset_size)
    if not 2 <= subset <= n_min:
        raise ValueError(
            f"kid_subset_size={kid_subset_size} must be in [2, {n_min}] (the smaller sample count): "
            "lower it or pass None for min(1000, n)"
        )

    device = _device_of(extractor)
    num_features = getattr(extractor, "num_features", None)
    if num_features is None:
        num_features = int(extractor(real[:2].to(device)).shape[-1])
    feature = _Float64Features(extractor, int(num_features))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        fid = FrechetInceptionDistance(feature=feature, normalize=True).to(device)
        # subsets drawn from exactly `subset` images on both sides are all the same set: one is enough
        subsets = 1 if subset == len(real) == len(fake) else kid_subsets
        kid = KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=subset,
                                      normalize=True).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for chunk in images.split(batch_size):
            chunk = chunk.to(device)
            fid.update(chunk, real=is_real)
            kid.update(chunk, real=is_real)
    feature.clear()

    fid_value = float(fid.compute())
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        kid_mean, kid_std = (float(v) for v in kid.compute())
    if not all(math.isfinite(v) for v in (fid_value, kid_mean, kid_std)):
        raise FloatingPointError(f"non-finite FID/KID ({fid_value}, {kid_mean}, {kid_std}): the features "
                                 "contain NaN/inf; check the classifier checkpoint and the images")
    # sqrt of a near-singular covariance product can leave a tiny negative value for equal sets
    return {f"fid_{name}": max(fid_value, 0.0), f"kid_{name}_mean": kid_mean, f"kid_{name}_std": kid_std}


@torch.no_grad()
def _log_probs(images: Tensor, classifier: nn.Module | str | Path, batch_size: int) -> Tensor:
    """Float64 log-softmax of the classifier over ``images`` in batches -> [N, K]."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if isinstance(classifier, (str, Path)):
        classifier = LeNetFeatureExtractor(classifier)
    if isinstance(classifier, LeNetFeatureExtractor):
        logits_fn, prepare = classifier.logits, (lambda x: x)
    else:
        device = _device_of(classifier)
        logits_fn, prepare = classifier, (lambda x: x.to(device, torch.float32))
    was_training = classifier.training
    classifier.eval()
    try:
        out = [logits_fn(prepare(chunk)).double().log_softmax(dim=-1).cpu() for chunk in images.split(batch_size)]
    finally:
        classifier.train(was_training)
    log_p = torch.cat(out)
    if not torch.isfinite(log_p).all():
        raise FloatingPointError("the classifier produced NaN/inf logits: check the checkpoint and the images")
    return log_p


def _coverage(log_p: Tensor) -> dict[str, float]:
    k = log_p.shape[1]
    hist = torch.bincount(log_p.argmax(dim=1), minlength=k).double()
    q = hist / hist.sum()
    entropy = max(0.0, float(-(q[q > 0] * q[q > 0].log()).sum()))
    return {
        "class_coverage": float((hist > 0).double().mean()),
        "class_entropy": entropy,
        "class_entropy_normalized": entropy / math.log(k) if k > 1 else 0.0,
    }


def class_coverage(images: Tensor, classifier: nn.Module | str | Path, batch_size: int = 500) -> dict[str, float]:
    """Fraction of classes predicted at least once and the entropy of the predicted-class histogram
    (nats, and divided by log K: 1.0 means perfectly balanced classes)."""
    return _coverage(_log_probs(_check_images(images, "images"), classifier, batch_size))


def classifier_score(
    fake: Tensor, classifier: nn.Module | str | Path, batch_size: int = 500, splits: int = 1
) -> dict[str, float]:
    """Inception-Score analogue exp(E_x KL(p(y|x) || p(y))) with the classifier's softmax.

    Ranges from 1 (every image gets the same prediction, or predictions are uniform) to the
    number of classes (confident and balanced). ``classifier`` is a ``LeNetFeatureExtractor``, a
    module returning logits (``Classifier``, ``LeNet``) or a checkpoint path. With ``splits > 1``
    the score is averaged over that many disjoint chunks (``classifier_score_std`` their spread).
    Also returns the ``class_coverage`` keys.
    """
    fake = _check_images(fake, "fake")
    if not 1 <= splits <= len(fake):
        raise ValueError(f"splits={splits}: must be between 1 and the number of images ({len(fake)})")
    log_p = _log_probs(fake, classifier, batch_size)
    scores = []
    for part in log_p.tensor_split(splits):
        log_py = part.logsumexp(dim=0) - math.log(len(part))
        kl = (part.exp() * (part - log_py)).sum(dim=1)
        scores.append(math.exp(float(kl.mean())))
    scores_t = torch.tensor(scores, dtype=torch.float64)
    std = float(scores_t.std(unbiased=False)) if splits > 1 else 0.0
    return {"classifier_score": float(scores_t.mean()), "classifier_score_std": std, **_coverage(log_p)}


def default_inception_weights() -> Path:
    """``$LATENTGEN_INCEPTION_WEIGHTS`` or torch-fidelity's file name in the torch hub cache."""
    env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def inception_unavailable_reason(path: str | Path | None = None) -> str | None:
    """Why Inception FID/KID cannot run offline (None if it can). Never downloads anything."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return ("torch-fidelity is not installed (pip install torch-fidelity); "
                "FID/KID-LeNet need neither it nor network access")
    weights = Path(path).expanduser() if path is not None else default_inception_weights()
    if not weights.is_file():
        return (f"no Inception weights at {weights}: copy {INCEPTION_WEIGHTS_FILE} there or set "
                f"{INCEPTION_WEIGHTS_ENV}; they are never downloaded")
    if weights.stat().st_size == 0:
        return f"Inception weights file {weights} is empty: copy the real file there"
    return None


def inception_available(path: str | Path | None = None) -> bool:
    """True if torch-fidelity is installed and Inception weights exist at ``path`` (default:
    ``default_inception_weights()``); otherwise logs the reason and returns False."""
    reason = inception_unavailable_reason(path)
    if reason is not None:
        log.info(f"Inception FID unavailable: {reason}")
    return reason is None
