"""Hydra multirun through the submitit Slurm launcher on a real Slurm: one job per config, results back."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from slurm_helpers import REPO, TINY, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_multirun_of_two_experiments_on_slurm_returns_both_results(slurm_cluster, slurm_env, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "latentgen.train", "-m", "hydra/launcher=slurm_local_test",
           "+experiment=vqvae_mnist,vqvae_fashion_mnist", "debug=fdr", "extras.print_config=false", *TINY,
           f"hydra.sweep.dir={sweep}"]
    res = subprocess.run(cmd, cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    results = sorted((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2, sorted(p.name for p in (sweep / ".submitit").rglob("*"))
    returned = {}
    for path in results:
        with open(path, "rb") as f:
            outcome, job_return = pickle.load(f)
        assert outcome == "success", job_return
        returned[job_return.hydra_cfg.hydra.runtime.choices.experiment] = job_return
        # the result file is written before the job step ends; Slurm marks it COMPLETED moments later
        assert wait_job(path.parent.name, timeout=120) == "COMPLETED"
    assert set(returned) == {"vqvae_mnist", "vqvae_fashion_mnist"}
    for ret in returned.values():
        assert isinstance(ret.return_value, float)  # optimized_metric (val/recon_loss) came back
        run_dir = sweep / str(ret.hydra_cfg.hydra.job.num)  # its own subdir of the sweep
        assert ret.hydra_cfg.hydra.runtime.output_dir == str(run_dir)
        assert (run_dir / f"{ret.cfg.task_name}.log").is_file(), sorted(p.name for p in run_dir.iterdir())
    # submitted as Slurm jobs with the preset's requeue signal
    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR1@30" in script and "#SBATCH --partition=debug" in script
