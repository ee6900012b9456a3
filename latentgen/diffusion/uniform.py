"""Uniform-noise discrete diffusion (D3PM-uniform style, Austin et al., 2021).

At continuous time ``t`` in ``[0, 1]`` each token is kept with probability
``keep_probability(t) = gamma(t)`` (a schedule from :mod:`latentgen.diffusion.mask_schedules`)
and otherwise resampled uniformly from the ``K`` codebook entries: kept at ``t = 0``, pure noise
at ``t = 1``. Because a uniform draw may return the original token, the expected fraction of
tokens that actually change is ``(1 - gamma(t)) * (1 - 1 / K)``. The network predicts the clean
tokens from noisy ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from latentgen.diffusion.absorbing import LogitsFn, sample_tokens
from latentgen.diffusion.guidance import guided
from latentgen.diffusion.mask_schedules import check_schedule, gamma

__all__ = ["UniformDiffusionSampler", "UniformDiscreteDiffusion"]


class UniformDiscreteDiffusion:
    """Uniform discrete diffusion: the forward process ``q(x_t | x_0)``, its loss and its sampler.

    ``training_loss`` and ``make_sampler`` are the interface it shares with ``AbsorbingDiffusion``.
    """

    def __init__(self, num_tokens: int, schedule: str = "cosine") -> None:
        if num_tokens < 2:
            raise ValueError(f"num_tokens={num_tokens} must be >= 2 (the codebook size).")
        self.num_tokens = num_tokens
        self.schedule = check_schedule(schedule)

    def keep_probability(self, t: Tensor) -> Tensor:
        """Probability ``gamma(t)`` that a token is left as it is at time ``t``: 1 at t=0, 0 at t=1."""
        return gamma(self.schedule, t)

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
        replace_probability = 1.0 - self.keep_probability(t_tensor)[:, None]
        u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
        replaced = u < replace_probability
        random_tokens = torch.randint(
            0, self.num_tokens, tokens.shape, generator=generator, device=tokens.device
        )
        return torch.where(replaced, random_tokens, tokens), replaced

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of the clean ``targets`` averaged over every position."""
        if logits.shape[:-1] != targets.shape or logits.shape[-1] != self.num_tokens:
            raise ValueError(
                f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} "
                f"with num_tokens={self.num_tokens}; expected [B, L, {self.num_tokens}]."
            )
        return F.cross_entropy(logits.float().flatten(0, 1), targets.long().flatten())

    def training_loss(self, net: LogitsFn, x0: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Noise the tokens ``x0`` [B, L] to times ``t ~ U(0, 1)``: the loss and token accuracy of ``net``."""
        noisy, _ = self.add_noise(x0, torch.rand(x0.shape[0], device=x0.device))
        logits = net(noisy, labels)
        return self.loss(logits, x0), (logits.argmax(-1) == x0).float().mean()

    def make_sampler(self, num_inference_steps: int, temperature: float = 1.0, randomness: float = 1.0,
                     guidance_scale: float = 1.0) -> UniformDiffusionSampler:
        """``randomness`` (MaskGIT's confidence noise) has no counterpart here and is not used."""
        return UniformDiffusionSampler(self, num_inference_steps, temperature, guidance_scale)


class UniformDiffusionSampler:
    """Ancestral-style sampler: predict ``x0``, re-noise it to the next lower time.

    Times run ``t_k = k / K`` for ``k = K .. 1``; at each step the clean tokens are sampled
    from the predicted logits and corrupted to ``t_{k-1}`` with the forward process; the
    final step returns the predicted clean tokens.
    """

    def __init__(self, process: UniformDiscreteDiffusion, num_inference_steps: int, temperature: float = 1.0,
                 guidance_scale: float = 1.0) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be >= 1.")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 selects argmax).")
        self.process = process
        self.num_inference_steps = num_inference_steps
        self.temperature = temperature
        self.guidance_scale = guidance_scale

    @torch.no_grad()
    def sample(
        self,
        logits_fn: LogitsFn,
        batch_size: int,
        seq_len: int,
        labels: Tensor | None = None,
        null_label: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Generate ``[batch_size, seq_len]`` tokens starting from uniform noise."""
        if device is None:
            device = labels.device if labels is not None else "cpu"
        num_tokens, steps = self.process.num_tokens, self.num_inference_steps
        x = torch.randint(0, num_tokens, (batch_size, seq_len), generator=generator, device=device)
        x0 = x
        for k in tqdm(range(steps, 0, -1), disable=not progress, desc="uniform diffusion"):
            logits = guided(logits_fn, (x,), labels, null_label, self.guidance_scale).float()
            if logits.shape != (batch_size, seq_len, num_tokens):
                raise ValueError(
                    f"logits_fn returned shape {tuple(logits.shape)}; expected "
                    f"({batch_size}, {seq_len}, {num_tokens})."
                )
            x0 = sample_tokens(logits, self.temperature, generator)
            if k > 1:
                x, _ = self.process.add_noise(x0, (k - 1) / steps, generator)
        return x0
