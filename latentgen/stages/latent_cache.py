"""Latent cache: the train/val/test splits encoded once by the frozen stage 1.

Stored in the artefact store under ``latents/<key>`` where the key hashes the stage-1 checkpoint's
SHA-256 and the data identity (dataset, split). Per split: ``<split>_tokens.npy`` (int16/int32
[N, h, w]), ``<split>_latents.npy`` (float32 [N, C, h, w], continuous pre-quantisation latents) and
``<split>_labels.npy``. Post-quantisation latents are the codebook vectors of the tokens, so they are
looked up from the codebook instead of being stored twice. Files are read memory-mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from latentgen.stages.artifacts import ArtifactStore, hash_json
from latentgen.stages.stage1 import Stage1
from latentgen.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=False)

KIND = "latents"
SPLITS = ("train", "val", "test")
FIELDS = ("tokens", "latents", "labels")


def cache_key(stage1: Stage1, data_cfg: DictConfig, max_items: int | None = None) -> str:
    data = OmegaConf.to_container(data_cfg, resolve=True)
    identity = {k: data.get(k) for k in ("_target_", "val_size", "split_seed")}
    return hash_json({"stage1_sha256": stage1.sha256, "data": identity, "max_items": max_items})[:16]


@torch.no_grad()
def _encode_split(stage1: Stage1, datamodule: pl.LightningDataModule, split: str, out: Path,
                  batch_size: int, device: torch.device, max_items: int | None = None) -> int:
    model = stage1.model.to(device).eval()
    loader = datamodule.dataloader(split, shuffle=False, batch_size=batch_size)
    n = len(loader.dataset) if max_items is None else min(max_items, len(loader.dataset))
    grid = tuple(model.latent_grid(tuple(datamodule.image_shape[1:])))
    tokens = None
    if model.discrete:  # a continuous stage 1 (KL autoencoder) has latents only
        token_dtype = np.int16 if model.num_codes <= np.iinfo(np.int16).max else np.int32
        tokens = np.lib.format.open_memmap(out / f"{split}_tokens.npy", "w+", token_dtype, (n, *grid))
    latents = np.lib.format.open_memmap(out / f"{split}_latents.npy", "w+", np.float32, (n, model.latent_dim, *grid))
    labels = np.lib.format.open_memmap(out / f"{split}_labels.npy", "w+", np.int64, (n,))
    i = 0
    for x, y in tqdm(loader, desc=f"encoding {split} latents", total=-(-n // batch_size), leave=False):
        if i >= n:
            break
        x, y = x[: n - i], y[: n - i]
        z = model.encode(x.to(device))
        b = x.shape[0]
        if tokens is not None:
            tokens[i : i + b] = model.quantize(z)[1].cpu().numpy().astype(token_dtype)
        latents[i : i + b] = z.float().cpu().numpy()
        labels[i : i + b] = y.numpy()
        i += b
    for arr in (tokens, latents, labels):
        if arr is not None:
            arr.flush()
    del tokens, latents, labels
    return n


def build_latent_cache(stage1: Stage1, data_cfg: DictConfig, artifact_dir: str | Path,
                       batch_size: int = 1000, max_items: int | None = None,
                       device: str | torch.device | None = None) -> Path:
    """Encode every split once (exactly once across concurrent processes); returns the cache dir.

    A stored cache is reused only if it is complete and its float latents are finite; a cache whose
    latents are not finite is never stored.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    store = ArtifactStore(artifact_dir)
    key = cache_key(stage1, data_cfg, max_items)

    def encode(staging: Path) -> dict[str, Any]:
        datamodule = hydra.utils.instantiate(data_cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        counts = {s: _encode_split(stage1, datamodule, s, staging, batch_size, device, max_items) for s in SPLITS}
        model = stage1.model.cpu()
        log.info(f"Latent cache {key} encoded ({counts})")
        return {
            "stage1": stage1.describe(), "counts": counts, "num_codes": model.num_codes,
            "latent_dim": model.latent_dim, "grid_shape": list(model.latent_grid(tuple(datamodule.image_shape[1:]))),
            "image_shape": list(datamodule.image_shape), "num_classes": datamodule.num_classes,
            "dataset": datamodule.name,
        }

    path, built = store.fetch_or_build(KIND, key, f"latent cache {key}", encode)
    log.info(f"Latent cache written to {path}" if built else f"Reusing latent cache {path}")
    return path


def load_split(cache_dir: str | Path, split: str) -> dict[str, np.ndarray]:
    """Memory-mapped arrays of one split."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {SPLITS}")
    d = Path(cache_dir)  # a continuous stage 1's cache has no tokens
    return {f: np.load(d / f"{split}_{f}.npy", mmap_mode="r") for f in FIELDS if f != "tokens" or
            (d / f"{split}_{f}.npy").exists()}
