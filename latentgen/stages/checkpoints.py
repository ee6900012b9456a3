"""Load any latentgen stage from its checkpoint alone."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from latentgen.models.base import LatentGenModule
from latentgen.utils.checkpoint_io import CheckpointError, load_checkpoint

LATENTGEN_HINT = "pass a checkpoint from a latentgen run's checkpoints/ folder"


def checkpoint_class(ckpt: dict, path: Path) -> type[LatentGenModule]:
    """The latentgen model class a checkpoint names; only classes of the latentgen package are imported."""
    name = ckpt.get("latentgen_class")
    if not name or not isinstance(name, str):
        raise CheckpointError(path, "was not written by latentgen (no 'latentgen_class' entry)", LATENTGEN_HINT)
    module, _, cls_name = name.rpartition(".")
    if module.split(".")[0] != "latentgen":
        raise CheckpointError(path, f"names the class {name}, which is not a latentgen model", LATENTGEN_HINT)
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(path, f"needs class {name}, which this latentgen version does not have ({e})",
                              "use the latentgen version that wrote it, or retrain") from None
    if not (isinstance(cls, type) and issubclass(cls, LatentGenModule)):
        raise CheckpointError(path, f"names {name}, which is not a latentgen model class", LATENTGEN_HINT)
    return cls


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               purpose: str = "load a latentgen model") -> LatentGenModule:
    """Rebuild the model stored in ``path`` (a prior brings its frozen stage 1 along), in eval mode.

    The file is read as data (``weights_only=True``); an unreadable, unsafe or foreign file raises
    :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass ckpt=/path/to/run/checkpoints/last.ckpt")
    cls = checkpoint_class(load_checkpoint(path, purpose=purpose, mmap=True), path)
    return cls.load_from_checkpoint(path, map_location=map_location, strict=True, weights_only=True).eval()
