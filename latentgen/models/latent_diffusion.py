"""Latent DDPM (Ho et al. 2020 in the latent space of Rombach et al. 2022) over stage-1 latents.

Diffuses the continuous pre- or post-quantisation latents of the frozen VQ-VAE, scaled to unit
variance by ``scale_factor`` (computed from the latent cache, stored in the checkpoint). Samples are
decoded through stage 1's quantiser and decoder. EMA weights are used for sampling and saved.
"""

from __future__ import annotations

import copy
import math

import torch

from latentgen.diffusion.guidance import check_guidance_scale, guided
from latentgen.diffusion.losses import diffusion_loss, min_snr_weight
from latentgen.diffusion.pipeline import sample_latents
from latentgen.diffusion.schedulers import SAMPLERS, make_scheduler, training_target
from latentgen.models.continuous_latents import ContinuousLatents
from latentgen.models.prior_base import PriorModule
from latentgen.nets.unet import UNet


class LatentDiffusion(ContinuousLatents, PriorModule):
    def __init__(
        self,
        latent_channels: int | None = None,
        grid_shape: list[int] | tuple[int, int] | None = None,
        num_classes: int | None = 10,
        latent: str = "pre",
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 2,
        attention_heads: int = 4,
        dropout: float = 0.0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "cosine",
        prediction_type: str = "epsilon",
        min_snr_gamma: float | None = None,
        cond_drop_prob: float = 0.1,
        ema_decay: float = 0.999,
        sampler: str = "ddim",
        num_inference_steps: int = 50,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        clip_latents: float | None = None,
        sample_every_n_epochs: int = 1,
        num_sample_images: int = 64,
        stage1_hparams=None,
        stage1_info=None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        **old,
    ) -> None:
        super().__init__(stage1_hparams=stage1_hparams, stage1_info=stage1_info, num_classes=num_classes,
                         sample_every_n_epochs=sample_every_n_epochs, num_sample_images=num_sample_images)
        self.save_hyperparameters()
        self.set_optim(optimizer, scheduler, old)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} is not known; use one of {', '.join(SAMPLERS)}")
        check_guidance_scale(guidance_scale, conditional=num_classes is not None)
        if latent_channels is None or grid_shape is None:
            raise ValueError("latent_channels/grid_shape are unset: build the model through the stage builder "
                             "(it fills them from stage 1) or set model.latent_channels and model.grid_shape")
        self.init_latents(latent)
        self.latent_channels = int(latent_channels)
        self.grid_shape = tuple(int(g) for g in grid_shape)
        self.cond_drop_prob, self.min_snr_gamma, self.ema_decay = cond_drop_prob, min_snr_gamma, ema_decay
        self.clip_latents = clip_latents
        self.sampling = {"sampler": sampler, "num_inference_steps": num_inference_steps, "eta": eta,
                         "guidance_scale": guidance_scale}
        self.net = UNet(self.latent_channels, base_channels=base_channels, channel_mults=tuple(channel_mults),
                        num_res_blocks=num_res_blocks, attention_heads=attention_heads,
                        num_classes=num_classes, dropout=dropout)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.noise_scheduler = self.make_scheduler("ddpm")

    # -- set-up -----------------------------------------------------------------------------------
    def make_scheduler(self, sampler: str = "ddpm"):
        """The diffusers scheduler ``sampler`` over this model's variance schedule and prediction type."""
        return make_scheduler(sampler, self.hparams.num_train_timesteps, self.hparams.beta_schedule,
                              self.hparams.prediction_type)

    # -- training ---------------------------------------------------------------------------------
    def shared_step(self, batch, split: str) -> torch.Tensor:
        z, labels = batch
        x0 = self.scaled_latents(z)
        t = torch.randint(0, self.hparams.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        out = self.net(x_t, t, self.net_labels(labels, split))
        target = training_target(self.noise_scheduler, x0, noise, t)
        weights = None
        if self.min_snr_gamma:
            abar = self.noise_scheduler.alphas_cumprod.to(x0.device, torch.float64)[t]
            weights = min_snr_weight((abar / (1 - abar)).float(), self.min_snr_gamma, self.hparams.prediction_type)
        loss = diffusion_loss(out.float(), target.float(), weights)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True, sync_dist=not on_step)
        return loss


    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = self.trainer.global_step
        decay = min(self.ema_decay, (1 + step) / (10 + step))  # warm-up: early weights fade fast
        for ema_p, p in zip(self.ema_net.parameters(), self.net.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - decay)
        for ema_b, b in zip(self.ema_net.buffers(), self.net.buffers(), strict=True):
            ema_b.copy_(b)

    def train(self, mode: bool = True):
        super().train(mode)
        self.ema_net.eval()
        return self

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(self, n, labels=None, generator=None, sampler: str | None = None,
                       num_inference_steps: int | None = None, eta: float | None = None,
                       guidance_scale: float | None = None, classifier=None, classifier_scale: float | None = None,
                       use_ema: bool = True, progress: bool = False):
        """Draw ``n`` unscaled latents [n, C, h, w] with the configured (or given) sampler.

        ``classifier`` (a :class:`~latentgen.models.latent_classifier.LatentClassifier` of this model's
        stage 1 and noise schedule) with ``classifier_scale`` > 0 adds classifier guidance towards
        ``labels``, on top of classifier-free guidance if ``guidance_scale`` != 1.
        """
        opts = {**self.sampling, **{k: v for k, v in dict(sampler=sampler, num_inference_steps=num_inference_steps,
                                                          eta=eta, guidance_scale=guidance_scale).items()
                                    if v is not None}}
        check_guidance_scale(opts["guidance_scale"], conditional=self.num_classes is not None)
        net = self.ema_net if use_ema else self.net
        scheduler = self.make_scheduler(opts["sampler"])
        scale = float(classifier_scale or 0.0)
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"classifier_scale={classifier_scale}: must be a finite number >= 0 (0 = no guidance)")
        grad_fn = None
        if scale:
            if classifier is None:
                raise ValueError(f"classifier_scale={scale} needs a noise-conditional latent classifier: set "
                                 "sampling.classifier (see latent_classifier_mnist) or classifier_scale=0")
            classifier.check_matches(self)
            grad_fn = classifier.grad_log_prob
            if labels is None:
                raise ValueError(f"classifier_scale={scale} needs class labels to guide towards: pass labels")

        def model_fn(x, t, y):
            if self.num_classes is None:
                return net(x, t, None)
            return guided(net, (x, t), y, net.null_label, opts["guidance_scale"])

        shape = (n, self.latent_channels, *self.grid_shape)
        x = sample_latents(model_fn, scheduler, shape, opts["num_inference_steps"], labels=labels,
                           generator=generator, device=self.device, progress=progress, eta=opts["eta"],
                           classifier_grad=grad_fn, classifier_scale=scale)
        z = x / self.scale_factor
        if self.clip_latents is not None:
            z = z.clamp(-self.clip_latents, self.clip_latents)
        return z

    def decode_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """Latents -> images through stage 1 (a VQ stage 1 quantises them first)."""
        return self._require_stage1().decode_latents(samples)
