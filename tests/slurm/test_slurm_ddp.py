"""Two-task CPU DDP through srun (slurm/ddp.sbatch): both ranks train and keep one codebook."""

from __future__ import annotations

import pytest
import torch
from slurm_helpers import REPO, TINY, sbatch, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_two_task_srun_ddp_trains_on_both_ranks_with_one_codebook(slurm_cluster, slurm_env, tmp_path):
    job = sbatch(
        REPO / "slurm" / "ddp.sbatch", "+experiment=vqvae_mnist", "debug=limit", "trainer=ddp_sim", "logger=csv",
        "test=false", "trainer.max_steps=-1", "trainer.max_epochs=1", "callbacks=[default,codebook_snapshot]", "extras.print_config=false",
        *TINY,
        env=slurm_env,
        sbatch_args=["--partition=debug", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1",
                     "--time=10", f"--output={tmp_path}/slurm-%j.out", f"--chdir={REPO}"],
    )
    log = tmp_path / f"slurm-{job}.out"
    assert wait_job(job, timeout=300) == "COMPLETED", log.read_text()[-4000:]
    run_dir = tmp_path / "logs" / "debug" / "runs" / f"slurm-{job}.0"
    snaps = [torch.load(run_dir / f"codebook_rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [s["rank"] for s in snaps] == [0, 1] and all(s["world_size"] == 2 for s in snaps)
    assert all(s["batches"] == 4 and s["global_step"] == 4 for s in snaps), [(s["batches"], s["global_step"]) for s in snaps]
    (name, q0), = snaps[0]["quantizers"].items()
    q1 = snaps[1]["quantizers"][name]
    for buf in ("codebook", "ema_count", "ema_sum"):
        assert torch.equal(q0[buf], q1[buf]), f"{name}.{buf} differs between the ranks"
