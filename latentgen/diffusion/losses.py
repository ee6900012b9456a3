"""Diffusion training losses and Min-SNR loss weighting (Hang et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def min_snr_weight(snr: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Per-sample Min-SNR-gamma weights expressed for the given ``prediction_type``.

    epsilon: min(snr, gamma) / snr;  sample (x0): min(snr, gamma);
    v_prediction: min(snr, gamma) / (snr + 1).
    """
    if not gamma > 0:
        raise ValueError(f"min-SNR gamma must be > 0 (5.0 is the usual choice), got {gamma}.")
    if prediction_type not in _PREDICTION_TYPES:
        raise ValueError(
            f"Unknown prediction_type {prediction_type!r}; use one of {_PREDICTION_TYPES}."
        )
    if bool((snr < 0).any()):
        raise ValueError("snr must be non-negative; compute it as abar / (1 - abar).")
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        # min(snr, g) / snr == 1 wherever snr <= g; written this way it is finite at snr = 0.
        return torch.where(snr > gamma, gamma / snr.clamp(min=gamma), torch.ones_like(snr))
    if prediction_type == "sample":
        return clipped
    return clipped / (snr + 1)


def diffusion_loss(model_output: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared error averaged per sample, then averaged over the batch as mean(w_i * l_i)."""
    if model_output.shape != target.shape:
        raise ValueError(
            f"model_output shape {tuple(model_output.shape)} != target shape "
            f"{tuple(target.shape)}; the network must predict a tensor shaped like its input."
        )
    err = (model_output.float() - target.float()) ** 2
    per_sample = err.reshape(err.shape[0], -1).mean(dim=1)
    if weights is None:
        return per_sample.mean()
    weights = weights.to(per_sample).reshape(-1)
    if weights.shape != per_sample.shape:
        raise ValueError(
            f"weights must hold one value per sample ({per_sample.shape[0]}), "
            f"got shape {tuple(weights.shape)}."
        )
    return (weights * per_sample).mean()
