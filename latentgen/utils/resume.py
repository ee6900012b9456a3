"""Restartable runs: stable run dirs under Slurm, automatic resume, one W&B run across restarts.

* ``${latentgen.run_name:}`` names the run dir: ``slurm-<job id>[_<array task>][.<step>]`` inside a
  Slurm job (the same after a requeue), ``${latentgen.unique_timestamp:}`` elsewhere: a timestamp and
  the process id, so that two runs started in the same second get two run dirs.
* ``find_resume_checkpoint(run_dir)``: the checkpoint written last in a run dir (``last``, periodic,
  requeue, on-exception or Lightning ``hpc_ckpt_N`` files), used by ``ckpt_path=auto|last``.
* ``prepare_wandb_resume(cfg)``: persists the W&B run id in the run dir and resumes it on restart.
* ``${latentgen.wandb_group:DEFAULT,TASK}``: runs of one Hydra multirun (grid or Optuna) share a group.
* ``${latentgen.slurm_account:ENV,...}`` and ``${latentgen.gpus_per_node:ACCEL,DEVICES}`` for launchers.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.utils.pylogger import RankedLogger

log = RankedLogger(__name__)

WANDB_ID_FILE = "wandb_run_id.txt"
RESTARTS_FILE = "restarts.jsonl"
INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # as Lightning: such allocations are not "under Slurm"


def _global_rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


# -- run names and resolvers ------------------------------------------------------------------------
def slurm_run_name(env: dict[str, str] | None = None) -> str | None:
    """``slurm-<job>[_<array task>][.<step>]`` for a batch job, ``None`` outside Slurm.

    The step suffix keeps two ``srun`` steps of one job apart; a requeued job starts again from step
    0, so its name, and so its run dir, is the same after a requeue.
    """
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job or env.get("SLURM_JOB_NAME") in INTERACTIVE_JOB_NAMES:
        return None
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    name = f"slurm-{array_job}_{array_task}" if array_job and array_task else f"slurm-{job}"
    step = env.get("SLURM_STEP_ID", "")
    if step.isdigit() and int(step) < 0xFFFFFF00:  # large values are Slurm's batch/extern steps
        name += f".{step}"
    return name


def unique_timestamp() -> str:
    """``YYYY-MM-DD_HH-MM-SS_<pid>``: no two processes running at once on a host share it."""
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{os.getpid()}"


def run_name() -> str:
    return slurm_run_name() or unique_timestamp()


def wandb_group(default: Any, task_name: Any = None) -> Any:
    """Group of W&B runs: ``<task>-<sweep dir name>`` for all jobs of one multirun, else ``default``."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            sweep = Path(str(hydra_cfg.sweep.dir)).name
            return f"{task_name}-{sweep}" if task_name else sweep
    except (ValueError, ImportError):  # not inside a Hydra app (e.g. plain compose)
        pass
    return default


def slurm_account(*env_vars: str) -> str:
    for var in env_vars:
        if os.environ.get(var):
            return os.environ[var]
    names = " or ".join(env_vars)
    raise ValueError(
        f"no Slurm account to charge: set {names} (e.g. `export {env_vars[0]}=<your account>`) or pass "
        "hydra.launcher.account=<account>; `sacctmgr show assoc user=$USER format=account` lists yours"
    )


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs to request per node: ``devices`` for gpu/cuda/auto accelerators, none for cpu."""
    if str(accelerator) == "cpu":
        return None
    if not isinstance(devices, int):
        raise ValueError(
            f"trainer.devices={devices!r}: a Slurm job needs a number of GPUs per node; set trainer.devices=N"
        )
    return devices


def register_resume_resolvers() -> None:
    resolvers = {
        "latentgen.run_name": (run_name, True),
        "latentgen.unique_timestamp": (unique_timestamp, True),
        "latentgen.wandb_group": (wandb_group, False),
        "latentgen.slurm_account": (slurm_account, False),
        "latentgen.gpus_per_node": (gpus_per_node, False),
    }
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


# -- checkpoints ------------------------------------------------------------------------------------
def find_resume_checkpoint(run_dir: str | Path) -> tuple[Path, int] | None:
    """``(path, global step)`` of the newest readable full checkpoint of a run dir, else ``None``.

    Looks at ``checkpoints/*.ckpt`` and Lightning's ``hpc_ckpt_N.ckpt``. A file that cannot be read as
    a training checkpoint (a job killed while writing it, a weights-only or foreign file, an unsafe
    pickle) is skipped; the warning names it and the checkpoint chosen instead.
    """
    from latentgen.utils.checkpoint_io import CheckpointError  # imports torch: only when resuming

    run_dir = Path(run_dir)
    candidates = [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    candidates = [p for p in candidates if p.is_file()]
    skipped: list[Path] = []
    for path in sorted(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True):
        try:
            step = checkpoint_step(path)
        except CheckpointError as err:
            log.warning(f"Skipping checkpoint {path}: it {err.problem}")
            skipped.append(path)
            continue
        if skipped:
            log.warning(f"Newest usable checkpoint of {run_dir} is {path} (global step {step}); skipped the "
                        f"newer {', '.join(p.name for p in skipped)}")
        return path, step
    if skipped:
        log.warning(f"No usable checkpoint in {run_dir}: skipped {', '.join(p.name for p in skipped)}")
    return None


def checkpoint_step(path: str | Path) -> int:
    """Global step stored in a full Lightning training checkpoint (read as data, memory-mapped).

    Raises :class:`CheckpointError` for a file that is unreadable, unsafe, or holds no training state.
    """
    from latentgen.utils.checkpoint_io import load_checkpoint

    return training_step(load_checkpoint(path, purpose="resume training", mmap=True), path)


def training_step(ckpt: dict, path: str | Path) -> int:
    """Global step of a loaded checkpoint ``ckpt`` (read from ``path``) that holds training state;
    :class:`CheckpointError` for weights alone."""
    from latentgen.utils.checkpoint_io import CheckpointError

    step = ckpt.get("global_step")
    if step is None or "optimizer_states" not in ckpt:
        raise CheckpointError(path, "holds no training state (global step and optimizer states), only weights",
                              "resume from a checkpoint of a run's checkpoints/ folder, or set ckpt_path=null "
                              "to start fresh")
    return int(step)


def record_resume(run_dir: str | Path, ckpt: str | Path, step: int) -> dict:
    """Log and append to ``<run dir>/restarts.jsonl`` where a restarted run picks up."""
    entry = {
        "time": datetime.now().isoformat(timespec="seconds"),
        "checkpoint": str(ckpt),
        "global_step": step,
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
    }
    log.info(f"Resuming from {ckpt} (global step {step})")
    if _global_rank() == 0:
        with open(Path(run_dir) / RESTARTS_FILE, "a") as f:
            f.write(json.dumps(entry) + "\n")
    return entry


# -- W&B ------------------------------------------------------------------------------------------
def prepare_wandb_resume(cfg: DictConfig) -> str | None:
    """Give the W&B logger a run id kept in ``<run dir>/wandb_run_id.txt`` and ``resume="allow"``.

    A restarted job in the same run dir (requeue, or the same command again) thus continues the same
    W&B run. An explicit ``logger.wandb.id`` wins. Returns the id (``None`` without a W&B logger).
    """
    wandb_cfg = OmegaConf.select(cfg, "logger.wandb")
    if wandb_cfg is None:
        return None
    out = Path(cfg.paths.output_dir)
    id_file = out / WANDB_ID_FILE
    run_id = wandb_cfg.get("id")
    if not run_id and id_file.is_file():
        run_id = id_file.read_text().strip() or None
    if not run_id:
        run_id = uuid.uuid4().hex[:8]
    if _global_rank() == 0 and (not id_file.is_file() or id_file.read_text().strip() != run_id):
        out.mkdir(parents=True, exist_ok=True)
        tmp = id_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, id_file)
    with open_dict(cfg):
        wandb_cfg.id = run_id
        if not wandb_cfg.get("resume"):
            wandb_cfg.resume = "allow"
    return run_id

