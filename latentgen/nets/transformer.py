"""Transformer nets over flattened token grids.

``CausalTransformer`` is a GPT-style decoder with a KV cache for incremental decoding;
``BidirectionalTransformer`` is a non-causal encoder for masked-token
modelling (MaskGIT-style) with a null class for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentgen.nets.checks import check_id_range, check_labels

__all__ = ["MLP", "SelfAttention", "Block", "KVCache", "CausalTransformer", "BidirectionalTransformer"]


LayerCache = tuple[Tensor, Tensor, int]  # (keys, values, write position) of one layer


@dataclass
class KVCache:
    """Preallocated keys/values of every layer, ``[B, n_heads, max_len, head_dim]`` each.

    ``length`` is the number of consumed positions (the start token included).
    """

    keys: list[Tensor]
    values: list[Tensor]
    length: int = 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]


class MLP(nn.Module):
    """Position-wise feed-forward network ``Linear -> GELU -> Linear -> Dropout``."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention built on ``F.scaled_dot_product_attention``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} must be divisible by n_heads={n_heads}; "
                "choose n_heads dividing d_model"
            )
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, causal: bool = False, cache: LayerCache | None = None) -> Tensor:
        """Attend over ``x`` [B, L, D].

        ``cache`` is ``(keys, values, start)``: the new keys/values are written
        at positions ``start..start+L`` and queries attend causally to all
        positions up to their own.
        """
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=causal)
        else:
            keys, values, start = cache
            keys[:, :, start : start + n] = k
            values[:, :, start : start + n] = v
            total = start + n
            q_pos = torch.arange(start, total, device=x.device)[:, None]
            mask = torch.arange(total, device=x.device)[None, :] <= q_pos
            out = F.scaled_dot_product_attention(
                q, keys[:, :, :total], values[:, :, :total], attn_mask=mask, dropout_p=drop
            )
        return self.resid_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, 4 * d_model, dropout)

    def forward(self, x: Tensor, causal: bool = False, cache: LayerCache | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), causal=causal, cache=cache)
        return x + self.mlp(self.ln2(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


_CODEBOOK_FIX = "check num_tokens matches the codebook"


class _TokenTransformer(nn.Module):
    """Shared parts: token/positional embeddings, blocks, final norm and logit head."""

    def __init__(
        self,
        num_tokens: int,
        seq_len: int,
        num_classes: int | None,
        d_model: int,
        n_layers: int,
        n_heads: int,
        dropout: float,
        extra_tokens: int = 0,
        extra_positions: int = 0,
    ) -> None:
        super().__init__()
        if num_tokens < 2:
            raise ValueError(f"num_tokens must be >= 2, got {num_tokens}; use the codebook size")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}; use H * W of the token grid")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        if d_model < 1 or n_layers < 1:
            raise ValueError(f"d_model and n_layers must be >= 1, got {d_model} and {n_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.num_tokens = num_tokens
        self.seq_len = seq_len
        self.num_classes = num_classes
        self.tok_emb = nn.Embedding(num_tokens + extra_tokens, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(1, seq_len + extra_positions, d_model))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_tokens)

    def _init_parameters(self) -> None:
        self.apply(_init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)

    def _embed(self, tokens: Tensor, min_len: int, fix: str, check_range: bool = True) -> Tensor:
        """Validate ``tokens`` [B, L] and return their embeddings [B, L, D]."""
        if tokens.dim() != 2 or not min_len <= tokens.shape[1] <= self.seq_len:
            raise ValueError(
                f"tokens must have shape [B, L] with {min_len} <= L <= seq_len={self.seq_len}, "
                f"got {tuple(tokens.shape)}; flatten the grid and crop it to seq_len"
            )
        if check_range:
            check_id_range("tokens", tokens, self.tok_emb.num_embeddings, fix)
        return self.tok_emb(tokens)

    def _head(self, x: Tensor) -> Tensor:
        return self.head(self.ln_f(x))


class CausalTransformer(_TokenTransformer):
    """GPT-style causal transformer; the sequence is ``[start] + tokens``.

    The start token is a learned per-class embedding when ``num_classes`` is
    set, otherwise a single learned embedding. ``forward(tokens)[:, i]``
    predicts ``tokens[:, i]`` from the start token and ``tokens[:, :i]``.
    """

    def __init__(
        self,
        num_tokens: int,
        seq_len: int,
        num_classes: int | None = None,
        d_model: int = 256,
        n_layers: int = 6,
        n_heads: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_tokens, seq_len, num_classes, d_model, n_layers, n_heads, dropout)
        self.start_emb = nn.Embedding(num_classes if num_classes is not None else 1, d_model)
        self._init_parameters()

    def _start(self, batch_size: int, labels: Tensor | None, check_range: bool = True) -> Tensor:
        """Start-token embeddings [B, 1, D] for ``labels``."""
        check_labels(labels, batch_size, self.num_classes, check_range=check_range)
        if self.num_classes is None:
            return self.start_emb.weight[:1].expand(batch_size, 1, -1)
        return self.start_emb(labels)[:, None]

    def forward(self, tokens: Tensor, labels: Tensor | None = None, *, check_range: bool = True) -> Tensor:
        """Return logits [B, L, num_tokens] for ``tokens`` [B, L] with ``0 <= L <= seq_len``.

        ``check_range=False`` skips the id range checks (a host sync each) for callers that
        checked their ids already, such as the sampling loop feeding back its own samples."""
        emb = self._embed(tokens, 0, _CODEBOOK_FIX, check_range)
        b, n = tokens.shape
        start = self._start(b, labels, check_range)
        if n == 0:
            return self._head(emb.new_zeros(b, 0, emb.shape[-1]))
        x = self.drop(torch.cat([start, emb[:, : n - 1]], dim=1) + self.pos_emb[:, :n])
        for block in self.blocks:
            x = block(x, causal=True)
        return self._head(x)

    def init_cache(self, batch_size: int) -> KVCache:
        """Return an empty KV cache for ``batch_size`` sequences (device/dtype of the net)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        attn = self.blocks[0].attn
        shape = (batch_size, attn.n_heads, self.seq_len, attn.head_dim)
        keys = [self.pos_emb.new_zeros(shape) for _ in self.blocks]
        return KVCache(keys=keys, values=[torch.zeros_like(k) for k in keys])

    def decode(
        self, tokens: Tensor, cache: KVCache, labels: Tensor | None = None, *, check_range: bool = True
    ) -> Tensor:
        """Consume ``tokens`` [B, n] after the cached context; return next-token logits [B, V].

        On an empty cache the start token (built from ``labels``; ignored
        otherwise) is consumed first, so ``n`` may be 0 there. After the call
        the cache holds the start token plus every consumed token. ``check_range`` as in ``forward``.
        """
        x = self._embed(tokens, 0, _CODEBOOK_FIX, check_range)
        b = cache.batch_size
        if tokens.shape[0] != b:
            raise ValueError(
                f"tokens must have batch size {b} to match the cache, got {tokens.shape[0]}"
            )
        if cache.length == 0:
            x = torch.cat([self._start(b, labels, check_range), x], dim=1)
        elif tokens.shape[1] == 0:
            raise ValueError("decode needs at least one new token once the cache is filled")
        start, n = cache.length, x.shape[1]
        if start + n > self.seq_len:
            raise ValueError(
                f"decoding {n} positions after {start} exceeds seq_len={self.seq_len}; "
                "the last token of a sequence never needs to be consumed"
            )
        x = self.drop(x + self.pos_emb[:, start : start + n])
        for block, keys, values in zip(self.blocks, cache.keys, cache.values, strict=True):
            x = block(x, causal=True, cache=(keys, values, start))
        cache.length = start + n
        return self._head(x[:, -1])


class BidirectionalTransformer(_TokenTransformer):
    """Non-causal transformer over token sequences with an optional ``[MASK]`` token.

    The input vocabulary is the codebook plus, if ``use_mask_token``, the id
    ``mask_token_id == num_tokens``. With ``num_classes`` set, a class token is
    prepended; the id ``null_label == num_classes`` is the unconditional class
    used for classifier-free guidance (and when ``labels`` is None). Logits
    never cover the mask id.
    """

    def __init__(
        self,
        num_tokens: int,
        seq_len: int,
        num_classes: int | None = None,
        d_model: int = 256,
        n_layers: int = 6,
        n_heads: int = 8,
        dropout: float = 0.0,
        use_mask_token: bool = True,
    ) -> None:
        extra = (int(use_mask_token), int(num_classes is not None))  # [MASK] id, class token
        super().__init__(
            num_tokens, seq_len, num_classes, d_model, n_layers, n_heads, dropout, *extra
        )
        self.use_mask_token = use_mask_token
        self.cls_emb = nn.Embedding(num_classes + 1, d_model) if num_classes is not None else None
        self._init_parameters()

    @property
    def mask_token_id(self) -> int | None:
        """Id of the ``[MASK]`` token (``num_tokens``), or None without one."""
        return self.num_tokens if self.use_mask_token else None

    @property
    def null_label(self) -> int | None:
        """Class id of the unconditional (null) class, or None for an unconditional net."""
        return self.num_classes

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Return logits [B, L, num_tokens] for ``tokens`` [B, L] with ``1 <= L <= seq_len``."""
        fix = "use mask_token_id for masked positions"
        if not self.use_mask_token:
            fix = "build the net with use_mask_token=True to feed [MASK] tokens"
        x = self._embed(tokens, 1, fix)
        b, n = tokens.shape
        check_labels(labels, b, self.num_classes, null_ok=True)
        if self.cls_emb is not None:
            if labels is None:
                labels = torch.full((b,), self.num_classes, dtype=torch.long, device=tokens.device)
            x = torch.cat([self.cls_emb(labels)[:, None], x], dim=1)
        x = self.drop(x + self.pos_emb[:, : x.shape[1]])
        for block in self.blocks:
            x = block(x)
        return self._head(x[:, x.shape[1] - n :])
