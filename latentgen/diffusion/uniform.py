"""Uniform-noise discrete diffusion (D3PM-uniform style, Austin et al., 2021).

At continuous time ``t`` in ``[0, 1]`` each token is kept with probability
``alpha(t) = gamma(t)`` (a schedule from :mod:`latentgen.diffusion.mask_schedules`) and
otherwise resampled uniformly from the ``K`` codebook entries, so the corruption level is
``noise_level(t) = 1 - gamma(t)``: 0 at ``t = 0`` and 1 at ``t = 1``. Because a uniform draw
may return the original token, the expected fraction of tokens that actually change is
``noise_level(t) * (1 - 1 / K)``. The network predicts the clean tokens from noisy ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from latentgen.diffusion.absorbing import LogitsFn, guided_logits, sample_tokens
from latentgen.diffusion.mask_schedules import check_schedule, mask_ratio

__all__ = ["UniformDiffusionSampler", "UniformDiscreteDiffusion"]


class UniformDiscreteDiffusion:
    """Forward process ``q(x_t | x_0)`` with uniform replacement and the clean-token loss."""

    def __init__(self, num_tokens: int, schedule: str = "cosine") -> None:
        if num_tokens < 2:
            raise ValueError(f"num_tokens={num_tokens} must be >= 2 (the codebook size).")
        self.num_tokens = num_tokens
        self.schedule = check_schedule(schedule)

    def noise_level(self, t: Tensor) -> Tensor:
        """Replacement probability ``1 - gamma(t)``, monotone from 0 (t=0) to 1 (t=1)."""
        return 1.0 - mask_ratio(self.schedule, t)

    def sample_t(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Training times ``t ~ U(0, 1)`` of shape ``[batch]``."""
        return torch.rand(batch, generator=generator, device=device)

    def add_noise(
        self, tokens: Tensor, t: Tensor | float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Corrupt ``tokens [B, L]`` to time ``t`` (scalar or ``[B]``).

        Returns ``(noisy, replaced)`` where ``replaced`` marks positions that received a
        uniform draw (which may coincide with the original token).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected [B, L].")
        batch = tokens.shape[0]
        t_tensor = torch.as_tensor(t, dtype=torch.float32, device=tokens.device)
        if t_tensor.dim() == 0:
            t_tensor = t_tensor.expand(batch)
        if t_tensor.shape != (batch,):
            raise ValueError(
                f"t has shape {tuple(t_tensor.shape)}; expected a scalar or ({batch},)."
            )
        level = self.noise_level(t_tensor)[:, None]
        u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
        replaced = u < level
        random_tokens = torch.randint(
            0, self.num_tokens, tokens.shape, generator=generator, device=tokens.device
        )
        return torch.where(replaced, random_tokens, tokens), replaced

    def loss(self, logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
        """Cross-entropy of the clean ``targets`` at every position.

        ``weights`` ([B] or [B, L]) scale the per-token losses before the mean over all
        positions (no renormalisation), e.g. for time-dependent loss weighting.
        """
        if logits.shape[:-1] != targets.shape or logits.shape[-1] != self.num_tokens:
            raise ValueError(
                f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} "
                f"with num_tokens={self.num_tokens}; expected [B, L, {self.num_tokens}]."
            )
        ce = F.cross_entropy(
            logits.float().flatten(0, 1), targets.long().flatten(), reduction="none"
        ).view(targets.shape)
        if weights is None:
            return ce.mean()
        if weights.dim() == 1:
            weights = weights[:, None]
        try:
            return (ce * weights.to(ce.dtype)).mean()
        except RuntimeError as err:
            raise ValueError(
                f"weights of shape {tuple(weights.shape)} do not broadcast to "
                f"{tuple(targets.shape)}; pass [B] or [B, L]."
            ) from err


class UniformDiffusionSampler:
    """Ancestral-style sampler: predict ``x0``, re-noise it to the next lower time.

    Times run ``t_k = k / K`` for ``k = K .. 1``; at each step the clean tokens are sampled
    from the predicted logits and corrupted to ``t_{k-1}`` with the forward process; the
    final step returns the predicted clean tokens.
    """

    def __init__(self, num_steps: int, temperature: float = 1.0, schedule: str = "cosine") -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be >= 1.")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 selects argmax).")
        self.num_steps = num_steps
        self.temperature = temperature
        self.schedule = check_schedule(schedule)

    @torch.no_grad()
    def sample(
        self,
        logits_fn: LogitsFn,
        batch_size: int,
        seq_len: int,
        num_tokens: int,
        labels: Tensor | None = None,
        null_label: int | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Generate ``[batch_size, seq_len]`` tokens starting from uniform noise."""
        if labels is not None and labels.shape != (batch_size,):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected ({batch_size},).")
        if device is None:
            device = labels.device if labels is not None else "cpu"
        process = UniformDiscreteDiffusion(num_tokens, self.schedule)
        x = torch.randint(0, num_tokens, (batch_size, seq_len), generator=generator, device=device)
        x0 = x
        steps = range(self.num_steps, 0, -1)
        for k in tqdm(steps, disable=not progress, desc="uniform diffusion"):
            logits = guided_logits(logits_fn, x, labels, guidance_scale, null_label)
            if logits.shape != (batch_size, seq_len, num_tokens):
                raise ValueError(
                    f"logits_fn returned shape {tuple(logits.shape)}; expected "
                    f"({batch_size}, {seq_len}, {num_tokens})."
                )
            x0 = sample_tokens(logits, self.temperature, generator)
            if k > 1:
                x, _ = process.add_noise(x0, (k - 1) / self.num_steps, generator)
        return x0
