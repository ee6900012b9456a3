"""Noise-conditional classifier ``(x_t, t) -> logits`` over diffused latents (Dhariwal & Nichol, 2021).

The encoder half of :class:`~latentgen.nets.unet.UNet` (its sinusoidal time embedding, residual blocks
with scale-shift conditioning and stride-2 downsampling), then global average pooling over every
position, LayerNorm, SiLU and a linear head. Its spatial layers are the UNet's, so it takes what the
UNet takes. The features are normalised after pooling, not before: on a small latent grid, a
GroupNorm with few channels per group would standardise each channel over its few positions and
erase the channel means that pooling reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from latentgen.nets.unet import Block, check_sizes, timestep_embedding


class LatentClassifierNet(nn.Module):
    """Logits ``[B, num_classes]`` of the noisy latents ``x_t`` ``[B, C, *grid]`` at timesteps ``t`` ``[B]``.

    ``attention_heads`` adds self-attention after the residual blocks of the coarsest level (None: none).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_heads: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_sizes(in_channels, base_channels, num_res_blocks, channel_mults)
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        self.in_channels, self.num_classes, self.base_channels = in_channels, num_classes, base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        chans = [base_channels * int(m) for m in channel_mults]
        last = len(chans) - 1
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = chans[0]
        for level, out_ch in enumerate(chans):
            heads = attention_heads if level == last else None
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(Block(ch, out_ch, emb_dim, dropout, heads))
                ch = out_ch
            self.levels.append(blocks)
            if level != last:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.out_norm = nn.LayerNorm(ch)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim < 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [B, {self.in_channels}, *grid], got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [{x.shape[0]}] (one timestep per latent), got {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        h = self.conv_in(x)
        for level, blocks in enumerate(self.levels):
            for block in blocks:
                h = block(h, emb)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = h.flatten(2).mean(-1)  # global average pooling over every position
        return self.head(F.silu(self.out_norm(h)))
