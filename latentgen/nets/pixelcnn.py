"""Gated PixelCNN prior over VQ token grids (van den Oord et al., 2016).

The network uses separate vertical and horizontal stacks so its receptive
field has no blind spot: the vertical stack sees every row above the current
one (and the current row, which is shifted away before it reaches the
horizontal stack), the horizontal stack sees the pixels left of the current
position in the current row. Generation order is row-major raster order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.nets.checks import check_id_range, check_labels

__all__ = ["GatedPixelCNN", "GatedLayer"]


def _gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation ``tanh(a) * sigmoid(b)`` over the two channel halves."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer with a vertical and a horizontal stack.

    Args:
        channels: number of feature channels of both stacks.
        kernel_size: odd kernel width (>= 3).
        first: if True the horizontal convolution excludes the current
            position (mask type A) and the horizontal stack has no residual
            connection; otherwise the current position is included (type B).
        num_classes: number of classes for conditioning, or None.
    """

    def __init__(
        self, channels: int, kernel_size: int, first: bool, num_classes: int | None = None
    ) -> None:
        super().__init__()
        self.half = kernel_size // 2
        self.first = first
        # Vertical: rows r-half..r, columns c-half..c+half.
        self.v_conv = nn.Conv2d(channels, 2 * channels, (self.half + 1, kernel_size))
        # Horizontal: columns c-half..c-1 (type A) or c-half..c (type B).
        h_width = self.half if first else self.half + 1
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, h_width))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_res = nn.Conv2d(channels, channels, 1)
        self.h_skip = nn.Conv2d(channels, channels, 1)
        self.cond = nn.Embedding(num_classes, 4 * channels) if num_classes is not None else None

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(v_out, h_out, skip)`` for stacks ``v``, ``h`` of shape [B, C, H, W]."""
        width = h.shape[-1]
        v_pre = self.v_conv(F.pad(v, (self.half, self.half, self.half, 0)))
        # Shift down by one row so position (r, c) only receives rows < r.
        v_shifted = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]
        h_pre = self.h_conv(F.pad(h, (self.half, 0, 0, 0)))[..., :width]
        h_pre = h_pre + self.v_to_h(v_shifted)
        if self.cond is not None:
            if cond is None:
                raise ValueError("labels are required for a class-conditional GatedPixelCNN")
            cv, ch = self.cond(cond)[:, :, None, None].chunk(2, dim=1)
            v_pre = v_pre + cv
            h_pre = h_pre + ch
        v_out = _gate(v_pre)
        h_gated = _gate(h_pre)
        skip = self.h_skip(h_gated)
        h_out = self.h_res(h_gated)
        if not self.first:
            h_out = h_out + h
        return v_out, h_out, skip


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN without blind spot over token grids.

    Args:
        num_tokens: codebook size K; inputs are indices in [0, K).
        num_classes: number of classes for conditioning, or None.
        hidden_channels: channels of both stacks.
        num_layers: number of gated layers (the first one has mask type A).
        kernel_size: odd kernel size (>= 3).
    """

    def __init__(
        self,
        num_tokens: int,
        num_classes: int | None = None,
        hidden_channels: int = 64,
        num_layers: int = 8,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if num_tokens < 2:
            raise ValueError(f"num_tokens must be >= 2, got {num_tokens}; use the codebook size")
        if num_classes is not None and num_classes < 1:
            raise ValueError(
                f"num_classes must be >= 1 or None, got {num_classes}; pass None for unconditional"
            )
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd and >= 3, got {kernel_size}; e.g. use 3 or 5"
            )
        self.num_tokens = num_tokens
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_tokens, hidden_channels)
        self.layers = nn.ModuleList(
            GatedLayer(hidden_channels, kernel_size, first=i == 0, num_classes=num_classes)
            for i in range(num_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, num_tokens, 1),
        )

    def _check_inputs(self, tokens: torch.Tensor, labels: torch.Tensor | None, check_range: bool) -> None:
        if tokens.dim() != 3:
            raise ValueError(
                f"tokens must have shape [B, H, W], got {tuple(tokens.shape)}; "
                "reshape flat sequences to the latent grid"
            )
        if check_range:
            check_id_range("tokens", tokens, self.num_tokens, "check num_tokens matches the codebook")
        check_labels(labels, tokens.shape[0], self.num_classes, check_range=check_range)

    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, *, check_range: bool = True
    ) -> torch.Tensor:
        """Return logits [B, num_tokens, H, W] for token grid ``tokens`` [B, H, W].

        The logits at (r, c) depend only on tokens strictly before (r, c) in
        row-major order (and on ``labels``). ``check_range=False`` skips the id range checks (a
        host sync each) for callers that checked their ids already, such as the sampling loop.
        """
        self._check_inputs(tokens, labels, check_range)
        x = self.embedding(tokens).permute(0, 3, 1, 2)
        v, h = x, x
        skips = torch.zeros_like(x)
        for layer in self.layers:
            v, h, skip = layer(v, h, labels)
            skips = skips + skip
        return self.head(skips + h)
