"""Small class-conditional U-Net for denoising latents of shape [B, C, H, W] (H, W may be odd)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentgen.nets.checks import check_labels


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) timesteps ``t`` of shape [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with scale-shift conditioning on the embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions with a residual connection."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or channels % heads != 0:
            raise ValueError(
                f"attention_heads={heads} must be >= 1 and divide the channel count {channels}; "
                "pick a divisor of base_channels * channel_mults[-1]."
            )
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Block(nn.Module):
    """A residual block optionally followed by self-attention."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, heads: int | None
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = AttentionBlock(out_ch, heads) if heads else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


def check_sizes(in_channels: int, base_channels: int, num_res_blocks: int, channel_mults) -> None:
    """The sizes a UNet-style encoder needs: positive channels and blocks, at least one resolution level."""
    if in_channels < 1 or base_channels < 1 or num_res_blocks < 1 or not channel_mults:
        raise ValueError(
            "in_channels, base_channels and num_res_blocks must be >= 1 and channel_mults "
            f"non-empty; got {in_channels}, {base_channels}, {num_res_blocks}, {list(channel_mults)}."
        )


class UNet(nn.Module):
    """Denoiser ``(x, t, labels) -> [B, out_channels, H, W]`` with optional class conditioning.

    Class ids run over ``0..num_classes-1``; id ``num_classes`` (``null_label``) is the
    unconditional token for classifier-free guidance and is used when ``labels`` is None.
    Downsampling is a stride-2 conv (7 -> 4), upsampling interpolates to the skip's size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 2,
        attention_heads: int = 4,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_sizes(in_channels, base_channels, num_res_blocks, channel_mults)
        if num_classes is not None and num_classes < 1:
            raise ValueError(
                f"num_classes must be >= 1 or None (unconditional), got {num_classes}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.base_channels = base_channels
        self.num_classes = num_classes
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

        chans = [base_channels * m for m in channel_mults]
        last = len(chans) - 1
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_chans, ch = [chans[0]], chans[0]
        for level, out_ch in enumerate(chans):
            heads = attention_heads if level == last else None
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(Block(ch, out_ch, emb_dim, dropout, heads))
                ch = out_ch
                skip_chans.append(ch)
            self.down.append(blocks)
            if level != last:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chans.append(ch)

        self.mid = nn.ModuleList(
            [
                Block(ch, ch, emb_dim, dropout, attention_heads),
                Block(ch, ch, emb_dim, dropout, None),
            ]
        )

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(chans))):
            heads = attention_heads if level == last else None
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(Block(ch + skip_chans.pop(), chans[level], emb_dim, dropout, heads))
                ch = chans[level]
            self.up.append(blocks)
            if level != 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))

        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(), nn.Conv2d(ch, self.out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def null_label(self) -> int | None:
        """Class id of the unconditional (dropped) label, or None for an unconditional net."""
        return self.num_classes

    def _embed(
        self, t: Tensor | float, labels: Tensor | None, batch: int, device: torch.device
    ) -> Tensor:
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}.")
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        check_labels(labels, batch, self.num_classes, null_ok=True, check_range=False)
        if self.class_emb is None:
            return emb
        if labels is None:
            labels = torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        return emb + self.class_emb(labels.long())

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Expected x of shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}."
            )
        emb = self._embed(t, labels, x.shape[0], x.device)
        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for level, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsample):
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")
                h = self.upsample[level](h)
        return self.out(h)
