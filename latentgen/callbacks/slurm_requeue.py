"""Slurm time limits and preemption: checkpoint at a step boundary, requeue, resume in the same dir.

The one requeue mechanism of latentgen. Slurm sends ``SIGUSR1`` shortly before the time limit
(``--signal=USR1@90``; the launcher presets and ``slurm/*.sbatch`` set it), or an operator sends it
(``scancel --signal=USR1 <job>``). The handler only sets a flag; at the end of the current training
batch all ranks agree (one tiny all-reduce), save ``checkpoints/requeue.ckpt`` together, rank 0 runs
``scontrol requeue <job>`` and every rank leaves with ``SlurmRequeued``. The requeued job runs the same
command in the same run dir (``${latentgen.run_name:}`` or an explicit ``hydra.run.dir``) and
``ckpt_path=auto`` resumes from that checkpoint.

Lightning's own auto-requeue (``SLURMEnvironment(auto_requeue=True)``) saves inside the signal handler,
wherever the rank happens to be, which can deadlock DDP ranks that are inside a collective; it is
switched off by ``cluster_plugins()``. submitit's checkpoint/requeue only reacts to ``SIGUSR2``, which
the presets no longer ask Slurm to send, and ``max_num_timeout: 0`` keeps it off as well.
"""

from __future__ import annotations

import os
import signal as _signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Callback

from latentgen.utils.pylogger import RankedLogger

log = RankedLogger(__name__)


class SlurmRequeued(SystemExit):
    """Training stopped after saving a checkpoint and requeueing the Slurm job (exit code 0 if requeued)."""


def cluster_plugins() -> list:
    """Trainer plugins: under Slurm, Lightning's SLURM environment without its signal-handler requeue."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def slurm_job_id() -> str | None:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_job(job_id: str) -> tuple[bool, str]:
    try:
        res = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    return res.returncode == 0, (res.stderr or res.stdout).strip()


def _mark_wandb_preempting() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.mark_preempting()


class SlurmRequeue(Callback):
    """On ``signal`` under Slurm: checkpoint at the next batch end, requeue the job, stop.

    Args:
        dirpath: where ``<filename>.ckpt`` goes (the run's ``checkpoints/``).
        signal: the warning signal Slurm sends (``--signal=USR1@<seconds>``).
        filename: checkpoint file name without ``.ckpt``.
    """

    def __init__(self, dirpath: str | Path, signal: str = "SIGUSR1", filename: str = "requeue") -> None:
        name = signal.upper() if signal.upper().startswith("SIG") else f"SIG{signal.upper()}"
        if not isinstance(getattr(_signal, name, None), _signal.Signals):
            raise ValueError(f"signal={signal!r} is not a signal name; use e.g. SIGUSR1 (and --signal=USR1@90)")
        self.signum = getattr(_signal, name)
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.requested = False
        self.enabled = SLURMEnvironment.detect()
        if self.enabled and threading.current_thread() is threading.main_thread():
            # installed now, not at fit start: a signal during data set-up must not kill the job
            _signal.signal(self.signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True  # act at the next step boundary, never inside the handler

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        if not self.enabled or not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        from latentgen.callbacks.checkpointing import save_atomically

        job = slurm_job_id()
        log.warning(f"Slurm signal {_signal.Signals(self.signum).name} received: checkpointing at step "
                    f"{trainer.global_step} to {self.path} and requeueing job {job}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(trainer, self.path)
        ok = False
        if trainer.is_global_zero:
            ok, message = requeue_job(job) if job else (False, "SLURM_JOB_ID is not set")
            if ok:
                log.info(f"Requeued Slurm job {job}; it resumes from {self.path}")
                _mark_wandb_preempting()
            else:
                log.error(f"`scontrol requeue {job}` failed ({message}): submit the same command again "
                          f"(same run dir) to resume from {self.path}")
        ok = trainer.strategy.broadcast(ok, src=0)
        raise SlurmRequeued(0 if ok else 1)
