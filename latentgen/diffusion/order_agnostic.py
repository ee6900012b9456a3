"""Order-agnostic autoregressive diffusion (ARDM, Hoogeboom et al., 2021) over flattened token grids.

An order ``sigma`` is a random permutation of the ``D`` positions, stored as ``ranks`` [B, D]:
``ranks[b, i]`` is the (0-based) step at which position ``i`` is generated. For a step ``t`` in
``{1, ..., D}`` the ``t - 1`` positions with ``ranks < t - 1`` are revealed and the other
``D - t + 1`` hold the ``[MASK]`` id. The training objective of one item is

    L(x) = D / (D - t + 1) * sum over masked positions i of -log p(x_i | revealed),   t ~ U{1..D}.

Averaged over ``t`` and the orders, ``E[L(x)] = E_sigma[-log p_sigma(x)]`` with
``-log p_sigma(x) = sum_t -log p(x_sigma(t) | x_sigma(<t))``: the per-order NLL, which by Jensen
bounds the NLL of the model (the mixture over orders) from above, ``-log E_sigma[p_sigma(x)]``.

* :meth:`OrderAgnosticProcess.training_loss`: ``L(x)`` with one network call (unbiased, noisy).
* :meth:`OrderAgnosticProcess.order_nll`: ``-log p_sigma(x)`` of a given order, exactly (``D`` calls).
* :meth:`OrderAgnosticProcess.nll_estimate`: the per-order NLL averaged over ``num_orders`` random orders,
  an unbiased estimate of the bound with much less variance than ``L(x)``; evaluation reports this one.
* :class:`OrderAgnosticSampler`: generation in a random order, one token per network call
  (``num_inference_steps = D``) or ``D / K`` tokens per call (``K < D``), each drawn independently
  from its predicted marginal.

The network is ``logits_fn(tokens [B, D] long, labels [B] long | None) -> logits [B, D, K]`` over the
``K`` codebook entries. All losses and NLLs are in nats per grid, one value per item.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from latentgen.diffusion.absorbing import sample_tokens
from latentgen.diffusion.guidance import check_guidance_scale, guided

__all__ = ["LogitsFn", "OrderAgnosticProcess", "OrderAgnosticSampler", "check_steps", "random_orders"]

LogitsFn = Callable[[Tensor, Tensor | None], Tensor]


def random_orders(batch_size: int, seq_len: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """``[batch_size, seq_len]`` ranks: each row a uniformly random permutation of ``0..seq_len-1``."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be >= 1")
    device = generator.device if generator is not None and device is None else device
    scores = torch.rand(batch_size, seq_len, generator=generator, device=device)
    return scores.argsort(dim=1).argsort(dim=1)


def check_steps(num_inference_steps: int | None, seq_len: int | None) -> int | None:
    """The number of sampling steps: ``None`` means ``seq_len`` (one token per step); else an integer in
    ``[1, seq_len]`` (only ``>= 1`` is checked while ``seq_len`` is None)."""
    if num_inference_steps is None:
        return seq_len
    bound = "" if seq_len is None else f" in [1, {seq_len}]"
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer{bound} "
                         "or null (one token per step)")
    if num_inference_steps < 1 or (seq_len is not None and num_inference_steps > seq_len):
        limit = "the number of tokens" if seq_len is None else f"D={seq_len} tokens"
        raise ValueError(f"num_inference_steps={num_inference_steps} must lie between 1 and {limit}: use null "
                         "(or D) for one token per step, fewer for parallel decoding")
    return num_inference_steps


def _check_ranks(ranks: Tensor, batch_size: int, seq_len: int) -> None:
    if ranks.shape != (batch_size, seq_len):
        raise ValueError(f"order has shape {tuple(ranks.shape)}; expected [{batch_size}, {seq_len}] ranks "
                         "(each row a permutation of 0..seq_len-1)")
    expected = torch.arange(seq_len, device=ranks.device).expand(batch_size, seq_len)
    if not torch.equal(ranks.sort(dim=1).values, expected):
        raise ValueError("order rows must be permutations of 0..seq_len-1 (ranks), e.g. from random_orders()")


def _check_logits(logits: Tensor, batch_size: int, seq_len: int, num_tokens: int) -> Tensor:
    if logits.shape != (batch_size, seq_len, num_tokens):
        raise ValueError(f"logits_fn returned shape {tuple(logits.shape)}; expected "
                         f"({batch_size}, {seq_len}, {num_tokens}) (one logit per codebook entry)")
    return logits.float()


class OrderAgnosticProcess:
    """The ARDM objective and likelihood bound for ``num_tokens`` codes and a ``[MASK]`` id."""

    def __init__(self, num_tokens: int, mask_token_id: int) -> None:
        if num_tokens < 2:
            raise ValueError(f"num_tokens={num_tokens} must be >= 2 (the codebook size)")
        if mask_token_id < num_tokens:
            raise ValueError(f"mask_token_id={mask_token_id} collides with codebook ids [0, {num_tokens}); "
                             f"use an id >= num_tokens, e.g. {num_tokens}")
        self.num_tokens = num_tokens
        self.mask_token_id = mask_token_id

    def _check_tokens(self, x0: Tensor) -> None:
        if x0.dim() != 2:
            raise ValueError(f"tokens have shape {tuple(x0.shape)}; expected [B, D] (flatten the grid)")
        if x0.numel() and (int(x0.min()) < 0 or int(x0.max()) >= self.num_tokens):
            raise ValueError(f"token ids must lie in [0, {self.num_tokens}); got [{int(x0.min())}, {int(x0.max())}]: "
                             "check num_tokens matches the codebook")

    def mask_for(self, ranks: Tensor, t: Tensor) -> Tensor:
        """Masked positions [B, D] at steps ``t`` [B] in ``1..D``: those with ``ranks >= t - 1``."""
        return ranks >= (t - 1)[:, None]

    def training_loss(self, net: LogitsFn, x0: Tensor, labels: Tensor | None, t: Tensor | None = None,
                      order: Tensor | None = None, generator: torch.Generator | None = None
                      ) -> tuple[Tensor, Tensor]:
        """``L(x)`` per item [B] in nats per grid and the token accuracy on the masked positions.

        ``t`` [B] (in ``1..D``) and ``order`` [B, D] (ranks) are drawn uniformly unless given.
        """
        self._check_tokens(x0)
        batch, seq_len = x0.shape
        device = x0.device
        if t is None:
            t = torch.randint(1, seq_len + 1, (batch,), generator=generator, device=device)
        else:
            t = torch.as_tensor(t, device=device).long().expand(batch)
            if int(t.min()) < 1 or int(t.max()) > seq_len:
                raise ValueError(f"t must lie in [1, {seq_len}] (1 = nothing revealed); "
                                 f"got [{int(t.min())}, {int(t.max())}]")
        if order is None:
            order = random_orders(batch, seq_len, generator, device)
        else:
            order = order.to(device)
            _check_ranks(order, batch, seq_len)
        masked = self.mask_for(order, t)
        logits = _check_logits(net(x0.masked_fill(masked, self.mask_token_id), labels), batch, seq_len,
                               self.num_tokens)
        ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        weight = seq_len / (seq_len - t + 1).to(ce.dtype)
        loss = weight * (ce * masked).sum(dim=1)
        acc = (logits.argmax(-1) == x0)[masked].float().mean()
        return loss, acc

    @torch.no_grad()
    def order_nll(self, net: LogitsFn, x0: Tensor, labels: Tensor | None, order: Tensor) -> Tensor:
        """``-log p_sigma(x)`` per item [B] for the orders ``order`` [B, D] (ranks): ``D`` network calls."""
        self._check_tokens(x0)
        batch, seq_len = x0.shape
        order = order.to(x0.device)
        _check_ranks(order, batch, seq_len)
        total = torch.zeros(batch, dtype=torch.float64, device=x0.device)
        for step in range(seq_len):
            logits = _check_logits(net(x0.masked_fill(order >= step, self.mask_token_id), labels), batch,
                                   seq_len, self.num_tokens)
            ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
            total += (ce * (order == step)).sum(dim=1).double()
        return total

    @torch.no_grad()
    def nll_estimate(self, net: LogitsFn, x0: Tensor, labels: Tensor | None, num_orders: int = 1,
                     generator: torch.Generator | None = None) -> Tensor:
        """The per-order NLL averaged over ``num_orders`` random orders per item [B] (``D * num_orders``
        calls): an unbiased estimate of the bound ``E_sigma[-log p_sigma(x)]``, in nats per grid."""
        if isinstance(num_orders, bool) or not isinstance(num_orders, int) or num_orders < 1:
            raise ValueError(f"num_orders={num_orders!r} must be an integer >= 1")
        batch, seq_len = x0.shape
        total = torch.zeros(batch, dtype=torch.float64, device=x0.device)
        for _ in range(num_orders):
            total += self.order_nll(net, x0, labels, random_orders(batch, seq_len, generator, x0.device))
        return total / num_orders

    def make_sampler(self, num_inference_steps: int | None = None, temperature: float = 1.0,
                     guidance_scale: float = 1.0) -> OrderAgnosticSampler:
        return OrderAgnosticSampler(self.mask_token_id, num_inference_steps, temperature, guidance_scale)


class OrderAgnosticSampler:
    """Generation in a uniformly random order over ``num_inference_steps`` network calls.

    ``None`` (or ``D``) reveals one token per call: exact ancestral sampling of ``p_sigma``. With ``K < D``
    step ``k`` (0-based) reveals the positions with ranks in ``[floor(kD/K), floor((k+1)D/K))``, at least
    one, each drawn independently from its predicted marginal. ``temperature`` divides the logits (0: argmax);
    ``guidance_scale`` applies classifier-free guidance through one batched call per step.
    """

    def __init__(self, mask_token_id: int, num_inference_steps: int | None = None, temperature: float = 1.0,
                 guidance_scale: float = 1.0) -> None:
        check_steps(num_inference_steps, None)
        temperature = float(temperature)
        if not temperature >= 0 or temperature == float("inf"):
            raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 selects argmax)")
        self.mask_token_id = mask_token_id
        self.num_inference_steps = num_inference_steps
        self.temperature = temperature
        self.guidance_scale = check_guidance_scale(guidance_scale)

    def revealed_counts(self, seq_len: int) -> list[int]:
        """Tokens revealed after each step: ``floor((k + 1) * D / K)``, ending at ``D``."""
        steps = int(check_steps(self.num_inference_steps, seq_len))
        return [(k + 1) * seq_len // steps for k in range(steps)]

    @torch.no_grad()
    def sample(self, logits_fn: LogitsFn, batch_size: int, seq_len: int, labels: Tensor | None = None,
               null_label: int | None = None, generator: torch.Generator | None = None, progress: bool = False,
               device: torch.device | str | None = None, order: Tensor | None = None) -> Tensor:
        """``[batch_size, seq_len]`` tokens from a fully masked grid; ``order`` [B, D] ranks, random unless given."""
        counts = self.revealed_counts(seq_len)
        if device is None:
            device = labels.device if labels is not None else "cpu"
        if order is None:
            order = random_orders(batch_size, seq_len, generator, device)
        else:
            order = order.to(device)
            _check_ranks(order, batch_size, seq_len)
        tokens = torch.full((batch_size, seq_len), self.mask_token_id, dtype=torch.long, device=device)
        start = 0
        for end in tqdm(counts, disable=not progress, desc="ARDM"):
            logits = guided(logits_fn, (tokens,), labels, null_label, self.guidance_scale).float()
            if logits.shape[:2] != (batch_size, seq_len):
                raise ValueError(f"logits_fn returned shape {tuple(logits.shape)}; expected "
                                 f"({batch_size}, {seq_len}, K)")
            if self.mask_token_id < logits.shape[-1]:
                logits[..., self.mask_token_id] = float("-inf")
            drawn = sample_tokens(logits, self.temperature, generator)
            now = (order >= start) & (order < end)
            tokens = torch.where(now, drawn, tokens)
            start = end
        return tokens
