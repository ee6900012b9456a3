"""Train a model for the artefact store in its own process: ``python -m latentgen.train <overrides>
paths.*=... hydra.run.dir=RUN_DIR`` with the :class:`~latentgen.stages.run_export.StoreExport` callback.

Its Hydra, W&B and random state therefore stay out of the process that needs the model. Its output is
streamed to this process's console and to ``RUN_DIR/train_output.log``; a failure raises one error that
names the command and that log (a non-finite training keeps its :class:`NonFiniteTrainingError`).
"""

from __future__ import annotations

import codecs
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latentgen.callbacks.finite_check import NonFiniteTrainingError
from latentgen.stages.commands import hydra_value, shell_command
from latentgen.stages.identity import ArtifactKind
from latentgen.stages.run_export import EXPORT_OVERRIDE, read_failure
from latentgen.utils.errors import ClearError

PATH_KEYS = ("data_dir", "log_dir", "artifact_dir", "root_dir")
OUTPUT_LOG = "train_output.log"
# the distributed and seeding state of this process, which is no business of the child
PARENT_ONLY_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                   "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED", "PL_SEED_WORKERS", "WANDB_RUN_ID",
                   "WANDB_RESUME")
TAIL_LINES = 20


class ChildTrainingError(ClearError, RuntimeError):
    """The training process of a model for the artefact store failed."""


def experiment_name(overrides: Sequence[str], default: str) -> str:
    """The experiment ``overrides`` pick (``+experiment=NAME``), else ``default``."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "experiment":
            return value
    return default


def train_command(overrides: Sequence[str], paths: Mapping[str, Any], run_dir: Path | str,
                  python: str = sys.executable) -> list[str]:
    """The command that trains the run ``overrides`` describe into ``run_dir``, with ``paths``' folders."""
    return [python, "-m", "latentgen.train", *overrides,
            *(f"paths.{key}={hydra_value(paths[key])}" for key in PATH_KEYS),
            "extras.print_config=false", f"hydra.run.dir={hydra_value(run_dir)}", EXPORT_OVERRIDE]


def child_env() -> dict[str, str]:
    """This process's environment without its Slurm task and distributed state: the child is a plain
    local run, not a rank of this process's job."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in PARENT_ONLY_ENV}


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the process that started it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stream(cmd: list[str], log_file: Path) -> int:
    """Run ``cmd``, copying its stdout and stderr to this console and to ``log_file``; its exit code."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(log_file, "wb") as log:
        log.write(f"$ {shell_command(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(),
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            while chunk := proc.stdout.read1(1 << 16):
                log.write(chunk)
                log.flush()
                sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
            return proc.wait()
        finally:
            if proc.poll() is None:  # this process is being interrupted: so is its child
                proc.terminate()
                proc.wait()


def _tail(log_file: Path) -> str:
    lines = log_file.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    return "\n".join(f"    {line}" for line in lines)


def train_in_child(overrides: Sequence[str], paths: Mapping[str, Any], run_dir: Path, artifact: ArtifactKind,
                   experiment: str) -> None:
    """Train the run ``overrides`` describe into ``run_dir`` in a child process, or raise why it failed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = run_dir / OUTPUT_LOG
    cmd = train_command(overrides, paths, run_dir)
    code = _stream(cmd, log_file)
    if code == 0:
        return
    failure = read_failure(run_dir) or {}
    where = f"This was the training of {artifact.name} ({experiment}) for the artefact store, run dir {run_dir}"
    if failure.get("type", "").endswith(".NonFiniteTrainingError"):
        raise NonFiniteTrainingError(
            f"{failure['message']}\n{where}. When a run trains it for you, give such fixes through "
            f"{artifact.config_node}.overrides, e.g. '{artifact.config_node}.overrides=[\"model.optimizer.lr=1e-4\"]'."
        )
    error = f"{failure['type']}: {failure['message']}\n" if failure else ""
    raise ChildTrainingError(
        f"Training {artifact.name} ({experiment}) for the artefact store failed (exit code {code}).\n{error}"
        f"  command: {shell_command(cmd)}\n  its output: {log_file}\n  last lines:\n{_tail(log_file)}\n"
        f"Fix the cause (the command's overrides come from this run's {artifact.config_node} settings) and run again."
    )
