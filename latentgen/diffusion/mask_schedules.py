"""Schedules ``gamma(r)`` shared by the discrete diffusion processes.

Every schedule satisfies ``gamma(0) = 1``, ``gamma(1) = 0`` and is monotone non-increasing in
between. Absorbing diffusion masks a fraction ``gamma(r)`` of the tokens at decoding progress
``r``; uniform diffusion keeps each token with probability ``gamma(t)`` at noise time ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["SCHEDULES", "check_schedule", "gamma"]

R = TypeVar("R", Tensor, float)

_FLOAT_FNS: dict[str, Callable[[float], float]] = {
    "cosine": lambda r: math.cos(0.5 * math.pi * r),
    "arccos": lambda r: 2.0 / math.pi * math.acos(r),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r * r,
}

_TENSOR_FNS: dict[str, Callable[[Tensor], Tensor]] = {
    "cosine": lambda r: torch.cos(0.5 * math.pi * r),
    "arccos": lambda r: 2.0 / math.pi * torch.arccos(r),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r * r,
}

SCHEDULES: tuple[str, ...] = tuple(_FLOAT_FNS)


def check_schedule(name: str) -> str:
    """Return ``name`` if it is a known schedule, else raise a ``ValueError``."""
    if name not in _FLOAT_FNS:
        raise ValueError(f"Unknown mask schedule {name!r}; choose one of {', '.join(SCHEDULES)}.")
    return name


def gamma(name: str, r: R) -> R:
    """``gamma(r)`` of schedule ``name``.

    ``r`` is clamped to ``[0, 1]``; the endpoints are exact (``gamma(0) = 1``,
    ``gamma(1) = 0``) so that no floating-point residue leaves a token masked or noised.
    Tensors are evaluated element-wise and keep their (floating) dtype.
    """
    check_schedule(name)
    if isinstance(r, Tensor):
        x = r if r.is_floating_point() else r.float()
        x = x.clamp(0.0, 1.0)
        out = _TENSOR_FNS[name](x).clamp(0.0, 1.0)
        out = torch.where(x <= 0.0, torch.ones_like(out), out)
        return torch.where(x >= 1.0, torch.zeros_like(out), out)
    x_f = min(max(float(r), 0.0), 1.0)
    if x_f <= 0.0:
        return 1.0
    if x_f >= 1.0:
        return 0.0
    return min(max(_FLOAT_FNS[name](x_f), 0.0), 1.0)
