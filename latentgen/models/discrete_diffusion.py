"""Discrete diffusion over VQ tokens with a bidirectional transformer denoiser.

``process=absorbing``: MaskGIT / order-agnostic ARDM — a ``[MASK]`` token, masking ratio from a
schedule, cross-entropy on masked positions, parallel decoding in K steps.
``process=uniform``: D3PM-uniform in spirit — tokens replaced by uniform random codes, the network
predicts the clean tokens everywhere, sampling refines uniform noise over K steps.
The number of sampling steps, temperature and guidance are sampling-time options (no retraining).
"""

from __future__ import annotations

import torch

from latentgen.diffusion.absorbing import AbsorbingDiffusion, MaskGITSampler
from latentgen.diffusion.guidance import drop_labels
from latentgen.diffusion.uniform import UniformDiffusionSampler, UniformDiscreteDiffusion
from latentgen.models.prior_base import PriorModule
from latentgen.nets.transformer import BidirectionalTransformer

PROCESSES = ("absorbing", "uniform")


class DiscreteDiffusionPrior(PriorModule):
    def __init__(
        self,
        num_tokens: int | None = None,
        grid_shape: list[int] | tuple[int, int] | None = None,
        num_classes: int | None = 10,
        process: str = "absorbing",
        schedule: str = "cosine",
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.1,
        cond_drop_prob: float = 0.1,
        num_steps: int = 8,
        temperature: float = 1.0,
        randomness: float = 1.0,
        guidance_scale: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas=(0.9, 0.95),
        warmup_steps: int = 100,
        lr_schedule: str = "cosine",
        sample_every_n_epochs: int = 1,
        num_sample_images: int = 64,
        stage1_hparams=None,
        stage1_info=None,
    ) -> None:
        super().__init__(stage1_hparams=stage1_hparams, stage1_info=stage1_info, num_classes=num_classes,
                         sample_every_n_epochs=sample_every_n_epochs, num_sample_images=num_sample_images)
        self.save_hyperparameters()
        self.set_optim(lr, weight_decay, betas, warmup_steps, lr_schedule)
        if process not in PROCESSES:
            raise ValueError(f"process={process!r}: choose one of {PROCESSES}")
        if num_tokens is None or grid_shape is None:
            raise ValueError("num_tokens/grid_shape are unset: build the prior through the stage builder "
                             "(it fills them from stage 1) or set model.num_tokens and model.grid_shape")
        self.num_tokens, self.grid_shape = int(num_tokens), tuple(int(g) for g in grid_shape)
        self.seq_len = self.grid_shape[0] * self.grid_shape[1]
        self.process_name, self.schedule, self.cond_drop_prob = process, schedule, cond_drop_prob
        self.sampling = {"num_steps": num_steps, "temperature": temperature, "randomness": randomness,
                         "guidance_scale": guidance_scale}
        self.net = BidirectionalTransformer(self.num_tokens, self.seq_len, num_classes, d_model, n_layers,
                                            n_heads, dropout, use_mask_token=process == "absorbing")
        if process == "absorbing":
            self.process = AbsorbingDiffusion(self.num_tokens, self.net.mask_token_id, schedule)
        else:
            self.process = UniformDiscreteDiffusion(self.num_tokens, schedule)

    def _labels(self, labels: torch.Tensor, split: str) -> torch.Tensor | None:
        if self.num_classes is None:
            return None
        return drop_labels(labels, self.net.null_label, self.cond_drop_prob) if split == "train" else labels

    def shared_step(self, batch, split: str) -> torch.Tensor:
        tokens, labels = batch
        x0 = tokens.reshape(tokens.shape[0], -1)
        y = self._labels(labels, split)
        if self.process_name == "absorbing":
            noisy, mask = self.process.corrupt(x0)
            logits = self.net(noisy, y)
            loss = self.process.loss(logits, x0, mask)
            acc = (logits.argmax(-1) == x0)[mask].float().mean()
        else:
            t = self.process.sample_t(x0.shape[0], device=x0.device)
            noisy, _ = self.process.add_noise(x0, t)
            logits = self.net(noisy, y)
            loss = self.process.loss(logits, x0)
            acc = (logits.argmax(-1) == x0).float().mean()
        on_step = split == "train"
        self.log_dict({f"{split}/loss": loss, f"{split}/token_acc": acc}, on_step=on_step, on_epoch=not on_step,
                      prog_bar=True, sync_dist=not on_step)
        return loss


    def make_sampler(self, num_steps: int, temperature: float, randomness: float, guidance_scale: float):
        if self.process_name == "absorbing":
            return MaskGITSampler(num_steps, self.schedule, temperature, randomness, guidance_scale)
        return UniformDiffusionSampler(num_steps, temperature, self.schedule)

    @torch.no_grad()
    def sample_latents(self, n, labels=None, generator=None, num_steps: int | None = None,
                       temperature: float | None = None, randomness: float | None = None,
                       guidance_scale: float | None = None, progress: bool = False) -> torch.Tensor:
        """``n`` token grids [n, h, w] decoded in ``num_steps`` parallel steps."""
        given = dict(num_steps=num_steps, temperature=temperature, randomness=randomness,
                     guidance_scale=guidance_scale)
        opts = {**self.sampling, **{k: v for k, v in given.items() if v is not None}}
        sampler = self.make_sampler(**opts)
        null = self.net.null_label
        if self.process_name == "absorbing":
            seq = sampler.sample(self.net, n, self.seq_len, self.net.mask_token_id, labels=labels, null_label=null,
                                 generator=generator, progress=progress, device=self.device)
        else:
            seq = sampler.sample(self.net, n, self.seq_len, self.num_tokens, labels=labels, null_label=null,
                                 guidance_scale=opts["guidance_scale"], generator=generator, progress=progress,
                                 device=self.device)
        return seq.reshape(n, *self.grid_shape)
