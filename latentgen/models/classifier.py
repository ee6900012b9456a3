"""Image classifier (LeNet) LightningModule: the feature network behind FID/KID-LeNet and the
classifier score of generated samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from latentgen.models.base import LatentGenModule
from latentgen.nets.lenet import LeNet, random_shift


class Classifier(LatentGenModule):
    """Cross-entropy LeNet on (image, label) batches; logs ``{train,val,test}/{loss,acc}``.

    ``shift`` pixels of random translation (zero fill) augment training batches only.
    ``features`` gives the penultimate activations ``[B, feature_dim]``, ``forward`` the logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 5,
        feature_dim: int = 128,
        dropout: float = 0.25,
        batch_norm: bool = True,
        shift: int = 2,
        label_smoothing: float = 0.0,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        **old,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        self.save_hyperparameters()
        self.set_optim(optimizer, scheduler, old)
        if shift < 0 or shift >= image_size // 2:
            raise ValueError(f"shift={shift}: use 0 (off) to a few pixels, e.g. model.shift=2")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 1)")
        self.net = LeNet(in_channels, image_size, num_classes, channels, kernel_size, feature_dim,
                         dropout, batch_norm)
        self.shift, self.label_smoothing = shift, label_smoothing
        self.accuracy = torch.nn.ModuleDict(
            {f"{split}_acc": MulticlassAccuracy(num_classes, average="micro") for split in ("train", "val", "test")}
        )

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [0, 1] -> penultimate features ``[B, feature_dim]``."""
        return self.net.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [0, 1] -> logits ``[B, num_classes]``."""
        return self.net(x)

    def shared_step(self, batch, split: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if split == "train" and self.shift:
            x = random_shift(x, self.shift)
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        acc = self.accuracy[f"{split}_acc"]
        acc(logits.detach(), y)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=split != "test",
                 sync_dist=not on_step)
        self.log(f"{split}/acc", acc, on_step=on_step, on_epoch=not on_step, prog_bar=True)
        return loss


    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(dim=1)
