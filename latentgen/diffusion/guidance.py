"""Classifier-free guidance (Ho & Salimans, 2022)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

ModelFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(
            f"Guidance scale must be a finite number >= 0 (1 = no guidance), got {scale}."
        )
    return scale


def apply_cfg(cond_out: Tensor, uncond_out: Tensor, scale: float) -> Tensor:
    """Guided prediction uncond + scale * (cond - uncond)."""
    return uncond_out + _check_scale(scale) * (cond_out - uncond_out)


def drop_labels(
    labels: Tensor, null_label: int, p: float, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (training for CFG)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"Label drop probability must be in [0, 1], got {p}.")
    if p == 0.0:
        return labels
    device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape, generator=generator, device=device).to(labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def guided_model_fn(
    model: nn.Module | ModelFn, labels: Tensor, null_label: int, scale: float
) -> ModelFn:
    """Wrap ``model(x, t, labels)`` into a guided ``fn(x, t, labels=None)``.

    Conditional and unconditional passes share one batched forward.  ``scale == 1`` runs
    only the conditional pass and ``scale == 0`` only the unconditional one.  Labels given
    at call time (e.g. by ``sample_latents``) take precedence over the bound ``labels``.
    """
    scale = _check_scale(scale)
    if labels is None:
        raise ValueError("Classifier-free guidance needs class labels; pass a LongTensor[B].")

    def fn(x: Tensor, t: Tensor, call_labels: Tensor | None = None) -> Tensor:
        y = (call_labels if call_labels is not None else labels).to(x.device)
        if y.shape != (x.shape[0],):
            raise ValueError(
                f"labels must have shape ({x.shape[0]},) to match the batch, got {tuple(y.shape)}."
            )
        null = torch.full_like(y, null_label)
        if scale == 1.0:
            return model(x, t, y)
        if scale == 0.0:
            return model(x, t, null)
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return fn
