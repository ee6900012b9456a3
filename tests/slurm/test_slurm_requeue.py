"""Preemption on a real Slurm: SIGUSR1 -> checkpoint at a step boundary -> requeue -> resume -> full run."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch
from slurm_helpers import REPO, TINY, sacct, sbatch, wait_for, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EPOCHS, BATCHES = 3, 20


def test_usr1_requeues_and_the_job_resumes_to_the_uninterrupted_step_count(slurm_cluster, slurm_env, tmp_path):
    job = sbatch(
        REPO / "slurm" / "train.sbatch", "+experiment=vqvae_mnist", "debug=limit", "trainer=cpu", "logger=csv",
        "test=false", "trainer.max_steps=-1", f"trainer.max_epochs={EPOCHS}", f"trainer.limit_train_batches={BATCHES}",
        "callbacks.periodic_checkpoint.every_n_train_steps=2", "extras.print_config=false", *TINY,
        env=slurm_env,
        sbatch_args=["--partition=debug", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
                     f"--output={tmp_path}/slurm-%j.out", f"--chdir={REPO}"],
    )
    log = tmp_path / f"slurm-{job}.out"
    runs = tmp_path / "logs" / "debug" / "runs"
    # training is under way once the first periodic checkpoint exists; then "preempt" the job
    periodic = wait_for(lambda: next(runs.glob("slurm-*/checkpoints/periodic.ckpt"), None), 240,
                        "the first periodic checkpoint", interval=0.1)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)

    assert wait_job(job, timeout=300) == "COMPLETED", log.read_text()[-4000:]
    run_dirs = list(runs.iterdir())
    assert [d.name for d in run_dirs] == [f"slurm-{job}.0"], "the requeued job must reuse its run dir"
    run_dir = periodic.parents[1]
    states = [r["State"].split()[0] for r in sacct(job, duplicates=True)]
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states

    restarts = [json.loads(line) for line in (run_dir / "restarts.jsonl").read_text().splitlines()]
    assert len(restarts) == 1, restarts
    assert restarts[0]["slurm_restart_count"] == 1 and restarts[0]["checkpoint"].endswith("requeue.ckpt")
    assert 0 < restarts[0]["global_step"] < EPOCHS * BATCHES
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == EPOCHS * BATCHES
    text = log.read_text()
    assert "Requeued Slurm job" in text and "restart 1" in text, text[-4000:]


def test_submitit_launcher_job_requeues_once_and_returns_its_result(slurm_cluster, slurm_env, tmp_path):
    """The same mechanism under hydra-submitit: submitit does not requeue on its own, nor fight it."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "latentgen.train", "-m", "hydra/launcher=slurm_local_test", "+experiment=vqvae_mnist",
           "debug=limit", "trainer=cpu", "logger=csv", "test=false", "trainer.max_steps=-1",
           f"trainer.max_epochs={EPOCHS}", f"trainer.limit_train_batches={BATCHES}",
           "callbacks.periodic_checkpoint.every_n_train_steps=2", "extras.print_config=false", *TINY,
           f"hydra.sweep.dir={sweep}"]
    client = subprocess.Popen(cmd, cwd=REPO, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (sweep / "0" / "checkpoints" / "periodic.ckpt").exists(), 240, "training to start",
                 interval=0.1)
        (job,) = [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        out, _ = client.communicate(timeout=300)
    finally:
        client.kill()
    assert client.returncode == 0, out[-4000:]
    assert [r["State"].split()[0] for r in sacct(job, duplicates=True)] == ["REQUEUED", "COMPLETED"]
    with open(sweep / ".submitit" / job / f"{job}_0_result.pkl", "rb") as f:
        outcome, job_return = pickle.load(f)
    assert outcome == "success" and isinstance(job_return.return_value, float)
    restarts = [json.loads(line) for line in (sweep / "0" / "restarts.jsonl").read_text().splitlines()]
    assert len(restarts) == 1 and restarts[0]["global_step"] > 0 and restarts[0]["slurm_restart_count"] == 1
    last = torch.load(sweep / "0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == EPOCHS * BATCHES
