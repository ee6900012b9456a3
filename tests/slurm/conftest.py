"""Fixtures for the tests that submit jobs to a real single-node Slurm (marker ``slurm``).

The cluster is started once per session when none answers (see slurm_cluster.py) and only what was
started here is stopped at the end. Each test gets fresh log and submitit dirs under its tmp_path:
job ids restart at 1 when the cluster state is wiped, so nothing is ever shared between tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # slurm_cluster, slurm_helpers
from slurm_cluster import LocalSlurm, SlurmSetupError  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster():
    cluster = LocalSlurm()
    try:
        cluster.start()
    except SlurmSetupError as err:
        pytest.fail(f"could not start the local Slurm: {err}")
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm_env(tmp_path, mnist_dir) -> dict[str, str]:
    """Environment of the submitting process; sbatch exports it to the jobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(LATENTGEN_DATA_DIR=str(mnist_dir), LATENTGEN_LOG_DIR=str(tmp_path / "logs"),
               OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1",
               LATENTGEN_PYTHON=sys.executable)
    return env


@pytest.fixture(autouse=True)
def cancel_leftover_jobs(tmp_path):
    """After each test, cancel its jobs that still wait or run (a failed assertion leaves them)."""
    yield
    ids = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    for job in ids:
        info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        if str(tmp_path) in info:
            subprocess.run(["scancel", job], check=False)
