"""Ancestral sampling for autoregressive priors (GPT transformer and Gated PixelCNN).

Each generated position consumes exactly one uniform draw from ``generator``
(inverse-CDF sampling), so cached and uncached GPT sampling produce the same
tokens for the same seed.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from latentgen.nets.checks import check_labels
from latentgen.nets.pixelcnn import GatedPixelCNN
from latentgen.nets.transformer import CausalTransformer

__all__ = ["filter_logits", "sample_from_logits", "sample_gpt", "sample_pixelcnn"]


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to ``-inf`` along the last dim.

    ``top_k`` keeps the k largest logits (ties with the k-th value are kept);
    ``top_p`` then keeps the smallest set of most likely tokens whose
    probability mass reaches ``top_p`` (the most likely token always stays).
    """
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}; pass None to disable it")
        if top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}; pass None to disable it")
        if top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            mass_before = torch.cumsum(probs, dim=-1) - probs
            drop_sorted = mass_before >= top_p
            drop_sorted[..., 0] = False
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_from_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one index per row of ``logits`` [B, V] using a single uniform per row."""
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    probs = torch.softmax(logits, dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    cdf = cdf / cdf[..., -1:]  # last entry exactly 1, so u < 1 always finds an index
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device, dtype=cdf.dtype)
    # First index with cdf > u: zero-probability tokens are never picked.
    return torch.searchsorted(cdf.contiguous(), u, right=True).squeeze(-1)


def _check_sampling_args(
    num_samples: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; use a small value such as 1e-3 "
            "for near-greedy decoding"
        )
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}; pass None to disable it")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}; pass None to disable it")


def _prepare_labels(
    labels: torch.Tensor | int | None,
    num_samples: int,
    num_classes: int | None,
    device: torch.device,
) -> torch.Tensor | None:
    if isinstance(labels, int):
        labels = torch.full((num_samples,), labels, dtype=torch.long)
    check_labels(labels, num_samples, num_classes, check_range=False)  # the net checks the ids once
    return None if labels is None else labels.to(device=device, dtype=torch.long)


def _prepare_prefix(
    prefix: torch.Tensor | None, num_samples: int, seq_len: int, device: torch.device
) -> torch.Tensor:
    if prefix is None:
        return torch.zeros(num_samples, 0, dtype=torch.long, device=device)
    if prefix.dim() != 2 or prefix.shape[0] != num_samples:
        raise ValueError(
            f"prefix must have shape [{num_samples}, N] (one row per sample), "
            f"got {tuple(prefix.shape)}"
        )
    if prefix.shape[1] > seq_len:
        raise ValueError(
            f"prefix length {prefix.shape[1]} exceeds the sequence length {seq_len}; "
            "crop the prefix"
        )
    return prefix.to(device=device, dtype=torch.long)


@torch.no_grad()
def sample_gpt(
    net: CausalTransformer,
    num_samples: int,
    labels: torch.Tensor | int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    prefix: torch.Tensor | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample token sequences [num_samples, seq_len] from a ``CausalTransformer``.

    The first ``N`` tokens are copied from ``prefix`` [num_samples, N]; the
    rest are generated. With ``use_cache`` the KV cache is used, otherwise the
    full forward pass is rerun every step; both give identical tokens for the
    same ``generator`` state.
    """
    _check_sampling_args(num_samples, temperature, top_k, top_p)
    device = net.pos_emb.device
    labels = _prepare_labels(labels, num_samples, net.num_classes, device)
    prefix = _prepare_prefix(prefix, num_samples, net.seq_len, device)
    n_prefix = prefix.shape[1]
    seq = torch.zeros(num_samples, net.seq_len, dtype=torch.long, device=device)
    seq[:, :n_prefix] = prefix
    was_training = net.training
    net.eval()
    try:
        cache = net.init_cache(num_samples) if use_cache else None
        steps = range(n_prefix, net.seq_len)
        for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
            # the first step checks the prefix and labels; later inputs are the sampler's own tokens
            check = i == n_prefix
            if cache is not None:
                new = seq[:, :i] if cache.length == 0 else seq[:, i - 1 : i]
                logits = net.decode(new, cache, labels, check_range=check)
            else:
                logits = net(seq[:, : i + 1], labels, check_range=check)[:, i]
            seq[:, i] = sample_from_logits(logits, temperature, top_k, top_p, generator)
    finally:
        net.train(was_training)
    return seq


@torch.no_grad()
def sample_pixelcnn(
    net: GatedPixelCNN,
    num_samples: int,
    grid_shape: tuple[int, int],
    labels: torch.Tensor | int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    prefix: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample token grids [num_samples, H, W] from a ``GatedPixelCNN`` in raster order.

    The first ``N`` positions (row-major) are copied from ``prefix``
    [num_samples, N]; the rest are generated one forward pass per position.
    """
    _check_sampling_args(num_samples, temperature, top_k, top_p)
    if len(grid_shape) != 2 or min(grid_shape) < 1:
        raise ValueError(f"grid_shape must be (H, W) with H, W >= 1, got {grid_shape}")
    height, width = int(grid_shape[0]), int(grid_shape[1])
    device = net.embedding.weight.device
    labels = _prepare_labels(labels, num_samples, net.num_classes, device)
    prefix = _prepare_prefix(prefix, num_samples, height * width, device)
    n_prefix = prefix.shape[1]
    flat = torch.zeros(num_samples, height * width, dtype=torch.long, device=device)
    flat[:, :n_prefix] = prefix
    grid = flat.view(num_samples, height, width)
    was_training = net.training
    net.eval()
    try:
        steps = range(n_prefix, height * width)
        for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
            row, col = divmod(i, width)
            # the first step checks the prefix and labels; later inputs are the sampler's own tokens
            logits = net(grid, labels, check_range=i == n_prefix)[:, :, row, col]
            flat[:, i] = sample_from_logits(logits, temperature, top_k, top_p, generator)
    finally:
        net.train(was_training)
    return grid
