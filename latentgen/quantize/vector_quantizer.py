"""Vector quantiser with EMA codebook updates, dead-code restart and optional k-means init.

API in the manner of ``vector-quantize-pytorch``: ``quantize(z) -> (z_q, indices, loss)`` and the
round trip ``indices_to_vectors(indices) -> vectors``.  Codebook statistics are reduced across DDP
ranks and restarts/initialisations are broadcast from rank 0, so every rank keeps the same codebook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _dist_ready():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _dist_ready():
        dist.broadcast(t, src=0)
    return t


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Plain Lloyd k-means on rows of ``x`` ([N, D]); returns ``k`` centroids ([k, D])."""
    n = x.shape[0]
    idx = torch.randperm(n, generator=generator, device="cpu")[: min(k, n)].to(x.device)
    centroids = x[idx]
    if centroids.shape[0] < k:  # fewer points than codes: repeat with jitter
        reps = x[torch.randint(0, n, (k - centroids.shape[0],), generator=generator).to(x.device)]
        centroids = torch.cat([centroids, reps + 1e-3 * torch.randn_like(reps)])
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser of channel vectors of ``z`` ([B, C, H, W], C == ``dim``).

    Args:
        num_codes: codebook size K.
        dim: code vector dimension (the encoder's latent channels).
        commitment_cost: weight beta of the commitment loss ``||z - sg(z_q)||^2``.
        ema: update the codebook by exponential moving averages (else by the codebook loss).
        decay: EMA decay.
        dead_code_threshold: codes whose EMA usage count falls below this are restarted from current
            encoder outputs (0 disables restarts).
        kmeans_init: initialise the codebook by k-means on the first training batch.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        commitment_cost: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 1.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
    ) -> None:
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"num_codes={num_codes}: a codebook needs at least 2 codes")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay}: the EMA decay must lie in (0, 1), e.g. 0.99")
        self.num_codes, self.dim = num_codes, dim
        self.commitment_cost, self.ema, self.decay, self.eps = commitment_cost, ema, decay, eps
        self.dead_code_threshold, self.kmeans_iters = dead_code_threshold, kmeans_iters
        embed = torch.randn(num_codes, dim) / dim**0.5
        if ema:
            self.register_buffer("codebook", embed)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", embed.clone())
        else:
            self.codebook = nn.Parameter(embed)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    # -- public API -------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.quantize(z)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise ``z`` [B, C, H, W] -> ``(z_q, indices [B, H, W], loss)``.

        ``z_q`` carries straight-through gradients to ``z``; ``loss`` is the commitment loss (plus the
        codebook loss when the codebook is learnt by gradient instead of EMA).
        """
        if z.dim() != 4 or z.shape[1] != self.dim:
            raise ValueError(
                f"quantize expects [B, {self.dim}, H, W] latents, got {tuple(z.shape)}: the encoder's "
                f"latent channels must equal the quantiser dim ({self.dim})"
            )
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c).float()
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat.detach())
        indices = self.nearest(flat)
        codes = self.codebook.float()[indices]
        if self.training and self.ema:
            self._ema_update(flat.detach(), indices)
        commit = F.mse_loss(flat, codes.detach())
        loss = self.commitment_cost * commit
        if not self.ema:
            loss = loss + F.mse_loss(codes, flat.detach())
        quantized = flat + (codes - flat).detach()  # straight-through estimator
        z_q = quantized.view(b, h, w, c).permute(0, 3, 1, 2).contiguous().to(z.dtype)
        return z_q, indices.view(b, h, w), loss

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` ([N, dim])."""
        cb = self.codebook.float()
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None]
        return dist2.argmin(dim=1)

    def indices_to_vectors(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices [B, H, W] -> code vectors [B, dim, H, W] (the inverse of ``quantize``)."""
        if indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= self.num_codes:
            raise ValueError(
                f"code indices span [{lo}, {hi}] but the codebook has {self.num_codes} codes: the "
                "tokens come from a different stage-1 model"
            )
        return self.codebook[indices.long()].permute(0, 3, 1, 2).contiguous()

    # -- codebook maintenance ---------------------------------------------------------------------
    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        centroids = kmeans(flat, self.num_codes, self.kmeans_iters)
        centroids = _broadcast(centroids.to(self.codebook.dtype).contiguous())
        self.codebook.data.copy_(centroids)
        if self.ema:
            self.ema_sum.copy_(centroids)
            self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        onehot_count = torch.bincount(indices, minlength=self.num_codes).float()
        summed = torch.zeros(self.num_codes, self.dim, device=flat.device).index_add_(0, indices, flat)
        onehot_count, summed = _all_reduce_sum(onehot_count), _all_reduce_sum(summed)
        self.ema_count.mul_(self.decay).add_(onehot_count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(summed, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / count.unsqueeze(1))
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(flat)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        dead = self.ema_count < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # Rank 0 picks replacement encodings; broadcasting keeps all ranks' codebooks identical.
        pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
        fresh = _broadcast(flat[pick].contiguous())
        self.codebook[dead] = fresh.to(self.codebook.dtype)
        self.ema_sum[dead] = fresh
        self.ema_count[dead] = self.dead_code_threshold  # protect restarted codes for a while


def usage_from_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity of the code distribution and fraction of codes used, from per-code counts."""
    probs = counts / counts.sum().clamp(min=1)
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
    return perplexity, (counts > 0).float().mean()


def codebook_usage(indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity of the code distribution and fraction of codes used among ``indices``."""
    return usage_from_counts(torch.bincount(indices.reshape(-1), minlength=num_codes).float())
