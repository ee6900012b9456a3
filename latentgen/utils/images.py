"""Image grids without torchvision: tile a batch and save it as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile ``images`` [B, C, H, W] with values in [0, 1] into one [C, H', W'] image."""
    if images.dim() != 4:
        raise ValueError(f"make_grid expects [B, C, H, W] images, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    ncol = int(math.ceil(b / nrow))
    grid = torch.full(
        (c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), pad_value, dtype=images.dtype
    )
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """[C, H, W] tensor in [0, 1] -> PIL image (grey for C == 1), optionally enlarged ``scale`` times."""
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> Path:
    """Save a batch of [0, 1] images as one PNG grid; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    to_pil(make_grid(images.detach().cpu(), nrow=nrow), scale=scale).save(tmp, format="PNG")
    tmp.replace(path)
    return path
