"""Noise schedulers: forward process (``add_noise``) and reverse steps (DDPM, DDIM).

Schedulers hold no learnable state; they are rebuilt from config.  Arithmetic is done in
float64 (float32 on devices without float64 support) and results are cast back to the
sample's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from latentgen.diffusion.schedules import VarianceSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class StepOutput:
    """Result of one reverse step."""

    prev_sample: Tensor
    pred_original_sample: Tensor


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _randn_like(sample: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``sample``, drawn on the generator's device."""
    device = generator.device if generator is not None else sample.device
    noise = torch.randn(sample.shape, generator=generator, device=device, dtype=sample.dtype)
    return noise.to(sample.device)


class NoiseScheduler:
    """Base of the samplers (DDPM, DDIM) over a ``VarianceSchedule``: forward-process maths, reverse
    steps and parameterisation conversions."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"Unknown prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}."
            )
        if clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}.")
        tables = VarianceSchedule(beta_schedule, num_train_timesteps)
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.clip_sample_range = float(clip_sample_range)
        self.betas = tables.betas
        self.alphas_cumprod = tables.alphas_cumprod
        self.num_inference_steps: int = num_train_timesteps
        self.timesteps: Tensor = torch.empty(0, dtype=torch.long)
        self._prev: dict[int, int] = {}
        self.set_timesteps(num_train_timesteps)

    # ----------------------------------------------------------------- timesteps
    def set_timesteps(self, num_inference_steps: int) -> None:
        """Use ``num_inference_steps`` evenly spaced timesteps from T-1 down to 0."""
        total = self.num_train_timesteps
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= total:
            raise ValueError(
                f"num_inference_steps must be an int in [1, {total}], got {num_inference_steps!r}."
            )
        if num_inference_steps == 1:
            steps = torch.tensor([total - 1], dtype=torch.float64)
        else:
            steps = torch.linspace(total - 1, 0, num_inference_steps, dtype=torch.float64)
        self.timesteps = steps.round().long()
        self.num_inference_steps = num_inference_steps
        ts = self.timesteps.tolist()
        self._prev = {t: (ts[i + 1] if i + 1 < len(ts) else -1) for i, t in enumerate(ts)}

    def previous_timestep(self, timestep: int) -> int:
        """The timestep that follows ``timestep`` in the current schedule (-1 after the last)."""
        t = int(timestep)
        if t not in self._prev:
            raise ValueError(
                f"Timestep {t} is not in the current schedule of {self.num_inference_steps} "
                "steps; iterate over scheduler.timesteps after calling set_timesteps()."
            )
        return self._prev[t]

    def _abar(self, t: int) -> float:
        """abar_t as a Python float, with abar_{-1} = 1."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def _gather(self, timesteps: Tensor | int, ref: Tensor) -> Tensor:
        """abar at ``timesteps`` shaped ``[B, 1, ...]`` to broadcast against ``ref``."""
        t = torch.as_tensor(timesteps, device=ref.device)
        if t.dtype.is_floating_point:
            raise ValueError(f"timesteps must be integer, got dtype {t.dtype}; cast with .long().")
        t = t.long()
        if bool(((t < 0) | (t >= self.num_train_timesteps)).any()):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got {t.tolist()}."
            )
        abar = self.alphas_cumprod.to(device=ref.device, dtype=_work_dtype(ref.device))[t]
        if abar.ndim == 1:
            abar = abar.reshape(-1, *([1] * (ref.ndim - 1)))
        return abar

    # ----------------------------------------------------------- forward process
    def add_noise(self, original: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Sample q(x_t | x_0): sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise."""
        abar = self._gather(timesteps, original)
        x = abar.sqrt() * original.to(abar.dtype) + (1 - abar).sqrt() * noise.to(abar.dtype)
        return x.to(original.dtype)

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Velocity target v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * x0 (``sample`` is x0)."""
        abar = self._gather(timesteps, sample)
        v = abar.sqrt() * noise.to(abar.dtype) - (1 - abar).sqrt() * sample.to(abar.dtype)
        return v.to(sample.dtype)

    def training_target(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Regression target for the configured ``prediction_type``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        return self.get_velocity(x0, noise, timesteps)

    # ------------------------------------------------------ parameterisations
    def predict_original(self, model_output: Tensor, sample: Tensor, t: Tensor | int) -> Tensor:
        """x0 implied by ``model_output`` at noisy ``sample`` x_t (no clipping)."""
        abar = self._gather(t, sample)
        out, x = model_output.to(abar.dtype), sample.to(abar.dtype)
        if self.prediction_type == "epsilon":
            x0 = (x - (1 - abar).sqrt() * out) / abar.sqrt()
        elif self.prediction_type == "sample":
            x0 = out
        else:
            x0 = abar.sqrt() * x - (1 - abar).sqrt() * out
        return x0.to(sample.dtype)

    def predict_epsilon(self, model_output: Tensor, sample: Tensor, t: Tensor | int) -> Tensor:
        """Noise implied by ``model_output`` at noisy ``sample`` x_t."""
        abar = self._gather(t, sample)
        out, x = model_output.to(abar.dtype), sample.to(abar.dtype)
        if self.prediction_type == "epsilon":
            eps = out
        elif self.prediction_type == "sample":
            eps = (x - abar.sqrt() * out) / (1 - abar).sqrt()
        else:
            eps = (1 - abar).sqrt() * x + abar.sqrt() * out
        return eps.to(sample.dtype)

    def _x0_and_eps(self, model_output: Tensor, sample: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """Work-dtype (x0, eps); with clipping, eps is recomputed from the clipped x0."""
        dtype = _work_dtype(sample.device)
        x0 = self.predict_original(model_output.to(dtype), sample.to(dtype), t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
            abar = self._abar(t)
            eps = (sample.to(dtype) - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        else:
            eps = self.predict_epsilon(model_output.to(dtype), sample.to(dtype), t)
        return x0, eps

    def step(
        self,
        model_output: Tensor,
        timestep: int,
        sample: Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Map x_t to x_{prev}; implemented by subclasses."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_train_timesteps={self.num_train_timesteps}, "
            f"beta_schedule={self.beta_schedule!r}, prediction_type={self.prediction_type!r}, "
            f"clip_sample={self.clip_sample}, num_inference_steps={self.num_inference_steps})"
        )


class DDPMScheduler(NoiseScheduler):
    """Ancestral sampling with the true posterior q(x_prev | x_t, x0).

    With fewer inference steps than training steps the chain is respaced: the step from t
    to its predecessor s uses beta = 1 - abar_t / abar_s (Nichol & Dhariwal, 2021).
    """

    def posterior_variance(self, timestep: int) -> float:
        """beta_tilde = (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s) for the current step."""
        t = int(timestep)
        abar_t, abar_s = self._abar(t), self._abar(self.previous_timestep(t))
        return (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)

    def step(
        self,
        model_output: Tensor,
        timestep: int,
        sample: Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Sample x_s ~ N(posterior mean from predicted x0, beta_tilde)."""
        t = int(timestep)
        s = self.previous_timestep(t)
        abar_t, abar_s = self._abar(t), self._abar(s)
        beta = 1 - abar_t / abar_s
        x0, _ = self._x0_and_eps(model_output, sample, t)
        coef_x0 = math.sqrt(abar_s) * beta / (1 - abar_t)
        coef_xt = math.sqrt(1 - beta) * (1 - abar_s) / (1 - abar_t)
        prev = coef_x0 * x0 + coef_xt * sample.to(x0.dtype)
        variance = self.posterior_variance(t)
        if variance > 0:
            prev = prev + math.sqrt(variance) * _randn_like(sample, generator).to(x0.dtype)
        return StepOutput(prev.to(sample.dtype), x0.to(sample.dtype))


class DDIMScheduler(NoiseScheduler):
    """DDIM (Song et al., 2021); ``eta=0`` is deterministic, ``eta=1`` matches DDPM's variance."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        eta: float = 0.0,
    ) -> None:
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}.")
        self.eta = float(eta)
        super().__init__(
            num_train_timesteps, beta_schedule, prediction_type, clip_sample, clip_sample_range
        )

    def sigma(self, timestep: int) -> float:
        """eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s) for the current step."""
        t = int(timestep)
        abar_t, abar_s = self._abar(t), self._abar(self.previous_timestep(t))
        return self.eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))

    def step(
        self,
        model_output: Tensor,
        timestep: int,
        sample: Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z."""
        t = int(timestep)
        abar_s = self._abar(self.previous_timestep(t))
        x0, eps = self._x0_and_eps(model_output, sample, t)
        sigma = self.sigma(t)
        direction = math.sqrt(max(1 - abar_s - sigma**2, 0.0))
        prev = math.sqrt(abar_s) * x0 + direction * eps
        if sigma > 0:
            prev = prev + sigma * _randn_like(sample, generator).to(x0.dtype)
        return StepOutput(prev.to(sample.dtype), x0.to(sample.dtype))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", eta={self.eta})"
