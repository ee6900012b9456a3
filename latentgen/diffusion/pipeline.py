"""Reverse-diffusion sampling loop in latent space, with classifier-free and classifier guidance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentgen.diffusion.schedulers import from_epsilon, step_kwargs, to_epsilon

ModelFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
GradFn = Callable[[Tensor, Tensor, Tensor], Tensor]
# Classifier guidance is left out of steps whose x_t is almost pure noise (abar_t below this, e.g. only
# t = T-1 of the cosine schedule, abar ~ 2e-9). There x_t holds no class information, so a classifier's
# gradient is noise, and the sampler's x0 estimate multiplies any shift of the noise by
# sqrt((1 - abar_t) / abar_t) (~2e4 at abar = 2e-9): a single step would throw samples far off the data.
GUIDANCE_MIN_ALPHA_BAR = 1e-3


def classifier_guided(scheduler: Any, model_output: Tensor, x_t: Tensor, t: Tensor, grad_log_p: Tensor,
                      scale: float) -> Tensor:
    """``model_output`` with ``scale * grad log p(y | x_t)`` added to the score (Dhariwal & Nichol, 2021).

    The score is -eps / sqrt(1 - abar_t), so the guided noise is eps - sqrt(1 - abar_t) * scale * grad;
    it is returned in the model's own parameterisation so that any scheduler can step with it. Steps with
    abar_t < ``GUIDANCE_MIN_ALPHA_BAR`` are left unguided.
    """
    eps = to_epsilon(scheduler, model_output, x_t, t).double()
    abar = scheduler.alphas_cumprod.to(x_t.device, torch.float64)[t.long()].reshape(-1, *([1] * (x_t.ndim - 1)))
    active = (abar >= GUIDANCE_MIN_ALPHA_BAR).double()  # see GUIDANCE_MIN_ALPHA_BAR
    eps = eps - active * (1 - abar).sqrt() * scale * grad_log_p.double()
    return from_epsilon(scheduler, eps, x_t, t).to(model_output.dtype)


@torch.no_grad()
def sample_latents(
    model_fn: ModelFn,
    scheduler: Any,
    shape: tuple[int, ...],
    num_inference_steps: int,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
    eta: float = 0.0,
    classifier_grad: GradFn | None = None,
    classifier_scale: float = 0.0,
) -> Tensor:
    """Draw latents of ``shape`` by denoising Gaussian noise over ``scheduler.timesteps``.

    ``model_fn(x, t, labels)`` receives the variance-preserving ``x_t`` and ``t`` as a LongTensor[B] and
    returns the scheduler's ``prediction_type`` output. With ``classifier_scale > 0``,
    ``classifier_grad(x_t, t, labels)`` gives grad_x log p(labels | x_t), added to the score every step.
    """
    if len(shape) < 2 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be (B, ...) with positive sizes, got {tuple(shape)}.")
    total = scheduler.config.num_train_timesteps
    if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= total:
        raise ValueError(f"num_inference_steps must be an int in [1, {total}], got {num_inference_steps!r}")
    if classifier_scale:
        if classifier_grad is None:
            raise ValueError(f"classifier_scale={classifier_scale} needs a classifier (sampling.classifier)")
        if labels is None:
            raise ValueError(f"classifier_scale={classifier_scale} needs the class labels to guide towards")
    if device is None:
        device = labels.device if labels is not None else torch.device("cpu")
    device = torch.device(device)
    batch = int(shape[0])
    labels = labels.to(device) if labels is not None else None  # the net checks them

    scheduler.set_timesteps(num_inference_steps, device=device)
    kwargs = step_kwargs(scheduler, generator, eta)
    noise_device = generator.device if generator is not None else device
    x = torch.randn(tuple(shape), generator=generator, device=noise_device, dtype=dtype).to(device)
    x = x * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
        x_t = scheduler.scale_model_input(x, t)  # the variance-preserving x_t (Euler/Heun keep x * sigma)
        t_batch = torch.full((batch,), int(round(float(t))), dtype=torch.long, device=device)
        model_output = model_fn(x_t, t_batch, labels)
        if classifier_scale:
            grad = classifier_grad(x_t, t_batch, labels)
            model_output = classifier_guided(scheduler, model_output, x_t, t_batch, grad, classifier_scale)
        x = scheduler.step(model_output.to(x.dtype), t, x, **kwargs).prev_sample
    return x
