"""Helpers of the Slurm tests: sbatch, sacct, waiting for jobs (imported by tests/slurm/test_*.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.conftest import REPO, TINY  # noqa: F401 (re-exported to the Slurm tests)

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


def sacct(job_id: str, duplicates: bool = False) -> list[dict[str, str]]:
    """sacct records of a job (allocation only); with ``duplicates`` also its requeued runs."""
    fields = "JobIDRaw,State,Start,End,ExitCode"
    cmd = ["sacct", "-n", "-X", "-P", "-o", fields, "-j", str(job_id)] + (["-D"] if duplicates else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields.split(","), line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]


def job_state(job_id: str) -> str:
    rows = sacct(job_id)
    return rows[-1]["State"].split()[0] if rows else "UNKNOWN"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_job(job_id: str, timeout: float = 300) -> str:
    return wait_for(lambda: (s := job_state(job_id)) in TERMINAL and s, timeout, f"job {job_id} to end")


def sbatch(script: Path | str, *args: str, env: dict[str, str], sbatch_args: list[str]) -> str:
    cmd = ["sbatch", "--parsable", *sbatch_args, str(script), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]
