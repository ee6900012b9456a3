"""Sampling entrypoint: ``python -m latentgen.sample ckpt=PATH [num_samples=64 seed=0 ...]``.

Works from a stage-2 checkpoint alone; writes ``samples.png`` and ``samples.npz`` (uint8 images,
labels, raw token grids or latents) to the run dir.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from latentgen.sampling.from_checkpoint import (
    draw_samples,
    load_prior,
    real_prefix_grids,
    with_guidance_classifier,
)
from latentgen.utils import resolvers
from latentgen.utils.checkpoint_io import exit_on_checkpoint_error
from latentgen.utils.images import save_grid
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.run import extras

log = RankedLogger(__name__)


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Draw samples as configured; returns the paths written."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model = load_prior(cfg.ckpt, device)
    options = {k: v for k, v in OmegaConf.to_container(cfg.sampling).items() if v is not None}
    options = with_guidance_classifier(model, options, cfg.guidance_classifier, cfg.paths, device)
    prefix = None
    labels = cfg.labels if not OmegaConf.is_list(cfg.labels) else list(cfg.labels)
    if cfg.prefix.enabled:
        prefix, real_labels = real_prefix_grids(model, cfg.num_samples, cfg.prefix.split, cfg.paths.data_dir)
        labels = labels if labels is not None else real_labels
    images, labels_out, raw = draw_samples(model, cfg.num_samples, cfg.batch_size, cfg.seed, labels, options,
                                           prefix=prefix, prefix_fraction=cfg.prefix.fraction,
                                           progress=cfg.show_progress)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    nrow = cfg.nrow or (model.num_classes if model.num_classes and labels is None else None)
    png = save_grid(images, out / "samples.png", nrow=nrow)
    npz = out / "samples.npz"
    np.savez_compressed(npz, images=(images.clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
                        labels=np.asarray(labels_out if labels_out is not None else []), samples=raw.numpy(),
                        seed=cfg.seed, ckpt=str(cfg.ckpt))
    log.info(f"Wrote {png} and {npz}")
    print(f"samples: {png}\narrays:  {npz}")
    return {"png": png, "npz": npz}


@hydra.main(version_base="1.3", config_path=str(resolvers.CONF_DIR), config_name="sample.yaml")
def main(cfg: DictConfig) -> None:
    extras(cfg)
    with exit_on_checkpoint_error():  # a bad checkpoint file: one clear error, no traceback
        sample(cfg)


if __name__ == "__main__":
    main()
