"""Absorbing-state (mask) discrete diffusion and the MaskGIT parallel decoder.

Training follows the order-agnostic / MaskGIT recipe (Chang et al., 2022): a random
fraction ``gamma(r)`` of the tokens is replaced by a mask token and the network predicts
the original tokens at the masked positions. Sampling starts from a fully masked grid and
reveals the most confident predictions over ``num_steps`` steps.

The network is passed in as ``logits_fn(tokens [B, L] long, labels [B] long | None)``
returning logits ``[B, L, K]`` over the ``K`` codebook entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from latentgen.diffusion.mask_schedules import check_schedule, mask_ratio

__all__ = [
    "AbsorbingDiffusion",
    "LogitsFn",
    "MaskGITSampler",
    "guided_logits",
    "sample_tokens",
]

LogitsFn = Callable[[Tensor, Tensor | None], Tensor]

_EPS = 1e-6


def guided_logits(
    logits_fn: LogitsFn,
    tokens: Tensor,
    labels: Tensor | None,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
) -> Tensor:
    """Logits with classifier-free guidance ``uncond + s * (cond - uncond)``.

    With ``guidance_scale == 1`` (or no labels) only the conditional logits are computed.
    Otherwise conditional and unconditional passes share one batched forward call, the
    unconditional half using ``null_label`` in place of the labels.
    """
    if guidance_scale == 1.0 or labels is None:
        if guidance_scale != 1.0:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs class labels; pass labels or use 1.0."
            )
        return logits_fn(tokens, labels).float()
    if null_label is None:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs null_label (the unconditional class id); "
            "pass null_label or use guidance_scale=1.0."
        )
    both_tokens = torch.cat([tokens, tokens], dim=0)
    both_labels = torch.cat([labels, torch.full_like(labels, null_label)], dim=0)
    cond, uncond = logits_fn(both_tokens, both_labels).float().chunk(2, dim=0)
    return uncond + guidance_scale * (cond - uncond)


def sample_tokens(
    logits: Tensor, temperature: float, generator: torch.Generator | None = None
) -> Tensor:
    """Draw one token per position from ``softmax(logits / temperature)``; 0 means argmax."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 selects argmax).")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.view(probs.shape[:-1])


def _check_labels(labels: Tensor | None, batch_size: int) -> None:
    if labels is not None and labels.shape != (batch_size,):
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}; expected ({batch_size},), one per sample."
        )


class AbsorbingDiffusion:
    """Forward (masking) process and masked-token loss for absorbing discrete diffusion."""

    def __init__(self, num_tokens: int, mask_token_id: int, schedule: str = "cosine") -> None:
        if num_tokens < 2:
            raise ValueError(f"num_tokens={num_tokens} must be >= 2 (the codebook size).")
        if mask_token_id < num_tokens:
            raise ValueError(
                f"mask_token_id={mask_token_id} collides with codebook ids [0, {num_tokens}); "
                f"use an id >= num_tokens, e.g. {num_tokens}."
            )
        self.num_tokens = num_tokens
        self.mask_token_id = mask_token_id
        self.schedule = check_schedule(schedule)

    def num_masked(self, r: Tensor, seq_len: int) -> Tensor:
        """Masked count ``ceil(gamma(r) * L)`` clamped to ``[1, L]`` for each ratio in ``r``."""
        counts = torch.ceil(mask_ratio(self.schedule, r) * seq_len - _EPS).long()
        return counts.clamp(1, seq_len)

    def corrupt(
        self,
        tokens: Tensor,
        generator: torch.Generator | None = None,
        r: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mask ``num_masked(r)`` uniformly chosen positions per sample, ``r ~ U(0, 1)``.

        Returns ``(noisy [B, L], mask [B, L] bool)``; ``r`` may be given ([B]) to fix the ratio.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected [B, L].")
        batch, seq_len = tokens.shape
        device = tokens.device
        if r is None:
            r = torch.rand(batch, generator=generator, device=device)
        counts = self.num_masked(r.to(device), seq_len)
        scores = torch.rand(batch, seq_len, generator=generator, device=device)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        mask = ranks < counts[:, None]
        return tokens.masked_fill(mask, self.mask_token_id), mask

    def loss(self, logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Cross-entropy averaged over masked positions only (0 if nothing is masked)."""
        if logits.shape[:-1] != targets.shape or mask.shape != targets.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask "
                f"{tuple(mask.shape)} disagree; expected [B, L, K], [B, L] and [B, L]."
            )
        if logits.shape[-1] != self.num_tokens:
            raise ValueError(
                f"logits have {logits.shape[-1]} classes; expected num_tokens={self.num_tokens}."
            )
        mask = mask.bool()
        if not mask.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits[mask].float(), targets[mask].long())


class MaskGITSampler:
    """Confidence-based parallel decoding (MaskGIT) over ``num_steps`` steps.

    After step ``k`` (0-based) ``floor(L * gamma((k + 1) / K))`` tokens stay masked, adjusted
    so that every step reveals at least one token and the last step reveals the rest.
    ``num_steps > seq_len`` is rejected with a ``ValueError`` rather than silently clamped.
    Confidence is the model log-probability of the sampled token plus Gumbel noise scaled by
    ``randomness * (1 - k / K)``; ``randomness=0`` gives purely greedy confidence ordering.
    """

    def __init__(
        self,
        num_steps: int,
        schedule: str = "cosine",
        temperature: float = 1.0,
        randomness: float = 1.0,
        guidance_scale: float = 1.0,
    ) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be >= 1.")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 selects argmax).")
        if randomness < 0:
            raise ValueError(f"randomness={randomness} must be >= 0 (0 disables noise).")
        self.num_steps = num_steps
        self.schedule = check_schedule(schedule)
        self.temperature = temperature
        self.randomness = randomness
        self.guidance_scale = guidance_scale

    def masked_counts(self, seq_len: int) -> list[int]:
        """Number of tokens still masked after each of the ``num_steps`` steps."""
        steps = self.num_steps
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be >= 1.")
        if steps > seq_len:
            raise ValueError(
                f"num_steps={steps} exceeds seq_len={seq_len}; at most one step per token, "
                f"use num_steps <= {seq_len}."
            )
        counts: list[int] = []
        prev = seq_len
        for k in range(steps):
            raw = math.floor(seq_len * mask_ratio(self.schedule, (k + 1) / steps) + _EPS)
            # Leave one token for every remaining step and reveal at least one now.
            prev = min(max(raw, steps - 1 - k), prev - 1)
            counts.append(prev)
        return counts

    def num_masked_after(self, step: int, seq_len: int) -> int:
        """Number of tokens still masked after 0-based ``step``."""
        if not 0 <= step < self.num_steps:
            raise ValueError(f"step={step} outside [0, {self.num_steps}).")
        return self.masked_counts(seq_len)[step]

    def reveal_counts(self, seq_len: int) -> list[int]:
        """Exact number of tokens revealed at each step; sums to ``seq_len``."""
        masked = self.masked_counts(seq_len)
        return [
            before - after for before, after in zip([seq_len, *masked[:-1]], masked, strict=True)
        ]

    @torch.no_grad()
    def sample(
        self,
        logits_fn: LogitsFn,
        batch_size: int,
        seq_len: int,
        mask_token_id: int,
        labels: Tensor | None = None,
        null_label: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_trace: bool = False,
        device: torch.device | str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Decode ``[batch_size, seq_len]`` tokens from a fully masked grid.

        With ``return_trace`` also returns a bool tensor ``[num_steps, B, L]`` of the
        positions still masked after each step.
        """
        _check_labels(labels, batch_size)
        masked_after = self.masked_counts(seq_len)
        if device is None:
            device = labels.device if labels is not None else "cpu"
        tokens = torch.full((batch_size, seq_len), mask_token_id, dtype=torch.long, device=device)
        masked = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)
        trace: list[Tensor] = []
        for k in tqdm(range(self.num_steps), disable=not progress, desc="MaskGIT"):
            logits = guided_logits(logits_fn, tokens, labels, self.guidance_scale, null_label)
            if logits.shape[:2] != (batch_size, seq_len):
                raise ValueError(
                    f"logits_fn returned shape {tuple(logits.shape)}; expected "
                    f"({batch_size}, {seq_len}, K)."
                )
            if mask_token_id < logits.shape[-1]:
                logits[..., mask_token_id] = float("-inf")
            sampled = sample_tokens(logits, self.temperature, generator)
            log_probs = torch.log_softmax(logits, dim=-1)
            confidence = log_probs.gather(-1, sampled[..., None]).squeeze(-1)
            noise_scale = self.randomness * (1.0 - k / self.num_steps)
            if noise_scale > 0:
                u = torch.rand(confidence.shape, generator=generator, device=device)
                confidence = confidence - noise_scale * torch.log(
                    -torch.log(u.clamp(_EPS, 1 - _EPS))
                )
            confidence = confidence.masked_fill(~masked, float("inf"))
            keep = torch.topk(confidence, seq_len - masked_after[k], dim=1).indices
            revealed = torch.zeros_like(masked).scatter_(1, keep, True)
            tokens = torch.where(revealed & masked, sampled, tokens)
            masked = ~revealed
            if return_trace:
                trace.append(masked.clone())
        if return_trace:
            return tokens, torch.stack(trace)
        return tokens
