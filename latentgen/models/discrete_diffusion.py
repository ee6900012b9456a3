"""Discrete diffusion over VQ tokens with a bidirectional transformer denoiser.

``process=absorbing``: MaskGIT / order-agnostic ARDM — a ``[MASK]`` token, masking ratio from a
schedule, cross-entropy on masked positions, parallel decoding in K steps.
``process=uniform``: D3PM-uniform in spirit — tokens replaced by uniform random codes, the network
predicts the clean tokens everywhere, sampling refines uniform noise over K steps.
Both processes offer ``training_loss`` and ``make_sampler``, so this module only delegates. The number of
sampling steps, temperature, guidance and re-masking (``remask``/``remask_ratio``, absorbing only: low-confidence
revealed tokens go back to ``[MASK]``, see ``MaskGITSampler``) are sampling-time options (no retraining).
"""

from __future__ import annotations

import torch

from latentgen.diffusion.absorbing import AbsorbingDiffusion, check_remask
from latentgen.diffusion.guidance import check_guidance_scale
from latentgen.diffusion.uniform import UniformDiscreteDiffusion
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
        num_inference_steps: int = 8,
        temperature: float = 1.0,
        randomness: float = 1.0,
        guidance_scale: float = 1.0,
        remask: str = "none",
        remask_ratio: float = 0.0,
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
        if "num_steps" in old:  # the name of num_inference_steps in checkpoints written before it
            num_inference_steps = self.hparams["num_inference_steps"] = old.pop("num_steps")
            del self.hparams["num_steps"]
        self.set_optim(optimizer, scheduler, old)
        if process not in PROCESSES:
            raise ValueError(f"process={process!r}: choose one of {PROCESSES}")
        if num_tokens is None or grid_shape is None:
            raise ValueError("num_tokens/grid_shape are unset: build the prior through the stage builder "
                             "(it fills them from stage 1) or set model.num_tokens and model.grid_shape")
        check_guidance_scale(guidance_scale, conditional=num_classes is not None)
        check_remask(remask, remask_ratio)
        if process != "absorbing" and remask != "none":
            raise ValueError(f"remask={remask!r} needs process=absorbing: the {process} process has no [MASK] "
                             "token to return revealed tokens to; use remask=none")
        self.num_tokens, self.grid_shape = int(num_tokens), tuple(int(g) for g in grid_shape)
        self.seq_len = self.grid_shape[0] * self.grid_shape[1]
        self.process_name, self.cond_drop_prob = process, cond_drop_prob
        self.sampling = {"num_inference_steps": num_inference_steps, "temperature": temperature,
                         "randomness": randomness, "guidance_scale": guidance_scale}
        self.remasking = {"remask": remask, "remask_ratio": remask_ratio}
        self.net = BidirectionalTransformer(self.num_tokens, self.seq_len, num_classes, d_model, n_layers,
                                            n_heads, dropout, use_mask_token=process == "absorbing")
        self.process: AbsorbingDiffusion | UniformDiscreteDiffusion = (
            AbsorbingDiffusion(self.num_tokens, self.net.mask_token_id, schedule) if process == "absorbing"
            else UniformDiscreteDiffusion(self.num_tokens, schedule))

    def shared_step(self, batch, split: str) -> torch.Tensor:
        tokens, labels = batch
        loss, acc = self.process.training_loss(self.net, tokens.reshape(tokens.shape[0], -1),
                                               self.net_labels(labels, split))
        on_step = split == "train"
        self.log_dict({f"{split}/loss": loss, f"{split}/token_acc": acc}, on_step=on_step, on_epoch=not on_step,
                      prog_bar=True, sync_dist=not on_step)
        return loss

    @torch.no_grad()
    def sample_latents(self, n, labels=None, generator=None, num_inference_steps: int | None = None,
                       temperature: float | None = None, randomness: float | None = None,
                       guidance_scale: float | None = None, remask: str | None = None,
                       remask_ratio: float | None = None, progress: bool = False) -> torch.Tensor:
        """``n`` token grids [n, h, w] decoded in ``num_inference_steps`` parallel steps.

        ``remask="confidence"`` with ``remask_ratio > 0`` re-masks low-confidence revealed tokens at each
        step (absorbing process only); None keeps the model's setting.
        """
        given = dict(num_inference_steps=num_inference_steps, temperature=temperature, randomness=randomness,
                     guidance_scale=guidance_scale)
        options = {**self.sampling, **{k: v for k, v in given.items() if v is not None}}
        remasking = {**self.remasking, **{k: v for k, v in dict(remask=remask, remask_ratio=remask_ratio).items()
                                          if v is not None}}
        check_remask(remasking["remask"], remasking["remask_ratio"])
        if remasking["remask"] != "none":  # only the absorbing process takes the re-masking options
            if not isinstance(self.process, AbsorbingDiffusion):
                raise ValueError(f"remask={remasking['remask']!r} needs process=absorbing: the "
                                 f"{self.process_name} process has no [MASK] token to return revealed tokens to; "
                                 "use remask=none")
            options.update(remasking)
        sampler = self.process.make_sampler(**options)
        seq = sampler.sample(self.net, n, self.seq_len, labels=labels, null_label=self.net.null_label,
                             generator=generator, progress=progress, device=self.device)
        return seq.reshape(n, *self.grid_shape)
