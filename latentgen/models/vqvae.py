"""Stage 1: VQ-VAE LightningModule (encoder -> vector quantiser -> decoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from latentgen.models.stage1_base import Stage1Module
from latentgen.nets.vqvae import Decoder, Encoder
from latentgen.quantize.vector_quantizer import VectorQuantizer, codebook_usage, usage_from_counts


class VQVAE(Stage1Module):
    """VQ-VAE with an EMA codebook: the discrete member of the stage-1 family
    (:class:`~latentgen.models.stage1_base.Stage1Module`); ``encode`` gives the continuous
    pre-quantisation latents, ``decode`` decodes (quantised) latents."""

    discrete = True
    family_label = "VQ-VAE"

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int | None = 32,
        hidden_channels: int = 64,
        res_channels: int = 32,
        num_res_blocks: int = 2,
        downsample: int = 4,
        latent_dim: int = 32,
        num_codes: int = 128,
        commitment_cost: float = 0.25,
        ema: bool = True,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 1.0,
        kmeans_init: bool = False,
        num_log_images: int = 32,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        **old,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.set_optim(optimizer, scheduler, old)
        net = dict(base_channels=base_channels, hidden_channels=hidden_channels, res_channels=res_channels,
                   num_res_blocks=num_res_blocks, latent_dim=latent_dim, downsample=downsample)
        self.encoder = Encoder(in_channels, **net)
        self.decoder = Decoder(in_channels, **net)
        self.quantizer = VectorQuantizer(
            num_codes, latent_dim, commitment_cost=commitment_cost, ema=ema, decay=ema_decay,
            dead_code_threshold=dead_code_threshold, kmeans_init=kmeans_init,
        )
        self.in_channels, self.downsample = in_channels, downsample
        self.num_log_images = num_log_images
        self.metrics = torch.nn.ModuleDict({
            f"{split}_{name}": metric
            for split in ("val", "test")
            for name, metric in (
                ("psnr", PeakSignalNoiseRatio(data_range=1.0)),
                ("ssim", StructuralSimilarityIndexMeasure(data_range=1.0)),
            )
        })
        self.register_buffer("_code_counts", torch.zeros(num_codes), persistent=False)
        self._log_batch: torch.Tensor | None = None

    # -- API used by later stages -----------------------------------------------------------------
    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    @property
    def latent_dim(self) -> int:
        return self.quantizer.dim

    def latent_grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return image_hw[0] // self.downsample, image_hw[1] // self.downsample

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [0, 1] -> continuous pre-quantisation latents."""
        self.check_images(x)
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.quantizer.quantize(z)

    def encode_to_indices(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.quantize(self.encode(x))[1]

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """(Quantised) latents -> images clamped to [0, 1]."""
        return self.decoder(z_q).clamp(0.0, 1.0)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents (or a latent DDPM's samples in their space) -> images, through the codebook."""
        return self.decode(self.quantize(z)[0])

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Token grids [B, h, w] -> images in [0, 1]."""
        return self.decode(self.quantizer.indices_to_vectors(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_q, indices, vq_loss = self.quantize(self.encode(x))
        return self.decoder(z_q), indices, vq_loss

    # -- training ---------------------------------------------------------------------------------
    def shared_step(self, batch, split: str) -> torch.Tensor:
        x = batch[0]
        x_hat, indices, vq_loss = self(x)
        recon = F.mse_loss(x_hat, x)
        loss = recon + vq_loss
        on_step = split == "train"
        self.log_dict(
            {f"{split}/loss": loss, f"{split}/recon_loss": recon, f"{split}/commit_loss": vq_loss},
            on_step=on_step, on_epoch=not on_step, prog_bar=split != "test", sync_dist=not on_step,
        )
        if on_step:
            perplexity, used = codebook_usage(indices, self.num_codes)
            self.log_dict({"train/perplexity": perplexity, "train/batch_code_usage": used})
        else:
            self._code_counts += torch.bincount(indices.reshape(-1), minlength=self.num_codes).float()
            x_hat = x_hat.clamp(0, 1)
            for name in ("psnr", "ssim"):
                metric = self.metrics[f"{split}_{name}"]
                metric.update(x_hat.float(), x.float())
                self.log(f"{split}/{name}", metric, on_epoch=True, prog_bar=name == "psnr")
            if self._log_batch is None and split == "val":
                self._log_batch = x[: self.num_log_images].detach()
        return loss


    def on_validation_epoch_start(self) -> None:
        self._code_counts.zero_()
        self._log_batch = None

    on_test_epoch_start = on_validation_epoch_start

    def _log_usage(self, split: str) -> None:
        counts = self.trainer.strategy.reduce(self._code_counts.clone(), reduce_op="sum")
        perplexity, used = usage_from_counts(counts)
        self.log_dict({f"{split}/perplexity": perplexity, f"{split}/code_usage": used})

    def on_validation_epoch_end(self) -> None:
        self._log_usage("val")
        if self._log_batch is not None:
            self.log_reconstructions(self._log_batch)

    def on_test_epoch_end(self) -> None:
        self._log_usage("test")

    @torch.no_grad()
    def log_reconstructions(self, x: torch.Tensor) -> None:
        """Originals and reconstructions in alternating rows of 8."""
        recon = self.decode(self.quantize(self.encode(x))[0])
        n = (x.shape[0] // 8) * 8 or x.shape[0]
        nrow = min(8, n)
        rows = torch.stack([x[:n].view(-1, nrow, *x.shape[1:]), recon[:n].view(-1, nrow, *x.shape[1:])], 1)
        self.log_image_grid("val/reconstructions", rows.reshape(-1, *x.shape[1:]).float(), nrow=nrow,
                            caption="odd rows: input, even rows: reconstruction")
