"""Classifier-free guidance (Ho & Salimans, 2022): label dropout in training, guided predictions in sampling."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def check_guidance_scale(scale: float, conditional: bool = True) -> float:
    """``scale`` as a float: finite, >= 0, and 1 (no guidance) unless the model is class-conditional."""
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale={scale}: must be a finite number >= 0 (1 = no guidance)")
    if scale != 1.0 and not conditional:
        raise ValueError(f"guidance_scale={scale} needs class labels, but the model is unconditional: "
                         "use guidance_scale=1.0 or train with model.num_classes")
    return scale


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


def guided(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], labels: Tensor | None,
           null_label: int | None, scale: float) -> Tensor:
    """``fn(*inputs, labels)`` with classifier-free guidance: ``uncond + scale * (cond - uncond)``.

    The conditional and unconditional (``null_label``) predictions share one batched call, every input
    batched along dim 0. ``scale == 1`` runs only the conditional call, ``scale == 0`` only the
    unconditional one; without ``labels`` (an unconditional model) the scale must be 1.
    """
    scale = check_guidance_scale(scale, conditional=labels is not None)
    if scale == 1.0:
        return fn(*inputs, labels)
    if null_label is None:
        raise ValueError(f"guidance_scale={scale} needs null_label (the unconditional class id)")
    null = torch.full_like(labels, null_label)
    if scale == 0.0:
        return fn(*inputs, null)
    cond, uncond = fn(*(torch.cat([x, x]) for x in inputs), torch.cat([labels, null])).float().chunk(2)
    return uncond + scale * (cond - uncond)
