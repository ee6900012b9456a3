"""Non-finite training never passes: it stops with a clear error, keeps the last finite checkpoint,
and nothing non-finite is ever published to (or reused from) the artefact store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from latentgen.callbacks.finite_check import NonFiniteTrainingError
from latentgen.stages.artifacts import ArtifactCheckError, checkpoint_problems
from latentgen.train import train

from .conftest import TINY, compose_train, data_dir

DIVERGE = ["+experiment=vqvae_mnist", "debug=limit", "logger=csv", "test=false", "model.optimizer.lr=1e10", *TINY]


def stage1_overrides(*overrides: str) -> str:
    """``stage1.overrides=[...]`` as written on the command line (each override quoted)."""
    return "stage1.overrides=[" + ",".join(f'"{o}"' for o in overrides) + "]"


def _finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def _store_cfg(tmp_path: Path, *overrides: str):
    cfg = compose_train(list(overrides), tmp_path)
    with open_dict(cfg):
        cfg.paths.artifact_dir = str(tmp_path / "artifacts")
    return cfg


def test_diverging_run_stops_naming_step_metric_fixes_and_last_finite_checkpoint(tmp_path, mnist_dir):
    cfg = compose_train([*DIVERGE, "callbacks.periodic_checkpoint.every_n_train_steps=1"], tmp_path)
    with pytest.raises(NonFiniteTrainingError) as err:
        train(cfg)
    msg = str(err.value)
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    periodic = ckpt_dir / "periodic.ckpt"
    # step 0 trains on a finite loss with lr 1e10, the loss of step 1 is NaN
    assert "global step 1" in msg and "train/loss" in msg, msg
    assert f"Last finite checkpoint (kept): {periodic} (global step 1)" in msg, msg
    assert "model.optimizer.lr=1e+10" in msg and "trainer.gradient_clip_val=1.0" in msg and "trainer.precision" in msg
    assert periodic.is_file() and _finite(periodic)
    # no checkpoint with NaN weights was written, not even the on-exception "resume point"
    assert not (ckpt_dir / "on_exception.ckpt").exists()
    assert all(_finite(p) for p in ckpt_dir.glob("*.ckpt"))


@pytest.mark.slow
def test_diverging_run_exits_non_zero(tmp_path, mnist_dir):
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(data_dir()), "LATENTGEN_LOG_DIR": str(tmp_path / "logs"),
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "latentgen.train", *DIVERGE, "debug=fdr", "extras.print_config=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "NonFiniteTrainingError" in proc.stderr and "val/loss" in proc.stderr, proc.stderr[-3000:]


def test_prior_never_stores_a_nan_stage1(tmp_path, mnist_dir):
    """The issue's reproduction: a prior whose stage 1 diverges stores nothing, so no later run reuses it."""
    s1 = stage1_overrides("model.optimizer.lr=1e10", *TINY)
    for _ in range(2):  # the second run trains (and fails) again instead of reusing anything
        cfg = _store_cfg(tmp_path, "+experiment=pixelcnn_mnist", "debug=limit", "logger=csv", s1)
        with pytest.raises(NonFiniteTrainingError, match=r"(?s)train/loss.*This was the training of stage 1 "
                                                         r"\(vqvae_mnist\) for the artefact store.*stage1.overrides="):
            train(cfg)
    store = tmp_path / "artifacts" / "stage1"
    assert not list(store.glob("*/meta.json")) and not list(store.glob(".*.tmp-*"))
    assert len(list(store.glob("*.runs/*"))) == 2  # the failed runs stay, for their logs and checkpoints


def test_store_refuses_a_nan_stage1_even_without_the_callback(tmp_path, mnist_dir):
    s1 = stage1_overrides("model.optimizer.lr=1e10", "callbacks=none", *TINY)
    cfg = _store_cfg(tmp_path, "+experiment=pixelcnn_mnist", "debug=fdr", s1)
    # one step at lr 1e10 leaves huge but finite weights, whose validation loss is NaN
    with pytest.raises(ArtifactCheckError, match=r"Not storing artefact stage1/\w+: its metadata has non-finite "
                                                 r"values: metrics/val/loss"):
        train(cfg)
    store = tmp_path / "artifacts" / "stage1"
    assert not [p for p in store.iterdir() if not p.name.endswith((".lock", ".runs"))]


def test_latent_cache_with_non_finite_latents_is_not_stored(tmp_path, mnist_dir, trained_run):
    """Finite but huge stage-1 weights encode to inf latents: the cache build fails and stores nothing."""
    ckpt = torch.load(trained_run("vqvae_mnist", *TINY) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    ckpt["state_dict"] = {k: v * 1e30 if k.startswith("encoder.") and v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    huge = tmp_path / "huge.ckpt"
    torch.save(ckpt, huge)
    assert checkpoint_problems(huge) == []
    cfg = _store_cfg(tmp_path, "+experiment=pixelcnn_mnist", "debug=fdr", f"stage1.ckpt_path={huge}",
                     "model.num_tokens=null", "model.grid_shape=null", stage1_overrides(*TINY))
    with pytest.raises(ArtifactCheckError, match=r"latents/\w+: test_latents.npy holds non-finite values"):
        train(cfg)
    assert not list((tmp_path / "artifacts" / "latents").glob("*/meta.json"))


def test_explicit_nan_stage1_checkpoint_is_refused(tmp_path, mnist_dir, trained_run):
    ckpt = torch.load(trained_run("vqvae_mnist", *TINY) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
    nan = tmp_path / "nan.ckpt"
    torch.save(ckpt, nan)
    cfg = _store_cfg(tmp_path, "+experiment=pixelcnn_mnist", "debug=fdr", f"stage1.ckpt_path={nan}")
    with pytest.raises(ArtifactCheckError, match=rf"{nan} has non-finite weights \({name}"):
        train(cfg)

