"""Variance (beta) schedules for Gaussian diffusion: the tables behind the noise schedulers."""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULE_NAMES = ("linear", "cosine")


def _linear_betas(num_timesteps: int) -> Tensor:
    """Ho et al. (2020): 1e-4 .. 0.02 for T=1000, rescaled so other T give the same SNR range."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def _cosine_betas(num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021): abar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), betas clipped."""

    def f(t: Tensor) -> Tensor:
        return torch.cos((t / num_timesteps + offset) / (1.0 + offset) * math.pi / 2.0) ** 2

    steps = torch.arange(num_timesteps + 1, dtype=torch.float64)
    abar = f(steps) / f(torch.zeros((), dtype=torch.float64))
    betas = 1.0 - abar[1:] / abar[:-1]
    return betas.clamp(max=max_beta)


def make_betas(name: str, num_timesteps: int) -> Tensor:
    """Return the float64 betas ``[T]`` of the named schedule ("linear" or "cosine")."""
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}.")
    if name == "linear":
        betas = _linear_betas(num_timesteps)
    elif name == "cosine":
        betas = _cosine_betas(num_timesteps)
    else:
        raise ValueError(f"Unknown beta schedule {name!r}; use one of {SCHEDULE_NAMES}.")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(
            f"Schedule {name!r} with num_timesteps={num_timesteps} gives betas outside (0, 1); "
            "use more timesteps."
        )
    return betas


class VarianceSchedule:
    """The tables of a variance schedule (float64): betas and cumulative alphas (abar).

    The noise schedulers of :mod:`latentgen.diffusion.schedulers` sample with these tables.
    """

    def __init__(self, name: str = "linear", num_timesteps: int = 1000) -> None:
        self.name = name
        self.num_timesteps = num_timesteps
        self.betas: Tensor = make_betas(name, num_timesteps)
        self.alphas_cumprod: Tensor = torch.cumprod(1.0 - self.betas, dim=0)

    def __repr__(self) -> str:
        return f"VarianceSchedule(name={self.name!r}, num_timesteps={self.num_timesteps})"
