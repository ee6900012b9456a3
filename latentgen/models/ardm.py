"""Order-agnostic autoregressive prior (ARDM, Hoogeboom et al., 2021) over the VQ token grid.

A bidirectional transformer (the MaskGIT net) predicts every masked token from the revealed ones. It is
trained on the ARDM objective (:mod:`latentgen.diffusion.order_agnostic`): a random order, a random step
``t``, the reweighted cross-entropy on the ``D - t + 1`` masked tokens. The logged ``nll`` is that
objective in nats per grid, an unbiased estimate of the upper bound ``E_sigma[-log p_sigma(x)]`` on the
NLL; ``loss`` is the same per token (what is optimised) and ``bits_per_token`` is ``loss / ln 2``.
Evaluation (:meth:`nll_bound`) averages exact per-order NLLs instead, which is far less noisy.

Sampling follows a random order: one token per network call (``num_inference_steps`` null or ``D``),
or ``D / K`` tokens per call with ``K < D`` steps. The number of steps, temperature and guidance scale
are sampling-time options (no retraining).
"""

from __future__ import annotations

import math

import torch

from latentgen.diffusion.guidance import check_guidance_scale
from latentgen.diffusion.order_agnostic import (
    OrderAgnosticProcess,
    OrderAgnosticSampler,
    check_steps,
)
from latentgen.models.prior_base import PriorModule
from latentgen.nets.transformer import BidirectionalTransformer


class ARDMPrior(PriorModule):
    """Order-agnostic autoregressive prior over ``num_tokens`` codes on a ``grid_shape`` token grid."""

    def __init__(
        self,
        num_tokens: int | None = None,
        grid_shape: list[int] | tuple[int, int] | None = None,
        num_classes: int | None = 10,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.1,
        cond_drop_prob: float = 0.1,
        num_inference_steps: int | None = None,
        temperature: float = 1.0,
        guidance_scale: float = 1.0,
        nll_orders: int = 1,
        sample_every_n_epochs: int = 1,
        num_sample_images: int = 64,
        stage1_hparams=None,
        stage1_info=None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        **old,
    ) -> None:
        super().__init__(stage1_hparams=stage1_hparams, stage1_info=stage1_info, num_classes=num_classes,
                         sample_every_n_epochs=sample_every_n_epochs, num_sample_images=num_sample_images)
        self.save_hyperparameters()
        self.set_optim(optimizer, scheduler, old)
        if num_tokens is None or grid_shape is None:
            raise ValueError("num_tokens/grid_shape are unset: build the prior through the stage builder "
                             "(it fills them from stage 1) or set model.num_tokens and model.grid_shape")
        self.num_tokens, self.grid_shape = int(num_tokens), tuple(int(g) for g in grid_shape)
        self.seq_len = math.prod(self.grid_shape)
        if isinstance(nll_orders, bool) or not isinstance(nll_orders, int) or nll_orders < 1:
            raise ValueError(f"model.nll_orders={nll_orders!r} must be an integer >= 1 (random orders averaged "
                             "by nll_bound)")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"model.cond_drop_prob={cond_drop_prob} must lie in [0, 1] (label dropout for guidance)")
        self.cond_drop_prob, self.nll_orders = cond_drop_prob, nll_orders
        self.net = BidirectionalTransformer(self.num_tokens, self.seq_len, num_classes, d_model, n_layers,
                                            n_heads, dropout, use_mask_token=True)
        self.process = OrderAgnosticProcess(self.num_tokens, self.net.mask_token_id)
        # the model's own sampling options, checked now; null steps = one token per step (D)
        self.sampling = {"num_inference_steps": check_steps(num_inference_steps, self.seq_len),
                         "temperature": temperature, "guidance_scale": guidance_scale}
        self._sampler(self.sampling)

    def _sampler(self, options: dict) -> OrderAgnosticSampler:
        check_guidance_scale(options["guidance_scale"], conditional=self.num_classes is not None)
        check_steps(options["num_inference_steps"], self.seq_len)
        return self.process.make_sampler(**options)

    # -- training ---------------------------------------------------------------------------------
    def shared_step(self, batch, split: str) -> torch.Tensor:
        tokens, labels = batch
        if tokens.shape[-2:] != self.grid_shape:
            raise ValueError(f"token grids are {tuple(tokens.shape[-2:])} but the prior was built for {self.grid_shape}")
        nll, acc = self.process.training_loss(self.net, tokens.reshape(tokens.shape[0], -1),
                                              self.net_labels(labels, split))
        nll = nll.mean()  # nats per grid
        loss = nll / self.seq_len  # nats per token
        on_step = split == "train"
        self.log_dict({f"{split}/loss": loss, f"{split}/nll": nll, f"{split}/bits_per_token": loss / math.log(2),
                       f"{split}/token_acc": acc}, on_step=on_step, on_epoch=not on_step, prog_bar=True,
                      sync_dist=not on_step)
        return loss

    # -- likelihood -------------------------------------------------------------------------------
    def logits(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """[B, h, w] tokens, ``[MASK]`` (``num_tokens``) where unrevealed -> [B, K, h, w] logits of every
        position given the revealed ones."""
        b, h, w = tokens.shape
        return self.net(tokens.reshape(b, h * w), labels).transpose(1, 2).reshape(b, -1, h, w)

    @torch.no_grad()
    def nll_bound(self, tokens: torch.Tensor, labels: torch.Tensor | None, num_orders: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Upper bound on the NLL of each grid [B] (nats per grid): the exact per-order NLL averaged over
        ``num_orders`` (default ``model.nll_orders``) random orders, ``D`` network calls each."""
        if tokens.shape[-2:] != self.grid_shape:
            raise ValueError(f"token grids are {tuple(tokens.shape[-2:])} but the prior was built for {self.grid_shape}")
        was_training = self.training
        self.eval()
        try:
            return self.process.nll_estimate(self.net, tokens.reshape(tokens.shape[0], -1), labels,
                                             self.nll_orders if num_orders is None else num_orders, generator)
        finally:
            self.train(was_training)

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(self, n, labels=None, generator=None, num_inference_steps: int | None = None,
                       temperature: float | None = None, guidance_scale: float | None = None,
                       progress: bool = False) -> torch.Tensor:
        """``n`` token grids [n, h, w] generated in a random order over ``num_inference_steps`` calls."""
        given = dict(num_inference_steps=num_inference_steps, temperature=temperature, guidance_scale=guidance_scale)
        sampler = self._sampler({**self.sampling, **{k: v for k, v in given.items() if v is not None}})
        seq = sampler.sample(self.net, n, self.seq_len, labels=labels, null_label=self.net.null_label,
                             generator=generator, progress=progress, device=self.device)
        return seq.reshape(n, *self.grid_shape)
