"""Noise schedulers of the latent DDPM: diffusers' schedulers built from a model's variance schedule.

``make_scheduler(name, ...)`` returns a diffusers scheduler (``add_noise``, ``set_timesteps``,
``step``, ``scale_model_input``) whose beta table is exactly the model's :class:`VarianceSchedule`
(passed as ``trained_betas``), so a checkpoint samples with any of the solvers below whatever
diffusers' own named schedules do. Training uses the same table through ``add_noise`` and
:func:`training_target`.

Samplers (``sampling.sampler``):

=========  =========================================  ==========================  ==============
name       diffusers class                            network calls for n steps   stochastic
=========  =========================================  ==========================  ==============
ddpm       DDPMScheduler (posterior variance)         n                           yes
ddim       DDIMScheduler (``eta`` = 0 deterministic)  n                           eta > 0
dpmpp_2m   DPMSolverMultistepScheduler, DPM-Solver++  n                           no
           (2M, data prediction)
unipc      UniPCMultistepScheduler (bh2, order 2)     n                           no
euler      EulerDiscreteScheduler                     n                           no
heun       HeunDiscreteScheduler (2nd order)          2n - 1                      no
=========  =========================================  ==========================  ==============

Timesteps are spaced ``trailing`` (Lin et al. 2024, "Common diffusion noise schedules and sample
steps are flawed"): the first step starts at t = T-1 whatever n is, which few-step sampling needs
(diffusers' ``linspace`` spacing for DDIM starts at T - T/n and skips the noisiest part).
"""

from __future__ import annotations

import inspect
from typing import Any

import diffusers
import torch
from torch import Tensor

from latentgen.diffusion.schedules import VarianceSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {"variance_type": "fixed_small", "clip_sample": False}),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "final_sigmas_type": "zero"}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2", "final_sigmas_type": "zero"}),
    "euler": ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}),
    "heun": ("HeunDiscreteScheduler", {"clip_sample": False}),
}
TIMESTEP_SPACING = "trailing"


def make_scheduler(sampler: str = "ddpm", num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                   prediction_type: str = "epsilon") -> Any:
    """The diffusers scheduler ``sampler`` over the named variance schedule (see the module docstring)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not known; use one of {', '.join(SAMPLERS)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r} is not known; use one of {PREDICTION_TYPES}")
    betas = VarianceSchedule(beta_schedule, num_train_timesteps).betas
    cls_name, options = SAMPLERS[sampler]
    return getattr(diffusers, cls_name)(
        num_train_timesteps=num_train_timesteps, trained_betas=betas.numpy(), prediction_type=prediction_type,
        timestep_spacing=TIMESTEP_SPACING, **options,
    )


def sampler_name(scheduler: Any) -> str:
    """The ``sampling.sampler`` name of a scheduler built by :func:`make_scheduler`."""
    for name, (cls_name, _) in SAMPLERS.items():
        if type(scheduler).__name__ == cls_name:
            return name
    raise ValueError(f"{type(scheduler).__name__} is not one of latentgen's samplers ({', '.join(SAMPLERS)})")


def network_calls(scheduler: Any, num_inference_steps: int) -> int:
    """How many denoiser evaluations ``num_inference_steps`` steps of ``scheduler`` take."""
    scheduler.set_timesteps(num_inference_steps)
    return len(scheduler.timesteps)


def step_kwargs(scheduler: Any, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
    """The optional ``step`` arguments this scheduler takes: its noise generator and DDIM's ``eta``."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in params:
        kwargs["generator"] = generator
    if "eta" in params:
        kwargs["eta"] = eta
    elif eta:
        raise ValueError(f"eta={eta} applies to the ddim sampler only; {sampler_name(scheduler)} has no eta "
                         "(set sampling.eta=0)")
    return kwargs


def training_target(scheduler: Any, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """Regression target of the scheduler's ``prediction_type``: noise, x0, or velocity."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, timesteps)


def _abar(scheduler: Any, timesteps: Tensor, ref: Tensor) -> Tensor:
    abar = scheduler.alphas_cumprod.to(ref.device, torch.float64)[timesteps.long()]
    return abar.reshape(-1, *([1] * (ref.ndim - 1)))


def to_epsilon(scheduler: Any, model_output: Tensor, x_t: Tensor, timesteps: Tensor) -> Tensor:
    """The noise a ``prediction_type`` output implies at the (variance-preserving) ``x_t``."""
    abar = _abar(scheduler, timesteps, x_t)
    out, x = model_output.double(), x_t.double()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        eps = out
    elif kind == "sample":
        eps = (x - abar.sqrt() * out) / (1 - abar).sqrt()
    else:
        eps = (1 - abar).sqrt() * x + abar.sqrt() * out
    return eps.to(model_output.dtype)


def from_epsilon(scheduler: Any, eps: Tensor, x_t: Tensor, timesteps: Tensor) -> Tensor:
    """The ``prediction_type`` output that implies noise ``eps`` at ``x_t`` (inverse of :func:`to_epsilon`)."""
    abar = _abar(scheduler, timesteps, x_t)
    e, x = eps.double(), x_t.double()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        out = e
    else:
        x0 = (x - (1 - abar).sqrt() * e) / abar.sqrt()
        out = x0 if kind == "sample" else abar.sqrt() * e - (1 - abar).sqrt() * x0
    return out.to(eps.dtype)
