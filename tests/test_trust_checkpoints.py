"""Trust in checkpoints: ``ckpt_path`` means what the config says, and checkpoints are read as data.

Real tiny VQ-VAE runs write the checkpoints; damaged, foreign and malicious files are written here
byte for byte, and every one of them is handed to the real loaders, ``train`` and the CLIs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import ListConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, TensorDataset

from latentgen.models.vqvae import VQVAE
from latentgen.stages.checkpoints import load_model
from latentgen.train import train
from latentgen.utils.checkpoint_io import CheckpointError, load_checkpoint
from latentgen.utils.resume import RESTARTS_FILE

from .conftest import REPO, TINY, compose_train, data_dir

RUN = ["debug=limit", "logger=csv", "test=false"]
NOISE = ("PytorchStreamReader", "UnpicklingError", "Weights only load failed", "Traceback")


def fit(run_dir: Path, *overrides: str, experiment: str = "vqvae_mnist") -> pl.Trainer:
    """``latentgen.train`` of a tiny run in ``run_dir``; returns its trainer."""
    tiny = TINY if experiment == "vqvae_mnist" else []
    cfg = compose_train([f"+experiment={experiment}", *RUN, *tiny, *overrides], run_dir.parent)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    try:
        return train(cfg)[1]["trainer"]
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, mnist_dir) -> Path:
    """A run dir whose ``checkpoints/last.ckpt`` is a real VQ-VAE training checkpoint at step 4."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert fit(run_dir, "trainer.max_steps=4").global_step == 4
    return run_dir


@pytest.fixture
def run_copy(trained_dir, tmp_path) -> Path:
    return Path(shutil.copytree(trained_dir, tmp_path / "run"))


class WritesFileWhenLoaded:
    """A pickle payload that would create ``marker`` when unpickled: loading it must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path: Path, marker: Path, writer: str) -> Path:
    payload = {"global_step": 99, "optimizer_states": [], "state_dict": WritesFileWhenLoaded(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def write_bad(kind: str, path: Path, good: Path) -> Path:
    """A file that is not a usable checkpoint, of the given ``kind``."""
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "cut short":
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("model: vqvae\nsteps: 4\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "foreign dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return path


def set_newer(path: Path, than: Path, seconds: int) -> None:
    t = than.stat().st_mtime + seconds
    os.utime(path, (t, t))


# -- ckpt_path means what the config says -----------------------------------------------------------
def test_null_ckpt_path_starts_fresh_in_a_run_dir_with_checkpoints(run_copy):
    trainer = fit(run_copy, "ckpt_path=null", "trainer.max_steps=2")
    assert trainer.global_step == 2  # from step 0, not the step-4 last.ckpt of the run dir
    assert not (run_copy / RESTARTS_FILE).exists()


def test_auto_resume_skips_damaged_and_unsafe_checkpoints(run_copy, tmp_path, caplog):
    last = run_copy / "checkpoints" / "last.ckpt"
    truncated = write_bad("truncated", run_copy / "checkpoints" / "on_exception.ckpt", last)
    marker = tmp_path / "code_ran"
    planted = write_malicious(run_copy / "checkpoints" / "periodic.ckpt", marker, "torch.save")
    set_newer(truncated, last, 10)
    set_newer(planted, last, 20)

    with caplog.at_level(logging.WARNING, logger="latentgen"):
        trainer = fit(run_copy, "trainer.max_steps=6")
    assert not marker.exists(), "resuming ran code stored in a checkpoint"
    assert trainer.global_step == 6
    restart = json.loads((run_copy / RESTARTS_FILE).read_text().splitlines()[-1])
    assert (restart["checkpoint"], restart["global_step"]) == (str(last), 4)
    warnings = caplog.text
    assert f"Skipping checkpoint {planted}: it is refused as unsafe" in warnings
    assert f"Skipping checkpoint {truncated}: it cannot be used to resume training" in warnings
    assert f"is {last} (global step 4); skipped the newer periodic.ckpt, on_exception.ckpt" in warnings


def test_auto_resume_with_only_damaged_checkpoints_starts_fresh(tmp_path, trained_dir, caplog):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    good = trained_dir / "checkpoints" / "last.ckpt"
    for name in ("last.ckpt", "on_exception.ckpt"):  # the files Lightning's own "last" would pick
        write_bad("truncated", run_dir / "checkpoints" / name, good)
    with caplog.at_level(logging.WARNING, logger="latentgen"):
        trainer = fit(run_dir, "trainer.max_steps=2")
    assert trainer.global_step == 2
    assert f"No usable checkpoint in {run_dir}" in caplog.text


@pytest.mark.parametrize("case", ["another stage", "another config", "weights only"])
def test_unfitting_ckpt_path_is_refused_before_training(case, trained_dir, tmp_path):
    ckpt = trained_dir / "checkpoints" / "last.ckpt"
    experiment, overrides, message = {
        "another stage": ("classifier_mnist", [],
                          r"holds a latentgen\.models\.vqvae\.VQVAE checkpoint, but this run trains "
                          r"latentgen\.models\.classifier\.Classifier"),
        "another config": ("vqvae_mnist", ["model.base_channels=16"], r"does not match this run's VQVAE"),
        "weights only": ("vqvae_mnist", [], r"holds no training state"),
    }[case]
    if case == "weights only":
        full = torch.load(ckpt, map_location="cpu", weights_only=True)
        ckpt = tmp_path / "weights.ckpt"
        torch.save({k: v for k, v in full.items() if k not in ("optimizer_states", "lr_schedulers")}, ckpt)
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointError, match=message) as err:
        fit(run_dir, f"ckpt_path={ckpt}", *overrides, experiment=experiment)
    assert str(ckpt) in str(err.value)
    assert not (run_dir / "checkpoints" / "on_exception.ckpt").exists()
    assert not list(run_dir.glob("**/*.ckpt"))


# -- checkpoints are data, not code -----------------------------------------------------------------
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_would_run_code_is_refused(writer, tmp_path):
    marker = tmp_path / "code_ran"
    path = write_malicious(tmp_path / "model.ckpt", marker, writer)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert not marker.exists(), "loading ran code stored in a checkpoint"
    assert str(path) in str(err.value)
    if writer == "torch.save":
        assert "refused as unsafe: loading it would import posix.system" in str(err.value)


@pytest.mark.parametrize("kind", ["truncated", "cut short", "random", "text", "empty", "tensor", "foreign dict"])
def test_unusable_files_get_one_clear_error_naming_the_file(kind, trained_dir, tmp_path):
    path = write_bad(kind, tmp_path / f"{kind.replace(' ', '_')}.ckpt", trained_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} ") and ": pass a" in message
    assert not any(word in message for word in NOISE), message


def test_checkpoint_cannot_make_latentgen_import_another_module(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"latentgen_class": "this.Model", "state_dict": {}}, path)  # importing `this` prints a poem
    assert "this" not in sys.modules
    with pytest.raises(CheckpointError, match=r"names the class this\.Model, which is not a latentgen model"):
        load_model(path)
    assert "this" not in sys.modules


def test_checkpoints_with_omegaconf_hyperparameters_load_as_data(trained_dir, tmp_path):
    """Checkpoints of earlier versions hold OmegaConf containers: data types, allow-listed."""
    ckpt = torch.load(trained_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"] = OmegaConf.create(ckpt["hyper_parameters"])
    torch.save(ckpt, tmp_path / "old.ckpt")
    model = load_model(tmp_path / "old.ckpt")
    assert isinstance(model, VQVAE) and model.num_codes == 16
    assert torch.equal(model.state_dict()["quantizer.codebook"], ckpt["state_dict"]["quantizer.codebook"])


def test_hyperparameters_are_saved_as_plain_data(tmp_path):
    model = VQVAE(hidden_channels=16, res_channels=8, num_res_blocks=1, latent_dim=8, num_codes=16,
                  lr=np.float64(1e-3), betas=ListConfig([0.9, 0.99]), num_log_images=0)
    images = torch.rand(8, 1, 28, 28)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(TensorDataset(images, torch.zeros(8, dtype=torch.long)), batch_size=4))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    hparams = torch.load(tmp_path / "m.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert type(hparams["optimizer"]["lr"]) is float and type(hparams["optimizer"]["betas"]) is list
    assert load_checkpoint(tmp_path / "m.ckpt", purpose="test")["global_step"] == 1


def test_cli_reports_a_bad_checkpoint_in_one_line(trained_dir, tmp_path):
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(data_dir()), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true"}
    good = trained_dir / "checkpoints" / "last.ckpt"
    runs = {}
    for entrypoint, kind in (("sample", "truncated"), ("evaluate", "text")):  # both CLIs at once
        path = write_bad(kind, tmp_path / f"{entrypoint}.ckpt", good)
        cmd = [sys.executable, "-m", f"latentgen.{entrypoint}", f"ckpt={path}", f"hydra.run.dir={tmp_path / entrypoint}"]
        runs[entrypoint, path] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True)
    for (entrypoint, path), proc in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode != 0
        assert f"Error: checkpoint {path} cannot be used to {entrypoint}" in stderr, stderr
        assert not any(word in stdout + stderr for word in NOISE), stderr
