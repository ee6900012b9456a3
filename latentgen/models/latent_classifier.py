"""Noise-conditional latent classifier p(y | x_t): the gradient behind classifier guidance of the latent
DDPM (Dhariwal & Nichol, 2021, in the latent space of Rombach et al. 2022).

It is trained on the latent cache like a prior: x0 = the stage-1 latents scaled to unit variance (the
same ``scale_factor`` as the DDPM's, see :class:`~latentgen.models.continuous_latents.ContinuousLatents`),
t ~ U{0, ..., T-1}, x_t = ``add_noise(x0, noise, t)`` under the DDPM's variance schedule, and
cross-entropy on the class. Validation and test draw t and the noise from a seed per batch, so their
accuracies compare across epochs; the accuracy is also logged per band of timesteps (``t_bins``).

It guides only a DDPM with the same stage 1, latents, schedule and scale (:meth:`check_matches`). It
is not a prior: it has no ``sample_latents``, and sampling or evaluating its checkpoint is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from latentgen.diffusion.schedulers import make_scheduler
from latentgen.models.continuous_latents import ContinuousLatents
from latentgen.models.stage1_base import FrozenStage1Module
from latentgen.nets.checks import check_id_range, check_labels
from latentgen.nets.latent_classifier import LatentClassifierNet

HOW_TO_TRAIN = ("leave guidance_classifier.ckpt_path null to find or train a classifier for this LDM, or train "
                "one yourself: python -m latentgen.train +experiment=latent_classifier_<dataset> "
                "stage1.ckpt_path=<the LDM's stage-1 checkpoint>")


def _stage1_name(info: dict[str, Any]) -> str:
    return f"{str(info['sha256'])[:12]} ({info.get('ckpt_path')})"


class LatentClassifier(ContinuousLatents, FrozenStage1Module):
    """Logits of the class of noisy scaled latents ``x_t`` at timestep ``t``; logs ``{split}/{loss,acc}`` and
    ``val/acc_t<lo>-<hi>`` per band of timesteps (``t_bins``: the band edges, as fractions of
    ``num_train_timesteps``; (0.25, 0.75) of 1000 gives t 0-249, 250-749 and 750-999).

    ``stage1_sha256`` pins the stage 1 it must be trained on (the SHA-256 of its checkpoint), so that the
    artefact store keeps one classifier per stage 1; null trains on whichever stage 1 the run resolves.
    """

    def __init__(
        self,
        latent_channels: int | None = None,
        grid_shape: Sequence[int] | None = None,
        num_classes: int = 10,
        latent: str = "pre",
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_heads: int | None = None,
        dropout: float = 0.0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "cosine",
        label_smoothing: float = 0.0,
        t_bins: Sequence[float] = (0.25, 0.75),
        stage1_sha256: str | None = None,
        stage1_hparams: dict[str, Any] | None = None,
        stage1_info: dict[str, Any] | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
    ) -> None:
        super().__init__(stage1_hparams, stage1_info)
        self.save_hyperparameters()
        self.set_optim(optimizer, scheduler, {})
        if latent_channels is None or grid_shape is None:
            raise ValueError("latent_channels/grid_shape are unset: build the model through the stage builder "
                             "(it fills them from stage 1) or set model.latent_channels and model.grid_shape")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 1), e.g. model.label_smoothing=0")
        recorded = (stage1_info or {}).get("sha256")
        if stage1_sha256 is not None and recorded != stage1_sha256:
            raise ValueError(f"model.stage1_sha256={stage1_sha256} pins the stage 1 this classifier is trained on, but "
                             f"the run resolved stage 1 {recorded} ({(stage1_info or {}).get('ckpt_path')}): set "
                             "stage1.ckpt_path to the pinned checkpoint, or model.stage1_sha256=null")
        edges = [round(float(f) * num_train_timesteps) for f in t_bins]
        if any(not 0 < e < num_train_timesteps for e in edges) or edges != sorted(set(edges)):
            raise ValueError(f"t_bins={list(t_bins)}: give increasing band edges as fractions of num_train_timesteps "
                             f"inside (0, 1) that fall on distinct timesteps of {num_train_timesteps}, e.g. "
                             "model.t_bins=[0.25,0.75]")
        self.init_latents(latent)
        self.latent_channels, self.grid_shape = int(latent_channels), tuple(int(g) for g in grid_shape)
        self.num_classes, self.label_smoothing = int(num_classes), float(label_smoothing)
        bounds = [0, *edges, int(num_train_timesteps)]
        self.t_bands = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        self.net = LatentClassifierNet(self.latent_channels, self.num_classes, base_channels=base_channels,
                                       channel_mults=tuple(channel_mults), num_res_blocks=num_res_blocks,
                                       attention_heads=attention_heads, dropout=dropout)
        self.noise_scheduler = make_scheduler("ddpm", num_train_timesteps, beta_schedule, "epsilon")
        self.ckpt_path = None  # set by latentgen.stages.guidance_classifier when loaded from a file

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of scaled noisy latents ``x_t`` ``[B, C, *grid]`` at timesteps ``t`` ``[B]``."""
        return self.net(x_t, t)

    # -- training ---------------------------------------------------------------------------------
    def shared_step(self, batch, split: str, batch_idx: int = 0) -> Tensor:
        z, labels = batch
        x0 = self.scaled_latents(z)
        # validation/test: the same timesteps and noise for a batch in every epoch
        gen = None if split == "train" else torch.Generator(device=x0.device).manual_seed(1000003 + batch_idx)
        t = torch.randint(0, self.hparams.num_train_timesteps, (x0.shape[0],), device=x0.device, generator=gen)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=gen)
        logits = self.net(self.noise_scheduler.add_noise(x0, noise, t), t).float()
        smoothing = self.label_smoothing if split == "train" else 0.0
        loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        correct = (logits.detach().argmax(-1) == labels).float()
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=split != "test",
                 sync_dist=not on_step)
        self.log(f"{split}/acc", correct.mean(), on_step=on_step, on_epoch=not on_step, prog_bar=True,
                 sync_dist=not on_step)
        if split != "train":
            for lo, hi in self.t_bands:
                band = (t >= lo) & (t < hi)
                n = int(band.sum())
                if n:
                    self.log(f"{split}/acc_t{lo}-{hi - 1}", correct[band].mean(), on_epoch=True, batch_size=n,
                             sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.shared_step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        self.shared_step(batch, "test", batch_idx)

    # -- guidance ---------------------------------------------------------------------------------
    def log_prob(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """log p(labels | x_t) ``[B]`` of scaled noisy latents ``x_t`` ``[B, C, *grid]`` at timesteps ``t`` ``[B]``."""
        shape = (self.latent_channels, *self.grid_shape)
        if tuple(x_t.shape[1:]) != shape:
            raise ValueError(f"x_t must have shape [B, {', '.join(map(str, shape))}] (this classifier's latents), "
                             f"got {tuple(x_t.shape)}")
        x_t, t, labels = x_t.to(self.device, torch.float32), t.to(self.device).long(), labels.to(self.device).long()
        check_labels(labels, x_t.shape[0], self.num_classes)
        check_id_range("t", t, self.hparams.num_train_timesteps, "pass integer timesteps of the training schedule")
        logits = self.net(x_t, t).float()
        return logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)

    def grad_log_prob(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """grad_x log p(labels | x) at ``x = x_t`` for each latent (the gradient of the sum over the batch),
        shaped, typed and placed like ``x_t``. Computed in float32 with gradients on, also when the caller
        runs under ``torch.no_grad``, ``torch.inference_mode`` or autocast; the weights get no gradient."""
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(self.device.type, enabled=False):
            x = x_t.detach().to(self.device, torch.float32).clone().requires_grad_(True)
            log_p = self.log_prob(x, t.detach().clone(), labels.detach().clone())
            (grad,) = torch.autograd.grad(log_p.sum(), x)
        return grad.to(x_t.device, x_t.dtype)

    def check_matches(self, ldm) -> None:
        """Raise a ValueError naming every way in which this classifier cannot guide the latent DDPM ``ldm``:
        another stage 1, other latents (``pre``/``post``), noise schedule, latent shape, scale factor or classes."""
        problems = [*self._stage1_problems(ldm)]
        mine, theirs = self.hparams, ldm.hparams
        if self.latent != ldm.latent:
            problems.append(f"latents: the classifier sees the {self.latent!r} latents, the LDM diffuses the "
                            f"{ldm.latent!r} ones; train the classifier with model.latent={ldm.latent}")
        for key in ("num_train_timesteps", "beta_schedule"):
            if mine[key] != theirs[key]:
                problems.append(f"noise schedule: the classifier has {key}={mine[key]}, the LDM {key}={theirs[key]}; "
                                f"train the classifier with model.{key}={theirs[key]}")
        shape, ldm_shape = (self.latent_channels, *self.grid_shape), (ldm.latent_channels, *tuple(ldm.grid_shape))
        if shape != ldm_shape:
            problems.append(f"latent shape: the classifier takes latents {list(shape)}, the LDM makes {list(ldm_shape)}; "
                            "train the classifier on the LDM's stage 1")
        a, b = float(self.scale_factor), float(ldm.scale_factor)
        if not math.isclose(a, b, rel_tol=1e-4):
            problems.append(f"scale factor: the classifier's latents are scaled by {a:.6g}, the LDM's by {b:.6g} "
                            "(1 / std of their latent caches, which differ: latent_cache.max_items, or a debug preset "
                            "in one of the runs); train the classifier with the LDM's latent_cache settings")
        if ldm.num_classes is not None and ldm.num_classes != self.num_classes:
            problems.append(f"classes: the classifier has {self.num_classes} classes, the LDM {ldm.num_classes}; "
                            f"train the classifier with model.num_classes={ldm.num_classes}")
        if problems:
            where = f" {self.ckpt_path}" if self.ckpt_path else ""
            raise ValueError(f"The latent classifier{where} cannot guide this latent DDPM:\n  - "
                             + "\n  - ".join(problems) + f"\nTo get a matching one, {HOW_TO_TRAIN}.")

    def _stage1_problems(self, ldm) -> list[str]:
        mine = self.hparams.get("stage1_info") or {}
        theirs = ldm.hparams.get("stage1_info") or {}
        if mine.get("sha256") and theirs.get("sha256"):
            if mine["sha256"] == theirs["sha256"]:
                return self._data_problems(mine, theirs)
            return [f"stage 1: the classifier was trained on the latents of stage-1 checkpoint {_stage1_name(mine)}, "
                    f"the LDM on {_stage1_name(theirs)}; use a classifier trained on the LDM's stage 1"]
        s1, ldm_s1 = self.stage1, getattr(ldm, "stage1", None)
        if s1 is None and ldm_s1 is None:
            return []  # bare models (no stage 1 at all): nothing to tell apart
        if s1 is not None and ldm_s1 is not None:
            a, b = s1.state_dict(), ldm_s1.state_dict()
            if a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a):
                return []
            return ["stage 1: the classifier's stage-1 weights differ from the LDM's (neither records its stage-1 "
                    "SHA-256 to compare); use a classifier trained on the LDM's stage 1"]
        has = "the classifier has a stage 1 and the LDM none" if s1 is not None else "the LDM has a stage 1 and the classifier none"
        return [f"stage 1: cannot tell whether they share one ({has}); use a classifier built on the LDM's stage 1"]

    @staticmethod
    def _data_problems(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
        a, b = (mine.get("data") or {}).get("target"), (theirs.get("data") or {}).get("target")
        if a and b and a != b:
            return [f"data: the classifier's latent cache encodes {a}, the LDM's {b}; train the classifier with "
                    "the LDM's stage-1 experiment (stage1.experiment)"]
        return []
