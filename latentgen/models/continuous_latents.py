"""What the continuous-latent stage-2 models share: which stage-1 latents they see, and their scale.

The latent DDPM and the noise-conditional latent classifier that guides it both work on the stage-1
latents ("pre": the encoder output; "post": the codebook vectors) multiplied by ``scale_factor`` =
1 / std of the training latents in the latent cache (Rombach et al. 2022), so that the diffusion's
unit-variance noise matches the data. The factor is a buffer: it travels in the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

from latentgen.stages.latent_cache import load_split

LATENTS = ("pre", "post")


class ContinuousLatents:
    """Mixin for a :class:`~latentgen.models.prior_base.PriorModule` over scaled continuous latents."""

    latent: str
    scale_factor: torch.Tensor

    def init_latents(self, latent: str) -> None:
        if latent not in LATENTS:
            raise ValueError(f"latent={latent!r}: use the 'pre' (encoder output) or 'post' (codebook) latents")
        self.latent = latent
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def attach_stage1(self, stage1, cache_dir: str | None = None) -> None:
        if self.latent == "post":
            stage1.require_discrete("model.latent=post (the codebook vectors)")
        super().attach_stage1(stage1, cache_dir)
        if cache_dir is not None:
            self.scale_factor.fill_(self.compute_scale_factor(cache_dir))

    @torch.no_grad()
    def compute_scale_factor(self, cache_dir: str, max_items: int = 10000) -> float:
        """1 / std of the (pre- or post-quantisation) training latents in the cache."""
        z = torch.from_numpy(np.array(load_split(cache_dir, "train")["latents"][:max_items], dtype=np.float32))
        std = float(self.to_latent(z).std())
        if not np.isfinite(std) or std <= 0:
            raise ValueError(f"latents in {cache_dir} have std {std}: the stage-1 encoder output is degenerate")
        return 1.0 / std

    def to_latent(self, z_pre: torch.Tensor) -> torch.Tensor:
        """Cached pre-quantisation latents -> the latents this model works on (unscaled)."""
        if self.latent == "pre":
            return z_pre
        stage1 = self._require_stage1()
        stage1.require_discrete("latent=post (the codebook vectors)")
        return stage1.quantize(z_pre.to(self.device))[0]

    def scaled_latents(self, z_pre: torch.Tensor) -> torch.Tensor:
        """Cached latents -> the unit-variance latents the diffusion (and its classifier) see."""
        return self.to_latent(z_pre) * self.scale_factor
