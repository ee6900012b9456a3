"""Absorbing-state (mask) discrete diffusion and the MaskGIT parallel decoder.

Training follows the order-agnostic / MaskGIT recipe (Chang et al., 2022): a random
fraction ``gamma(r)`` of the tokens is replaced by a mask token and the network predicts
the original tokens at the masked positions. Sampling starts from a fully masked grid and
reveals the most confident predictions over ``num_inference_steps`` steps; optionally it
returns the least confident of the already revealed tokens to the mask to be predicted again
(``remask="confidence"``, after ReMDM, Wang et al., 2025).

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

from latentgen.diffusion.guidance import guided
from latentgen.diffusion.mask_schedules import check_schedule, gamma

__all__ = ["REMASK_MODES", "AbsorbingDiffusion", "LogitsFn", "MaskGITSampler", "check_remask", "sample_tokens"]

LogitsFn = Callable[[Tensor, Tensor | None], Tensor]

_EPS = 1e-6

REMASK_MODES = ("none", "confidence")


def check_remask(remask: str, remask_ratio: float) -> tuple[str, float]:
    """``(remask, remask_ratio)`` checked: a mode of ``REMASK_MODES`` and a ratio in ``[0, 1]``."""
    if remask not in REMASK_MODES:
        raise ValueError(f"remask={remask!r}: choose one of {', '.join(REMASK_MODES)} "
                         "(none keeps every revealed token)")
    if isinstance(remask_ratio, bool) or not isinstance(remask_ratio, int | float):
        raise ValueError(f"remask_ratio={remask_ratio!r} must be a number in [0, 1], e.g. 0.1")
    ratio = float(remask_ratio)
    if not 0.0 <= ratio <= 1.0:  # also rejects NaN
        raise ValueError(f"remask_ratio={remask_ratio} must lie in [0, 1]: the largest share of the revealed "
                         "tokens returned to the mask in one step (0 re-masks nothing), e.g. 0.1")
    if remask != "none" and ratio == 0.0:
        raise ValueError(f"remask={remask!r} with remask_ratio=0 re-masks nothing: set remask_ratio in (0, 1], "
                         "e.g. 0.2, or use remask=none")
    return remask, ratio


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


class AbsorbingDiffusion:
    """Absorbing discrete diffusion: the masking process, its loss and its sampler.

    ``training_loss`` and ``make_sampler`` are the interface it shares with ``UniformDiscreteDiffusion``.
    """

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
        counts = torch.ceil(gamma(self.schedule, r) * seq_len - _EPS).long()
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

    def training_loss(self, net: LogitsFn, x0: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Mask a random fraction of the tokens ``x0`` [B, L]: the loss and token accuracy of ``net`` there."""
        noisy, mask = self.corrupt(x0)
        logits = net(noisy, labels)
        return self.loss(logits, x0, mask), (logits.argmax(-1) == x0)[mask].float().mean()

    def make_sampler(self, num_inference_steps: int, temperature: float = 1.0, randomness: float = 1.0,
                     guidance_scale: float = 1.0, remask: str = "none", remask_ratio: float = 0.0) -> MaskGITSampler:
        return MaskGITSampler(self.mask_token_id, num_inference_steps, self.schedule, temperature, randomness,
                              guidance_scale, remask, remask_ratio)


class MaskGITSampler:
    """Confidence-based parallel decoding (MaskGIT) over ``num_inference_steps`` steps.

    After step ``k`` (0-based) ``floor(L * gamma((k + 1) / K))`` tokens stay masked, adjusted
    so that every step reveals at least one token and the last step reveals the rest.
    ``num_inference_steps > seq_len`` is rejected with a ``ValueError`` rather than silently clamped.
    Confidence is the model log-probability of the sampled token plus Gumbel noise scaled by
    ``randomness * (1 - k / K)``; ``randomness=0`` gives purely greedy confidence ordering.

    Re-masking (``remask="confidence"``, off with ``"none"``, the default). Once revealed, a token
    is normally final. With re-masking, step ``k`` also scores every token revealed at an earlier
    step by the model's log-probability of that token in this step's (guided) prediction, and returns
    the ``remask_counts(L)[k]`` lowest-scoring ones to ``[MASK]``: a share
    ``sigma_k = remask_ratio * (1 - k / (K - 1))`` of the revealed tokens, rounded down (so on 49
    tokens ratios below about 0.15 re-mask nothing), decaying linearly to 0 so that the last step
    re-masks nothing. The count is capped so that enough masked tokens are left to reveal.
    Re-masked tokens are predicted afresh, like any masked token, from the next step on. To keep the
    schedule, the step reveals as many extra masked tokens as it re-masks, so exactly
    ``masked_counts(L)[k]`` tokens are masked after step ``k`` with or without re-masking, and none
    after the last. The score comes from the same network call as the step's predictions (no extra
    call); the network is trained on masked positions only, so how well its output at a visible
    position ranks that token is a property of the checkpoint. ``remask="confidence"`` needs
    ``remask_ratio > 0``. With ``remask="none"`` the sampler draws the
    same random numbers and returns the same tokens as without the option (also when every count of
    ``remask_counts`` is 0).
    """

    def __init__(
        self,
        mask_token_id: int,
        num_inference_steps: int,
        schedule: str = "cosine",
        temperature: float = 1.0,
        randomness: float = 1.0,
        guidance_scale: float = 1.0,
        remask: str = "none",
        remask_ratio: float = 0.0,
    ) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be >= 1.")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 selects argmax).")
        if randomness < 0:
            raise ValueError(f"randomness={randomness} must be >= 0 (0 disables noise).")
        self.mask_token_id = mask_token_id
        self.num_inference_steps = num_inference_steps
        self.schedule = check_schedule(schedule)
        self.temperature = temperature
        self.randomness = randomness
        self.guidance_scale = guidance_scale
        self.remask, self.remask_ratio = check_remask(remask, remask_ratio)

    def masked_counts(self, seq_len: int) -> list[int]:
        """Number of tokens still masked after each of the ``num_inference_steps`` steps."""
        steps = self.num_inference_steps
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be >= 1.")
        if steps > seq_len:
            raise ValueError(
                f"num_inference_steps={steps} exceeds seq_len={seq_len}; at most one step per token, "
                f"use num_inference_steps <= {seq_len}."
            )
        counts: list[int] = []
        prev = seq_len
        for k in range(steps):
            raw = math.floor(seq_len * gamma(self.schedule, (k + 1) / steps) + _EPS)
            # Leave one token for every remaining step and reveal at least one now.
            prev = min(max(raw, steps - 1 - k), prev - 1)
            counts.append(prev)
        return counts

    def remask_counts(self, seq_len: int) -> list[int]:
        """Number of previously revealed tokens returned to ``[MASK]`` at each step (all 0 without re-masking)."""
        masked_after = self.masked_counts(seq_len)
        steps = self.num_inference_steps
        if self.remask == "none" or steps < 2:
            return [0] * steps
        counts = []
        for k in range(steps):
            revealed = seq_len - (masked_after[k - 1] if k > 0 else seq_len)
            sigma = self.remask_ratio * (1.0 - k / (steps - 1))
            # Re-masking more than will stay masked would leave too few masked tokens to reveal.
            counts.append(min(math.floor(sigma * revealed + _EPS), masked_after[k]))
        return counts

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
        """Decode ``[batch_size, seq_len]`` tokens from a fully masked grid."""
        masked_after = self.masked_counts(seq_len)
        remask_after = self.remask_counts(seq_len)
        if device is None:
            device = labels.device if labels is not None else "cpu"
        tokens = torch.full((batch_size, seq_len), self.mask_token_id, dtype=torch.long, device=device)
        masked = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)
        for k in tqdm(range(self.num_inference_steps), disable=not progress, desc="MaskGIT"):
            logits = guided(logits_fn, (tokens,), labels, null_label, self.guidance_scale).float()
            if logits.shape[:2] != (batch_size, seq_len):
                raise ValueError(
                    f"logits_fn returned shape {tuple(logits.shape)}; expected "
                    f"({batch_size}, {seq_len}, K)."
                )
            if self.mask_token_id < logits.shape[-1]:
                logits[..., self.mask_token_id] = float("-inf")
            sampled = sample_tokens(logits, self.temperature, generator)
            log_probs = torch.log_softmax(logits, dim=-1)
            confidence = log_probs.gather(-1, sampled[..., None]).squeeze(-1)
            noise_scale = self.randomness * (1.0 - k / self.num_inference_steps)
            if noise_scale > 0:
                u = torch.rand(confidence.shape, generator=generator, device=device)
                confidence = confidence - noise_scale * torch.log(
                    -torch.log(u.clamp(_EPS, 1 - _EPS))
                )
            confidence = confidence.masked_fill(~masked, float("inf"))
            if remask_after[k] > 0:
                # Score earlier tokens by this step's prediction; the least likely go back to the mask.
                current = log_probs.gather(-1, tokens.masked_fill(masked, 0)[..., None]).squeeze(-1)
                current = current.masked_fill(masked, float("inf"))
                redo = torch.topk(current, remask_after[k], dim=1, largest=False).indices
                confidence = confidence.clamp_min(torch.finfo(confidence.dtype).min)
                confidence = confidence.scatter(1, redo, float("-inf"))
            keep = torch.topk(confidence, seq_len - masked_after[k], dim=1).indices
            revealed = torch.zeros_like(masked).scatter_(1, keep, True)
            tokens = torch.where(revealed & masked, sampled, tokens)
            tokens = tokens.masked_fill(~revealed, self.mask_token_id)
            masked = ~revealed
        return tokens
