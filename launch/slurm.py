"""Plain Slurm: render a batch script from a Hydra launcher preset, submit it, ask for job states."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from latentgen.stages.commands import shell_command

# states in which a job is still going to run (or runs): never submit it again
ACTIVE_STATES = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
    "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED",
}
DONE_STATE = "COMPLETED"
UNKNOWN_STATE = "UNKNOWN"

# hydra-submitit launcher field -> sbatch option
_OPTIONS = {
    "partition": "partition", "account": "account", "qos": "qos", "nodes": "nodes",
    "tasks_per_node": "ntasks-per-node", "cpus_per_task": "cpus-per-task", "gpus_per_node": "gpus-per-node",
    "gpus_per_task": "gpus-per-task", "cpus_per_gpu": "cpus-per-gpu", "mem_per_gpu": "mem-per-gpu",
    "mem_per_cpu": "mem-per-cpu", "constraint": "constraint", "exclude": "exclude", "comment": "comment",
    "gres": "gres",
}


class SlurmError(RuntimeError):
    pass


def sbatch_options(launcher: dict[str, Any]) -> dict[str, Any]:
    """sbatch options of a resolved ``hydra.launcher`` node (a submitit Slurm launcher preset)."""
    target = str(launcher.get("_target_", ""))
    if "SlurmLauncher" not in target:
        raise SlurmError(
            f"the launcher preset is {target or 'not a submitit launcher'}: the pipeline submits Slurm jobs "
            "with dependencies, so pick a Slurm preset, e.g. --launcher slurm or --launcher bigred200"
        )
    opts: dict[str, Any] = {}
    for key, flag in _OPTIONS.items():
        value = launcher.get(key)
        if value is not None and not (key == "gpus_per_node" and value == 0):
            opts[flag] = value
    if launcher.get("mem_gb") is not None:
        opts["mem"] = f"{launcher['mem_gb']}G"
    if launcher.get("timeout_min") is not None:
        opts["time"] = int(launcher["timeout_min"])
    opts["signal"] = f"USR1@{launcher.get('signal_delay_s') or 90}"
    for key, value in (launcher.get("additional_parameters") or {}).items():
        opts[key.replace("_", "-")] = value
    opts.setdefault("requeue", True)
    opts["open-mode"] = "append"
    return opts


def render_script(*, title: str, job_name: str, options: dict[str, Any], output: Path, chdir: Path,
                  setup: Sequence[str], command: Sequence[str], srun_args: Sequence[str] = (),
                  after: Sequence[Sequence[str]] = ()) -> str:
    """A batch script that runs ``command`` under srun (one task per device), then each command of
    ``after`` once, in the batch step, when it succeeded."""
    lines = ["#!/bin/bash", f"# {title}", f"#SBATCH --job-name={job_name}", f"#SBATCH --output={output}",
             f"#SBATCH --chdir={chdir}"]
    for flag, value in options.items():
        if value is True:
            lines.append(f"#SBATCH --{flag}")
        elif value is not False and value is not None:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += ["", "set -e", *setup, "",
              'echo "latentgen: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)"',
              shell_command(["srun", *srun_args, *command]), *(shell_command(c) for c in after), ""]
    return "\n".join(lines)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as err:
        raise SlurmError(f"`{cmd[0]}` not found: run this on a Slurm login node (or load the slurm module)") from err


def submit(script: Path, dependency: str | None = None) -> str:
    """``sbatch --parsable [--dependency=...] script`` -> job id."""
    cmd = ["sbatch", "--parsable"] + ([f"--dependency={dependency}"] if dependency else []) + [str(script)]
    res = _run(cmd)
    if res.returncode != 0:
        raise SlurmError(f"`{shlex.join(cmd)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout.strip().split(";")[0]


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Current state of each job: from squeue while it is known there, else from sacct."""
    ids = [str(j) for j in job_ids if j]
    states = {j: UNKNOWN_STATE for j in ids}
    if not ids:
        return states
    res = _run(["squeue", "-h", "-o", "%i|%T", "--states=all"])
    if res.returncode == 0:
        for line in res.stdout.splitlines():
            jid, _, state = line.partition("|")
            if jid in states:
                states[jid] = state.strip()
    missing = [j for j, s in states.items() if s == UNKNOWN_STATE]
    if missing:
        res = _run(["sacct", "-n", "-X", "-P", "-o", "JobIDRaw,State", "-j", ",".join(missing)])
        if res.returncode == 0:
            for line in res.stdout.splitlines():
                jid, _, state = line.partition("|")
                if jid in states and state:
                    states[jid] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def cancel(job_ids: Iterable[str]) -> None:
    ids = [str(j) for j in job_ids]
    if ids:
        _run(["scancel", *ids])
