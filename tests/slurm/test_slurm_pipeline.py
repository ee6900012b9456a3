"""latentgen-launch on a real Slurm: stage 2 waits for stage 1 (afterok), re-runs resubmit nothing finished,
and the stage-1 job stores the model its stage-2 jobs then find in the artefact store."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import pytest
from slurm_helpers import REPO, TINY, job_state, sacct, wait_for, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

NAME = "p"


def launch(env, *extra: str, args: tuple[str, ...] | None = None) -> subprocess.CompletedProcess:
    args = args or ("--name", NAME, "--stage1", "vqvae_mnist", "--stage2", "vqvae_mnist", "--sweep",
                    "model.num_codes=8,16", *TINY)
    cmd = [sys.executable, "-m", "latentgen.launch.pipeline", *args, "--launcher", "slurm_local_test",
           *extra, "debug=fdr", "extras.print_config=false"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def started(job: str) -> datetime | None:
    start = sacct(job)[-1]["Start"]
    return None if start in ("Unknown", "None", "") else datetime.fromisoformat(start)


def test_pipeline_chains_stages_and_never_resubmits_live_or_finished_jobs(slurm_cluster, slurm_env, tmp_path):
    state_file = tmp_path / "logs" / "pipelines" / NAME / "pipeline.json"

    def jobs() -> dict[str, str]:
        return {k: v["job_id"] for k, v in json.loads(state_file.read_text())["jobs"].items()}

    # 1. stage 1 fails (a missing checkpoint to resume from): the stage-2 jobs must never start
    launch(slurm_env, "--stage1-override", "ckpt_path=/nonexistent/stage1.ckpt")
    first = jobs()
    assert set(first) == {"stage1-vqvae_mnist", "stage2-vqvae_mnist-model.num_codes-8",
                          "stage2-vqvae_mnist-model.num_codes-16"}
    s1 = first.pop("stage1-vqvae_mnist")
    assert wait_job(s1) == "FAILED"

    def reasons() -> set[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%T:%r", "-j", ",".join(first.values())],
                             capture_output=True, text=True).stdout
        return set(out.split())

    wait_for(lambda: reasons() == {"PENDING:DependencyNeverSatisfied"}, 60,
             "the scheduler to mark the stage-2 jobs DependencyNeverSatisfied")
    assert all(started(j) is None for j in first.values())

    # 2. fixed and run again: stage 1 resubmitted, the waiting stage-2 jobs re-chained to it
    out = launch(slurm_env).stdout
    second = jobs()
    s1 = second.pop("stage1-vqvae_mnist")
    assert "RESUBMITTED (was FAILED)" in out and s1 != first.get("stage1-vqvae_mnist")
    assert not set(second.values()) & set(first.values())
    plan = json.loads(state_file.read_text())["jobs"]
    assert all(plan[k]["depends_on"] == f"afterok:{s1}" for k in second)
    # ... and once more at once, while stage 1 is pending or running: nothing new
    again = launch(slurm_env).stdout
    assert jobs() == {**second, "stage1-vqvae_mnist": s1} and "SUBMITTED" not in again, again

    # 3. everything completes; every stage-2 job started after stage 1 ended
    assert wait_job(s1) == "COMPLETED"
    s1_end = datetime.fromisoformat(sacct(s1)[-1]["End"])
    for key, job in second.items():
        state = wait_job(job)
        assert state == "COMPLETED", (tmp_path / plan[key]["run_dir"] / f"slurm-{job}.out").read_text()[-3000:]
        assert started(job) >= s1_end
    stored = list((tmp_path / "logs" / "artifacts" / "stage1").glob("*/meta.json"))
    assert [p.parent.name for p in stored] == [stored_key(state_file.parent, "stage1-vqvae_mnist")]
    final = launch(slurm_env).stdout
    assert jobs() == {**second, "stage1-vqvae_mnist": s1}
    assert final.count("COMPLETED") == 3 and "SUBMITTED" not in final, final
    assert "is in the artefact store: no stage-1 job is submitted" in final
    assert job_state(s1) == "COMPLETED"
    assert "W&B group: p" in final


def stored_key(root, job: str) -> str:
    """The key the stage-1 job registers its model under (the last word of its batch script)."""
    return (root / "scripts" / f"{job}.sbatch").read_text().split()[-1]


def test_prior_job_finds_the_stage1_its_pipeline_stored(slurm_cluster, slurm_env, tmp_path):
    args = ("--name", "q", "--stage1", "vqvae_mnist", "--stage2", "pixelcnn_mnist",
            "--stage2-override", "model.num_tokens=null", *(f"--stage1-override={o}" for o in TINY))
    launch(slurm_env, args=args)
    root = tmp_path / "logs" / "pipelines" / "q"
    plan = json.loads((root / "pipeline.json").read_text())["jobs"]
    s1, s2 = plan["stage1-vqvae_mnist"], plan["stage2-pixelcnn_mnist"]
    assert s2["depends_on"] == f"afterok:{s1['job_id']}"
    for job in (s1, s2):
        out = f"{job['run_dir']}/slurm-{job['job_id']}.out"
        assert wait_job(job["job_id"]) == "COMPLETED", open(out).read()[-3000:]
    key = stored_key(root, "stage1-vqvae_mnist")
    assert (tmp_path / "logs" / "artifacts" / "stage1" / key / "meta.json").is_file()
    prior_log = open(f"{s2['run_dir']}/slurm-{s2['job_id']}.out").read()
    assert f"Reusing stage-1 artefact {key}" in prior_log and "Training stage 1" not in prior_log, prior_log[-3000:]
