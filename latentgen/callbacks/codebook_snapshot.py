"""Per-rank snapshots of vector-quantiser codebooks: evidence that DDP ranks keep one codebook.

At the end of fit every rank writes ``<dirpath>/codebook_rank<r>.pt`` with the codebook and EMA
buffers of each ``VectorQuantizer`` in the module, its global step and the number of training batches
it ran. With ``check=True`` the ranks also compare their codebooks (all-gather) and fail loudly when
they differ, which means the quantiser's statistics are not reduced across ranks.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from latentgen.quantize.vector_quantizer import VectorQuantizer

BUFFERS = ("codebook", "ema_count", "ema_sum")


def quantizer_state(module: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name, sub in module.named_modules():
        if isinstance(sub, VectorQuantizer):
            out[name] = {b: getattr(sub, b).detach().cpu().clone() for b in BUFFERS if hasattr(sub, b)}
    return out


class CodebookSnapshot(Callback):
    def __init__(self, dirpath: str | Path, check: bool = True) -> None:
        self.dirpath, self.check = Path(dirpath), check
        self.batches = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.batches += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = quantizer_state(pl_module)
        if not state:
            raise ValueError("CodebookSnapshot: the model has no VectorQuantizer; remove the callback")
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
             "batches": self.batches, "quantizers": state},
            self.dirpath / f"codebook_rank{trainer.global_rank}.pt",
        )
        if self.check and trainer.world_size > 1:
            for name, buffers in state.items():
                local = buffers["codebook"].to(pl_module.device)
                gathered = trainer.strategy.all_gather(local)  # [world, K, D]
                spread = (gathered - gathered[0:1]).abs().max().item()
                if spread > 0:
                    raise RuntimeError(
                        f"codebook {name!r} differs across DDP ranks (max abs difference {spread:.3g}): the "
                        "quantiser must all-reduce its EMA statistics and broadcast restarts from rank 0"
                    )
