"""Evaluate stages against real data with one classifier and one reference set.

The reference set is the first N test images. Against it, with the same classifier:

* a prior's N samples (FID/KID-LeNet, classifier score, class coverage, sampling time) and, for
  likelihood priors, the NLL of real test images encoded by the prior's own stage 1 (an upper bound
  for ARDM);
* the real-data floor: N training images (what a perfect generator would score at this N);
* the reconstruction ceiling: stage-1 reconstructions of the next N test images (what a perfect
  prior over this stage 1 would score). Disjoint images, so neither is flattered by pairing.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from tqdm.auto import tqdm

from latentgen.metrics.eval_data import RealImages
from latentgen.metrics.features import LeNetFeatureExtractor
from latentgen.metrics.generative import (
    classifier_score,
    default_inception_weights,
    fid_kid,
    inception_unavailable_reason,
)
from latentgen.metrics.registry import eval_spec
from latentgen.models.prior_base import PriorModule
from latentgen.models.stage1_base import Stage1Module
from latentgen.sampling.from_checkpoint import draw_samples
from latentgen.utils.pylogger import RankedLogger

log = RankedLogger(__name__)


def inception_weights(setting: str | bool, path: str | None) -> Path | None:
    """Weights file for Inception FID, or None to skip it (``auto``: only when available offline)."""
    if setting is False or str(setting).lower() == "false":
        return None
    reason = inception_unavailable_reason(path)
    if reason is None:
        return Path(path).expanduser() if path else default_inception_weights()
    if str(setting).lower() == "auto":
        log.info(f"Skipping Inception FID: {reason}")
        return None
    raise RuntimeError(f"inception.enabled=true but Inception FID cannot run offline: {reason}. "
                       "Set inception.enabled=auto to skip it.")


@torch.no_grad()
def inception_fid(real: torch.Tensor, fake: torch.Tensor, weights: Path, batch_size: int = 100) -> float:
    """Standard FID (Inception-v3 pool features) from local weights; grey images are repeated to RGB."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights))
    for images, is_real in ((real, True), (fake, False)):
        for chunk in images.split(batch_size):
            fid.update(chunk.expand(-1, 3, -1, -1) if chunk.shape[1] == 1 else chunk, real=is_real)
    return max(float(fid.compute()), 0.0)


class Evaluator:
    """Metrics of images against the first ``n`` real test images, all with one classifier."""

    def __init__(self, real: RealImages, extractor: LeNetFeatureExtractor, n: int, batch_size: int = 256,
                 kid_subsets: int = 100, inception: Path | None = None, progress: bool = True) -> None:
        if n < 2:
            raise ValueError(f"num_samples={n}: FID/KID need at least 2 images (a few hundred or more for "
                             "meaningful numbers)")
        if tuple(real.image_shape) != (extractor.in_channels, extractor.image_size, extractor.image_size):
            shape = (extractor.in_channels, extractor.image_size, extractor.image_size)
            raise ValueError(f"the classifier was trained on images {shape} but {real.source.dataset} images are "
                             f"{real.image_shape}: use a classifier of this dataset (classifier.experiment / "
                             "classifier.ckpt_path)")
        self.real, self.extractor, self.n = real, extractor, n
        self.batch_size, self.kid_subsets, self.inception, self.progress = batch_size, kid_subsets, inception, progress
        self.reference, self.reference_labels = real.take("test", n)

    @property
    def device(self) -> torch.device:
        return self.extractor.device

    def classifier_accuracy(self) -> float:
        """Accuracy of the classifier on the reference images (is it a meaningful judge?)."""
        pred = torch.cat([self.extractor.logits(x).argmax(1).cpu() for x in self.reference.split(self.batch_size)])
        return float((pred == self.reference_labels).double().mean())

    def sample_quality(self, images: torch.Tensor) -> dict[str, float]:
        """FID/KID-LeNet against the reference, classifier score and class coverage of ``images``."""
        if len(images) != self.n:
            raise ValueError(f"{len(images)} images against a reference of {self.n}: use the same N")
        metrics = fid_kid(self.reference, images, self.extractor, batch_size=self.batch_size,
                          kid_subsets=self.kid_subsets, seed=0)
        metrics.update(classifier_score(images, self.extractor, batch_size=self.batch_size))
        if self.inception is not None:
            metrics["fid_inception"] = inception_fid(self.reference, images, self.inception)
        return metrics

    def real_floor(self) -> dict[str, float]:
        """N training images against the reference: the best any generator can score at this N."""
        return self.sample_quality(self.real.take("train", self.n)[0])

    @torch.no_grad()
    def reconstruct(self, stage1: Stage1Module, images: torch.Tensor) -> torch.Tensor:
        device = next(stage1.parameters()).device
        out = [stage1.reconstruct(x.to(device)).float().cpu()
               for x in tqdm(images.split(self.batch_size), desc="reconstructing", disable=not self.progress)]
        return torch.cat(out)

    def recon_ceiling(self, stage1: Stage1Module) -> dict[str, float]:
        """Stage-1 reconstructions of test images N..2N against the reference."""
        if 2 * self.n > self.real.size("test"):
            raise ValueError(f"the reconstruction ceiling needs 2N test images (N for the reference, N to "
                             f"reconstruct): num_samples={self.n} is too large, use at most "
                             f"{self.real.size('test') // 2} for {self.real.source.dataset}")
        return self.sample_quality(self.reconstruct(stage1, self.real.take("test", self.n, offset=self.n)[0]))

    @torch.no_grad()
    def reconstruction_quality(self, stage1: Stage1Module, max_items: int | None) -> dict[str, float]:
        """PSNR (dB, of the mean squared error) and SSIM of test reconstructions, and codebook use (a
        discrete stage 1)."""
        n = min(max_items or self.real.size("test"), self.real.size("test"))
        x, _ = self.real.take("test", n)
        device = next(stage1.parameters()).device
        psnr = PeakSignalNoiseRatio(data_range=1.0).to(device)
        ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
        counts = torch.zeros(stage1.num_codes or 1, dtype=torch.float64)
        for chunk in tqdm(x.split(self.batch_size), desc="PSNR/SSIM", disable=not self.progress):
            chunk = chunk.to(device)
            z = stage1.encode(chunk)
            recon = stage1.decode_latents(z).float()
            psnr.update(recon, chunk)
            ssim.update(recon, chunk)
            if stage1.discrete:
                indices = stage1.quantize(z)[1]
                counts += torch.bincount(indices.reshape(-1).cpu(), minlength=stage1.num_codes).double()
        if not stage1.discrete:
            return {"psnr": float(psnr.compute()), "ssim": float(ssim.compute())}
        p = counts / counts.sum()
        perplexity = math.exp(float(-(p[p > 0] * p[p > 0].log()).sum()))
        return {"psnr": float(psnr.compute()), "ssim": float(ssim.compute()),
                "code_usage": float((counts > 0).double().mean()), "code_perplexity": perplexity}

    @torch.no_grad()
    def prior_nll(self, model: PriorModule, max_items: int | None) -> dict[str, float]:
        """NLL of real test images under a likelihood prior, tokenised by its own stage 1."""
        n = min(max_items or self.real.size("test"), self.real.size("test"))
        x, y = self.real.take("test", n)
        stage1 = model._require_stage1()
        h, w = model.grid_shape
        total = 0.0
        bound = eval_spec(model).nll_bound  # an upper bound over random orders (ARDM), seeded
        gen = torch.Generator(device=model.device).manual_seed(0) if bound else None
        for xb, yb in tqdm(list(zip(x.split(self.batch_size), y.split(self.batch_size), strict=True)),
                           desc="test NLL", disable=not self.progress):
            tokens = stage1.encode_to_indices(xb.to(model.device))
            labels = yb.to(model.device) if model.num_classes is not None else None
            if bound:
                total += float(model.nll_bound(tokens, labels, generator=gen).double().sum())
            else:
                logits = model.logits(tokens, labels).double()
                total += float(F.cross_entropy(logits, tokens, reduction="sum"))
        per_grid = total / n
        return {"nll_nats_per_grid": per_grid, "bits_per_token": per_grid / (h * w) / math.log(2)}

    def evaluate_prior(self, model: PriorModule, options: dict[str, Any], seed: int, batch_size: int,
                       nll_max_items: int | None = None, with_nll: bool = True) -> tuple[dict[str, float], torch.Tensor]:
        """Sample N images (timed) and score them; adds the test NLL for likelihood priors."""
        spec = eval_spec(model)
        t0 = time.perf_counter()  # draw_samples copies each batch to the CPU: the clock sees finished work
        images, _, _ = draw_samples(model, self.n, batch_size, seed, None, options, progress=self.progress)
        elapsed = time.perf_counter() - t0
        metrics = self.sample_quality(images)
        metrics.update(sampling_time_s=elapsed, sampling_ms_per_image=1000.0 * elapsed / self.n)
        if spec.likelihood and with_nll:
            metrics.update(self.prior_nll(model, nll_max_items))
        return metrics, images
