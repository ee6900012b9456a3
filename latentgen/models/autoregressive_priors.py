"""Autoregressive priors over VQ token grids: gated PixelCNN and GPT-style transformer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from latentgen.models.prior_base import PriorModule
from latentgen.nets.pixelcnn import GatedPixelCNN
from latentgen.nets.transformer import CausalTransformer
from latentgen.sampling.autoregressive import sample_gpt, sample_pixelcnn


class ARTokenPrior(PriorModule):
    """Categorical likelihood over the raster-ordered token grid.

    Logs the NLL in nats per latent grid (``nll``) and bits per token (``bits_per_token``), samples
    decoded by stage 1, and prefix completions (top ``prefix_fraction`` of a real grid kept).
    """

    def __init__(self, num_tokens: int | None, grid_shape: list[int] | tuple[int, int] | None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 prefix_fraction: float = 0.5, **prior_kwargs) -> None:
        super().__init__(**prior_kwargs)
        if num_tokens is None or grid_shape is None:
            raise ValueError("num_tokens/grid_shape are unset: build the prior through the stage builder, "
                             "which fills them from stage 1, or set model.num_tokens and model.grid_shape")
        self.num_tokens, self.grid_shape = int(num_tokens), tuple(int(g) for g in grid_shape)
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.prefix_fraction = prefix_fraction

    def logits(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """[B, h, w] tokens -> [B, K, h, w] logits (position i sees only tokens before i)."""
        raise NotImplementedError

    def shared_step(self, batch, split: str) -> torch.Tensor:
        tokens, labels = batch
        if tokens.shape[-2:] != self.grid_shape:
            raise ValueError(f"token grids are {tuple(tokens.shape[-2:])} but the prior was built for {self.grid_shape}")
        loss = F.cross_entropy(self.logits(tokens, self.net_labels(labels, split)), tokens)  # mean nats per token
        n_tok = self.grid_shape[0] * self.grid_shape[1]
        on_step = split == "train"
        self.log_dict({f"{split}/loss": loss, f"{split}/nll": loss * n_tok, f"{split}/bits_per_token": loss / math.log(2)},
                      on_step=on_step, on_epoch=not on_step, prog_bar=True, sync_dist=not on_step)
        if split == "val":
            self.remember_val_batch(batch)
        return loss


    def on_validation_epoch_end(self) -> None:
        if self._should_sample():
            self.on_final_samples()

    def on_final_samples(self) -> None:
        self.log_samples(**self.sampling)
        if self._val_batch is not None:
            self.log_completions(*self._val_batch)

    def sample_latents(self, n, labels=None, generator=None, prefix=None, progress=False,
                       temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
        raise NotImplementedError

    @torch.no_grad()
    def complete(self, tokens: torch.Tensor, labels: torch.Tensor | None, n_prefix: int,
                 generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """Keep the first ``n_prefix`` tokens (raster order) of each grid and sample the rest."""
        prefix = tokens.reshape(tokens.shape[0], -1)[:, :n_prefix]
        return self.sample_latents(tokens.shape[0], labels, generator=generator, prefix=prefix, **kwargs)

    @torch.no_grad()
    def log_completions(self, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        """Rows: reconstruction of the real grid, then its completion from the top rows."""
        h, w = self.grid_shape
        n_prefix = max(1, round(h * self.prefix_fraction)) * w
        labels = self.net_labels(labels, "val")
        gen = torch.Generator(device=self.device).manual_seed(1)
        completed = self.complete(tokens, labels, n_prefix, generator=gen, **self.sampling)
        recon, comp = self.decode_samples(tokens), self.decode_samples(completed)
        self.log_image_grid("completions", torch.cat([recon, comp]), nrow=tokens.shape[0],
                            caption=f"top: reconstruction; bottom: completion of the first {n_prefix} tokens")


class PixelCNNPrior(ARTokenPrior):
    """Gated PixelCNN (van den Oord et al. 2016) over the token grid."""

    def __init__(self, num_tokens: int | None = None, grid_shape=None, num_classes: int | None = None,
                 hidden_channels: int = 64, num_layers: int = 8, kernel_size: int = 5,
                 temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, prefix_fraction: float = 0.5, sample_every_n_epochs: int = 1,
                 num_sample_images: int = 64, stage1_hparams=None, stage1_info=None,
                 optimizer: dict | None = None, scheduler: dict | None = None, **old) -> None:
        super().__init__(num_tokens, grid_shape, temperature, top_k, top_p, prefix_fraction,
                         stage1_hparams=stage1_hparams, stage1_info=stage1_info, num_classes=num_classes,
                         sample_every_n_epochs=sample_every_n_epochs, num_sample_images=num_sample_images)
        self.save_hyperparameters()
        self.set_optim(optimizer, scheduler, old)
        self.net = GatedPixelCNN(self.num_tokens, num_classes, hidden_channels, num_layers, kernel_size)

    def logits(self, tokens, labels):
        return self.net(tokens, labels)

    def sample_latents(self, n, labels=None, generator=None, prefix=None, progress=False,
                       temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
        return sample_pixelcnn(self.net, n, self.grid_shape, labels=labels, prefix=prefix, generator=generator,
                               progress=progress, temperature=temperature, top_k=top_k, top_p=top_p)


class TransformerPrior(ARTokenPrior):
    """GPT-style decoder over the flattened token grid with a start/class token (Taming Transformers)."""

    def __init__(self, num_tokens: int | None = None, grid_shape=None, num_classes: int | None = None,
                 d_model: int = 256, n_layers: int = 6, n_heads: int = 8, dropout: float = 0.1,
                 temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True, prefix_fraction: float = 0.5,
                 sample_every_n_epochs: int = 1, num_sample_images: int = 64,
                 stage1_hparams=None, stage1_info=None,
                 optimizer: dict | None = None, scheduler: dict | None = None, **old) -> None:
        super().__init__(num_tokens, grid_shape, temperature, top_k, top_p, prefix_fraction,
                         stage1_hparams=stage1_hparams, stage1_info=stage1_info, num_classes=num_classes,
                         sample_every_n_epochs=sample_every_n_epochs, num_sample_images=num_sample_images)
        self.save_hyperparameters()
        self.set_optim(optimizer, scheduler, old)
        self.use_cache = use_cache
        seq_len = self.grid_shape[0] * self.grid_shape[1]
        self.net = CausalTransformer(self.num_tokens, seq_len, num_classes, d_model, n_layers, n_heads, dropout)

    def logits(self, tokens, labels):
        b, h, w = tokens.shape
        return self.net(tokens.reshape(b, h * w), labels).transpose(1, 2).reshape(b, -1, h, w)

    def sample_latents(self, n, labels=None, generator=None, prefix=None, progress=False,
                       temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                       use_cache: bool | None = None):
        seq = sample_gpt(self.net, n, labels=labels, prefix=prefix, generator=generator, progress=progress,
                         temperature=temperature, top_k=top_k, top_p=top_p,
                         use_cache=self.use_cache if use_cache is None else use_cache)
        return seq.reshape(n, *self.grid_shape)
