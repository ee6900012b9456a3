"""Shared base of every stage-2 prior: the frozen stage 1 travels inside the prior's checkpoint.

The prior keeps its stage 1 as a frozen submodule rebuilt from ``stage1_hparams`` (and the class
``stage1_info["class"]`` names), so
``Prior.load_from_checkpoint(path)`` alone can decode samples into images; ``stage1_info`` records the
stage-1 checkpoint's path and SHA-256 for provenance.
"""

from __future__ import annotations

from typing import Any

import torch

from latentgen.diffusion.guidance import drop_labels
from latentgen.models.stage1_base import FrozenStage1Module
from latentgen.nets.checks import check_labels


class PriorModule(FrozenStage1Module):
    """Subclasses implement ``sample_latents`` (tokens [B, h, w] or latents [B, C, h, w])."""

    def __init__(
        self,
        stage1_hparams: dict[str, Any] | None = None,
        stage1_info: dict[str, Any] | None = None,
        num_classes: int | None = None,
        sample_every_n_epochs: int = 1,
        num_sample_images: int = 64,
    ) -> None:
        super().__init__(stage1_hparams, stage1_info)
        self.num_classes = num_classes
        self.sample_every_n_epochs = sample_every_n_epochs
        self.num_sample_images = num_sample_images
        self._val_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- stage 1 ---------------------------------------------------------------------------------
    def decode_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """Token grids -> images through stage 1 (continuous priors override this)."""
        return self._require_stage1().decode_code(samples)

    def net_labels(self, labels: torch.Tensor, split: str) -> torch.Tensor | None:
        """The class labels of a batch as the net sees them: none for an unconditional prior; in training,
        each replaced by the null class with probability ``cond_drop_prob`` (classifier-free guidance)."""
        if self.num_classes is None:
            return None
        drop = getattr(self, "cond_drop_prob", 0.0) if split == "train" else 0.0
        return drop_labels(labels, self.net.null_label, drop) if drop else labels

    # -- sampling ---------------------------------------------------------------------------------
    def labels_for(self, n: int, labels: torch.Tensor | list[int] | int | None = None,
                   num_classes: int | None = None) -> torch.Tensor | None:
        """Labels for ``n`` samples: given ones (one id for all, or one each), or each class in turn.

        ``num_classes`` names the label space when it is not the model's own (classifier guidance of an
        unconditional model draws labels from its classifier's classes).
        """
        classes = num_classes if num_classes is not None else self.num_classes
        if labels is None and classes is not None:
            labels = torch.arange(n) % classes
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            labels = labels.expand(n).clone() if labels.numel() == 1 else labels
        check_labels(labels, n, classes)
        return None if labels is None else labels.to(self.device)

    def sample_latents(self, n: int, labels: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample_images(self, n: int, labels=None, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """``n`` decoded samples [n, C, H, W] in [0, 1] (kwargs go to the sampler)."""
        was_training = self.training
        self.eval()
        try:
            samples = self.sample_latents(n, self.labels_for(n, labels), generator=generator, **kwargs)
            return self.decode_samples(samples)
        finally:
            self.train(was_training)

    # -- logging ----------------------------------------------------------------------------------
    def remember_val_batch(self, batch) -> None:
        if self._val_batch is None:
            x, y = batch
            self._val_batch = (x[:16].detach(), y[:16].detach())

    def on_validation_epoch_start(self) -> None:
        self._val_batch = None

    def _should_sample(self) -> bool:
        """Every ``sample_every_n_epochs`` validation epochs (the end of training always samples)."""
        if self.trainer.sanity_checking or self.sample_every_n_epochs <= 0 or self.trainer.fast_dev_run:
            return False
        return (self.current_epoch + 1) % self.sample_every_n_epochs == 0

    def on_validation_epoch_end(self) -> None:
        if self._should_sample():
            self.log_samples()

    def on_train_end(self) -> None:
        """Final sample grid, unless the last validation already logged one at this step."""
        if getattr(self, "_last_sample_step", None) != self.trainer.global_step:
            self.on_final_samples()

    def on_final_samples(self) -> None:
        self.log_samples()

    def log_samples(self, **kwargs) -> None:
        self._last_sample_step = self.trainer.global_step
        n = self.num_sample_images
        nrow = self.num_classes if self.num_classes and n % self.num_classes == 0 else None
        # labels 0..K-1 repeated: each column of the grid is one class
        images = self.sample_images(n, generator=torch.Generator(device=self.device).manual_seed(0), **kwargs)
        caption = "columns: classes 0..9" if nrow else "samples"
        self.log_image_grid("samples", images, nrow=nrow, caption=caption)
