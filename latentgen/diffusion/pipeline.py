"""Reverse-diffusion sampling loop in latent space."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentgen.diffusion.schedulers import NoiseScheduler


@torch.no_grad()
def sample_latents(
    model_fn: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    scheduler: NoiseScheduler,
    shape: tuple[int, ...],
    num_inference_steps: int,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw latents of ``shape`` by denoising N(0, I) noise over ``scheduler.timesteps``.

    ``model_fn(x, t, labels)`` receives ``t`` as a LongTensor[B] and returns the scheduler's
    ``prediction_type`` output.  ``set_timesteps(num_inference_steps)`` is called here.
    """
    if len(shape) < 2 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be (B, ...) with positive sizes, got {tuple(shape)}.")
    if device is None:
        device = labels.device if labels is not None else torch.device("cpu")
    device = torch.device(device)
    batch = int(shape[0])
    labels = labels.to(device) if labels is not None else None  # the net checks them

    scheduler.set_timesteps(num_inference_steps)
    noise_device = generator.device if generator is not None else device
    x = torch.randn(tuple(shape), generator=generator, device=noise_device, dtype=dtype)
    x = x.to(device)
    steps = scheduler.timesteps.tolist()
    for t in tqdm(steps, desc="sampling", disable=not progress, leave=False):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        model_output = model_fn(x, t_batch, labels)
        x = scheduler.step(model_output, t, x, generator=generator).prev_sample
    return x
