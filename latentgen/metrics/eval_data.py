"""Which dataset a checkpoint was trained on, and its real images for evaluation.

A prior records its data in ``hparams.stage1_info.data`` ({target, val_size, split_seed}). A
stage-1 checkpoint does not; its dataset comes from the config saved beside it (``config.yaml`` of
a stored artefact, ``.hydra/config.yaml`` of a run dir) or from the ``data`` config group
(``data=mnist``). Both may be given as long as they name the same dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class DataSource:
    target: str
    val_size: int | None
    split_seed: int | None
    origin: str

    @property
    def dataset(self) -> str:
        """Dataset name of the data module (``mnist``, ``fashion-mnist``, ``cifar-10``)."""
        return hydra.utils.get_class(self.target).dataset_name

    def describe(self) -> dict[str, Any]:
        return {"target": self.target, "dataset": self.dataset, "val_size": self.val_size,
                "split_seed": self.split_seed, "origin": self.origin}


def _from_node(node: dict[str, Any] | None, origin: str) -> DataSource | None:
    if not node:
        return None
    target = node.get("target") or node.get("_target_")
    if not target or "datamodules" not in str(target):
        return None
    return DataSource(str(target), node.get("val_size"), node.get("split_seed"), origin)


def recorded_data(model: torch.nn.Module, ckpt: str | Path) -> DataSource | None:
    """The dataset the checkpoint records, or the one in the config saved beside it."""
    info = getattr(model, "hparams", {}).get("stage1_info") or {}
    source = _from_node(info.get("data"), "checkpoint (stage1_info.data)")
    if source is not None:
        return source
    ckpt = Path(ckpt)
    for path in (ckpt.parent / "config.yaml", ckpt.parent.parent / ".hydra" / "config.yaml"):
        if path.is_file():
            data = OmegaConf.load(path).get("data")
            if data is not None:
                source = _from_node(OmegaConf.to_container(data, resolve=False), str(path))
                if source is not None:
                    return source
    return None


def resolve_data(model: torch.nn.Module, ckpt: str | Path, given: DictConfig | None) -> DataSource:
    """The evaluation dataset: recorded with the checkpoint and/or given as ``data=...``."""
    recorded = recorded_data(model, ckpt)
    chosen = _from_node(OmegaConf.to_container(given, resolve=False), "data config group") if given else None
    if recorded is not None and chosen is not None and recorded.target != chosen.target:
        raise ValueError(f"data={chosen.dataset} was given but {ckpt} was trained on {recorded.dataset} "
                         f"(recorded in {recorded.origin}): drop the data override or pick the matching one")
    source = recorded or chosen
    if source is None:
        raise ValueError(f"{ckpt} does not record its dataset: pass it from the data config group, e.g. "
                         "data=mnist or data=fashion_mnist")
    return source


class RealImages:
    """Real images of one dataset (train split without the validation images, and test split)."""

    def __init__(self, source: DataSource, data_dir: str | Path) -> None:
        args = {"val_size": source.val_size, "split_seed": source.split_seed}
        self.source = source
        self.datamodule = hydra.utils.instantiate({"_target_": source.target, "data_dir": str(data_dir),
                                                   "download": True,
                                                   **{k: v for k, v in args.items() if v is not None}})
        self.datamodule.prepare_data()
        self.datamodule.setup()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.datamodule.image_shape)

    def size(self, split: str) -> int:
        return len(getattr(self.datamodule, f"{split}_set"))

    def take(self, split: str, n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [n, C, H, W] in [0, 1] and labels [n] at positions offset..offset+n of ``split``."""
        available = self.size(split)
        if n < 1 or offset + n > available:
            raise ValueError(f"asked for images {offset}..{offset + n} of the {self.source.dataset} {split} split, "
                             f"which holds {available}: lower num_samples")
        return getattr(self.datamodule, f"{split}_set").get_batch(np.arange(offset, offset + n))
