"""Residual convolutional encoder and decoder of the VQ-VAE (plain nn.Modules)."""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """ReLU -> 3x3 conv -> ReLU -> 1x1 conv, added to the input."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _num_halvings(downsample: int) -> int:
    n = int(round(math.log2(downsample))) if downsample > 0 else -1
    if downsample < 1 or 2**n != downsample:
        raise ValueError(
            f"downsample={downsample}: the downsampling factor must be a power of two "
            "(1, 2, 4, 8), e.g. 4 turns 28x28 MNIST into a 7x7 latent grid"
        )
    return n


def _level_channels(base: int, hidden: int, n: int) -> list[int]:
    """Channels from full resolution down to the latent grid: ``base`` above it, ``hidden`` at it."""
    return [base] * n + [hidden]


class Encoder(nn.Module):
    """Images [B, C, H, W] -> continuous latents [B, latent_dim, H/f, W/f].

    Full-resolution levels use ``base_channels`` (cheap), the latent-resolution level
    ``hidden_channels`` (where the residual blocks work).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 64,
        res_channels: int = 32,
        num_res_blocks: int = 2,
        latent_dim: int = 32,
        downsample: int = 4,
        base_channels: int | None = None,
    ) -> None:
        super().__init__()
        n = _num_halvings(downsample)
        ch = _level_channels(base_channels or hidden_channels, hidden_channels, n)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch[0], 3, padding=1)]
        for i in range(n):
            layers += [nn.ReLU(), nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)]
        layers += [ResidualBlock(hidden_channels, res_channels) for _ in range(num_res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(hidden_channels, latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Latents [B, latent_dim, h, w] -> images [B, C, h*f, w*f] (unbounded; the model maps to [0, 1])."""

    def __init__(
        self,
        out_channels: int,
        hidden_channels: int = 64,
        res_channels: int = 32,
        num_res_blocks: int = 2,
        latent_dim: int = 32,
        downsample: int = 4,
        base_channels: int | None = None,
    ) -> None:
        super().__init__()
        n = _num_halvings(downsample)
        ch = _level_channels(base_channels or hidden_channels, hidden_channels, n)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, hidden_channels, 3, padding=1)]
        layers += [ResidualBlock(hidden_channels, res_channels) for _ in range(num_res_blocks)]
        for i in range(n):
            layers += [nn.ReLU(), nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(ch[-1], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
