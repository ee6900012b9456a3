"""Restarts: kill -9 then the same command resumes; epoch-boundary resume is bit-exact; W&B run id kept
and its step count continued."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from latentgen.train import train
from latentgen.utils.resume import (
    RESTARTS_FILE,
    WANDB_ID_FILE,
    find_resume_checkpoint,
    prepare_wandb_resume,
    slurm_run_name,
)
from latentgen.utils.wandb_sync import logged_steps

from .conftest import REPO, TINY


def run_env(data: Path) -> dict[str, str]:
    return {**os.environ, "LATENTGEN_DATA_DIR": str(data), "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}


def ckpt_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


# -- unit level --------------------------------------------------------------------------------------
def test_slurm_run_name_is_stable_per_job_and_step():
    assert slurm_run_name({}) is None
    assert slurm_run_name({"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "train"}) == "slurm-42"
    assert slurm_run_name({"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "train", "SLURM_STEP_ID": "0"}) == "slurm-42.0"
    array = {"SLURM_JOB_ID": "50", "SLURM_ARRAY_JOB_ID": "49", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_NAME": "x"}
    assert slurm_run_name(array) == "slurm-49_1"
    assert slurm_run_name({"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "interactive"}) is None


def test_find_resume_checkpoint_takes_newest_readable(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    assert find_resume_checkpoint(tmp_path) is None
    torch.save({"global_step": 4, "optimizer_states": []}, ckpts / "last.ckpt")
    time.sleep(0.01)
    torch.save({"global_step": 6, "optimizer_states": []}, ckpts / "periodic.ckpt")
    assert find_resume_checkpoint(tmp_path) == (ckpts / "periodic.ckpt", 6)
    time.sleep(0.01)
    (ckpts / "on_exception.ckpt").write_bytes(b"truncated by a kill")  # newest but damaged
    assert find_resume_checkpoint(tmp_path) == (ckpts / "periodic.ckpt", 6)


def test_wandb_run_id_is_persisted_and_reused(compose_cfg):
    cfg = compose_cfg("+experiment=vqvae_mnist", "logger=wandb")
    run_id = prepare_wandb_resume(cfg)
    assert cfg.logger.wandb.id == run_id and cfg.logger.wandb.resume == "allow"
    assert (Path(cfg.paths.output_dir) / WANDB_ID_FILE).read_text().strip() == run_id
    again = compose_cfg("+experiment=vqvae_mnist", "logger=wandb")
    assert prepare_wandb_resume(again) == run_id
    explicit = compose_cfg("+experiment=vqvae_mnist", "logger=wandb", "logger.wandb.id=chosen1")
    assert prepare_wandb_resume(explicit) == "chosen1"


# -- in-process: resume at an epoch boundary reproduces the uninterrupted run bit for bit ------------
def test_epoch_boundary_resume_is_bit_exact_and_continues_wandb_run(compose_cfg, tmp_path, mnist_dir):
    def fit(run_dir: Path, *overrides: str):
        cfg = compose_cfg("+experiment=vqvae_mnist", "debug=limit", "test=false", "model.scheduler.decay=constant",
                          "model.scheduler.warmup_steps=0", "trainer.max_steps=-1", "trainer.limit_train_batches=6", *TINY, *overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
        return train(cfg)[1]["trainer"]

    cut = tmp_path / "cut"
    full = fit(tmp_path / "full", "logger=csv", "trainer.max_epochs=2")
    fit(cut, "logger=wandb", "trainer.max_epochs=1")
    resumed = fit(cut, "logger=wandb", "trainer.max_epochs=2")

    assert full.global_step == resumed.global_step == 12
    restarts = (cut / RESTARTS_FILE).read_text().splitlines()
    assert len(restarts) == 1 and json.loads(restarts[0])["global_step"] == 6
    a, b = full.lightning_module.state_dict(), resumed.lightning_module.state_dict()
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"resumed run differs from the uninterrupted one in {differing[:5]}"
    opt_a, opt_b = full.optimizers[0].state_dict()["state"], resumed.optimizers[0].state_dict()["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
    # both processes of the cut run logged into one W&B run, the second from where the first stopped
    wandb_dirs = sorted((cut / "wandb").glob("offline-run-*"))
    run_id = (cut / WANDB_ID_FILE).read_text().strip()
    assert len(wandb_dirs) == 2 and all(d.name.endswith(run_id) for d in wandb_dirs), wandb_dirs
    first, second = (logged_steps(d) for d in wandb_dirs)
    # W&B writes its offline log in batches: on a loaded machine the stopped process's last batch can
    # be missing, so its rows must be steps 0..5 in order but may end early; the resumed one continues at 6
    assert not first or (first[0] == 0 and max(first) <= 6), (first, second)
    assert (second[0], second[-1]) == (6, 11) and min(second) == 6, (first, second)


# -- subprocess: kill -9, then the very same command ---------------------------------------------------
@pytest.mark.slow
def test_kill_9_then_same_command_resumes_to_uninterrupted_step_count(tmp_path, mnist_dir):
    run_dir = tmp_path / "run"
    epochs, batches = 3, 10
    cmd = [sys.executable, "-m", "latentgen.train", "+experiment=vqvae_mnist", "debug=limit", "logger=csv",
           "test=false", f"hydra.run.dir={run_dir}", "trainer.max_steps=-1", f"trainer.max_epochs={epochs}",
           f"trainer.limit_train_batches={batches}", "callbacks.periodic_checkpoint.every_n_train_steps=2",
           "extras.print_config=false", *TINY]
    periodic = run_dir / "checkpoints" / "periodic.ckpt"
    with open(tmp_path / "first.log", "w") as out:
        first = subprocess.Popen(cmd, cwd=REPO, env=run_env(mnist_dir), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not periodic.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.kill()  # SIGKILL: no handler, no exception checkpoint
        first.wait()
    assert periodic.exists(), (tmp_path / "first.log").read_text()[-3000:]
    killed_at = ckpt_step(periodic)
    assert 0 < killed_at < epochs * batches

    second = subprocess.run(cmd, cwd=REPO, env=run_env(mnist_dir), capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    restarts = [json.loads(line) for line in (run_dir / RESTARTS_FILE).read_text().splitlines()]
    assert len(restarts) == 1 and restarts[0]["global_step"] >= killed_at > 0, restarts
    assert ckpt_step(run_dir / "checkpoints" / "last.ckpt") == epochs * batches
