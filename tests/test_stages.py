"""Stage-1 hand-off: artefact reuse, concurrency, strict checks, self-contained prior checkpoints."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from latentgen.models.autoregressive_priors import PixelCNNPrior
from latentgen.stages.artifacts import ArtifactStore
from latentgen.stages.child_train import OUTPUT_LOG
from latentgen.train import train

from .conftest import compose_train, data_dir


def _cfg(tmp_path: Path, *overrides: str, log_dir: Path | None = None):
    cfg = compose_train(list(overrides), tmp_path)
    with open_dict(cfg):
        cfg.paths.log_dir = str(log_dir or tmp_path / "logs")
        cfg.paths.artifact_dir = str(Path(cfg.paths.log_dir) / "artifacts")
    return cfg


def _stage1_runs(log_dir: Path) -> list[Path]:
    return [p for p in (log_dir / "artifacts" / "stage1").glob("*.runs/*") if p.is_dir()]


def test_prior_trains_stage1_once_and_reuses_it(tmp_path, mnist_dir, caplog):
    logs = tmp_path / "logs"
    cfg = _cfg(tmp_path / "a", "+experiment=pixelcnn_mnist", "debug=limit", log_dir=logs)
    metrics, _ = train(cfg)
    assert "val/bits_per_token" in metrics and "test/nll" in metrics
    assert len(_stage1_runs(logs)) == 1
    caches = list((logs / "artifacts" / "latents").glob("*/meta.json"))
    assert len(caches) == 1
    meta = json.loads(caches[0].read_text())
    assert meta["counts"] == {"train": 256, "val": 256, "test": 256}
    tokens = np.load(caches[0].parent / "train_tokens.npy", mmap_mode="r")
    assert tokens.shape == (256, 7, 7) and 0 <= tokens.min() and tokens.max() < 256

    caplog.set_level(logging.INFO)
    cfg2 = _cfg(tmp_path / "b", "+experiment=transformer_mnist", "debug=limit", log_dir=logs)
    train(cfg2)
    assert len(_stage1_runs(logs)) == 1, "stage 1 was trained a second time"
    assert "Reusing stage-1 artefact" in caplog.text and "Reusing latent cache" in caplog.text


def test_concurrent_priors_train_stage1_exactly_once(tmp_path, mnist_dir):
    logs = tmp_path / "logs"
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(data_dir()), "LATENTGEN_LOG_DIR": str(logs),
           "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "latentgen.train", "debug=fdr", "extras.print_config=false"]
    procs = [
        subprocess.Popen([*cmd, f"+experiment={exp}"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for exp in ("pixelcnn_mnist", "transformer_mnist")
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    (run,) = _stage1_runs(logs)
    assert (run / OUTPUT_LOG).is_file()  # trained by a child process of the prior that took the lock
    text = "\n".join(outputs)
    assert text.count("Training stage 1") == 1
    assert text.count("Reusing stage-1 artefact") == 1


def test_codebook_mismatch_is_a_clear_error(tmp_path, mnist_dir):
    cfg = _cfg(tmp_path, "+experiment=pixelcnn_mnist", "debug=fdr", "model.num_tokens=64")
    with pytest.raises(ValueError, match=r"model.num_tokens=64 .* codebook size 256"):
        train(cfg)


def test_explicit_stage1_checkpoint_with_other_codebook_fails(tmp_path, mnist_dir):
    s1 = _cfg(tmp_path / "s1", "+experiment=vqvae_mnist", "debug=limit", "model.num_codes=32", "test=false")
    _, objects = train(s1)
    ckpt = objects["trainer"].checkpoint_callback.last_model_path
    cfg = _cfg(tmp_path, "+experiment=transformer_mnist", "debug=fdr", f"stage1.ckpt_path={ckpt}")
    with pytest.raises(ValueError, match="codebook size 32"):
        train(cfg)


def test_auto_train_off_names_the_command(tmp_path, mnist_dir):
    cfg = _cfg(tmp_path, "+experiment=pixelcnn_mnist", "debug=fdr", "stage1.auto_train=false")
    with pytest.raises(RuntimeError, match=r"latentgen-artifacts train \+experiment=vqvae_mnist debug=fdr"):
        train(cfg)


def test_prior_checkpoint_alone_decodes_images(tmp_path, mnist_dir):
    cfg = _cfg(tmp_path, "+experiment=pixelcnn_mnist", "debug=limit", "test=false")
    _, objects = train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    model = PixelCNNPrior.load_from_checkpoint(ckpt, map_location="cpu")
    assert model.hparams.stage1_info["sha256"]
    images = model.sample_images(4, labels=[0, 1, 2, 3], generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 28, 28)
    assert 0.0 <= images.min() and images.max() <= 1.0
    trained = objects["model"]
    for a, b in zip(model.stage1.state_dict().values(), trained.stage1.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert list((Path(cfg.paths.output_dir) / "images").glob("samples_step*.png"))
    assert list((Path(cfg.paths.output_dir) / "images").glob("completions_step*.png"))


def test_incomplete_or_corrupt_artefacts_are_not_trusted(tmp_path):
    store = ArtifactStore(tmp_path)
    staging = store.staging_dir("stage1", "abc")
    torch.save({"state_dict": {"w": torch.ones(2)}}, staging / "model.ckpt")
    assert store.meta("stage1", "abc") is None  # staged but never published
    store.publish("stage1", "abc", staging, {"note": "x"})
    assert store.meta("stage1", "abc")["note"] == "x"
    (store.path("stage1", "abc") / "model.ckpt").write_bytes(b"truncated")
    assert store.meta("stage1", "abc") is None  # checksum no longer matches
