"""Load any latentgen stage from its checkpoint alone."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from latentgen.models.base import LatentGenModule


def checkpoint_class(ckpt: dict, path: Path) -> type[LatentGenModule]:
    name = ckpt.get("latentgen_class")
    if not name:
        raise ValueError(f"{path} was not written by latentgen (no 'latentgen_class' entry): pass a checkpoint "
                         "from a latentgen run's checkpoints/ folder")
    module, _, cls = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{path} needs class {name}, which this latentgen version does not have ({e})") from e


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> LatentGenModule:
    """Rebuild the model stored in ``path`` (a prior brings its frozen stage 1 along), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass ckpt=/path/to/run/checkpoints/last.ckpt")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cls = checkpoint_class(ckpt, path)
    # latentgen checkpoints hold plain hyperparameters; weights_only=False also reads older ones
    return cls.load_from_checkpoint(path, map_location=map_location, strict=True, weights_only=False).eval()
