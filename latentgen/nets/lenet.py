"""LeNet-style CNN (conv-pool-conv-pool-fc-fc): an MNIST-class classifier and feature extractor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LeNet(nn.Module):
    """``[B, C, S, S]`` images in [0, 1] -> logits ``[B, num_classes]``.

    Two "same"-padded conv + ReLU + 2x2 max-pool blocks (28 -> 14 -> 7, 32 -> 16 -> 8), then
    ``fc(flatten) -> ReLU`` giving the ``feature_dim`` penultimate features returned by
    ``features`` (used for FID/KID-LeNet), dropout, and the linear classification head.
    BatchNorm after each conv is optional and makes a few epochs of AdamW reach >99% on MNIST.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 5,
        feature_dim: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 2 or min(channels) < 1:
            raise ValueError(f"channels={list(channels)}: give two positive conv widths, e.g. [16, 32]")
        if image_size < 4 or image_size % 4:
            raise ValueError(
                f"image_size={image_size}: must be a multiple of 4 (two 2x2 poolings), e.g. 28 or 32"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size}: use an odd size such as 3 or 5")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: must be in [0, 1)")
        self.in_channels, self.image_size = in_channels, image_size
        self.num_classes, self.feature_dim = num_classes, feature_dim

        layers: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            layers.append(nn.Conv2d(prev, width, kernel_size, padding=kernel_size // 2, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            prev = width
        self.conv = nn.Sequential(*layers)
        side = image_size // 4
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(prev * side * side, feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"LeNet built for images of shape [B, {', '.join(map(str, expected))}] got "
                f"{tuple(x.shape)}: set in_channels/image_size to the data's (e.g. 3 and 32 for CIFAR-10)"
            )
        if not x.is_floating_point():
            raise TypeError(f"LeNet expects float images in [0, 1], got {x.dtype}: divide uint8 images by 255")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations ``[B, feature_dim]`` (after the ReLU, before dropout)."""
        self._check(x)
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by an integer offset in ``[-max_shift, max_shift]`` per axis, zero fill."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device)[None] + offsets[0][:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None] + offsets[1][:, None])[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]
