"""Hydra callback: one clear error when the run (or sweep) dir cannot be written.

Hydra creates the run dir before the task starts; in a read-only ``paths.log_dir`` that fails with a
chain of ``PermissionError`` tracebacks. Registered under ``hydra.callbacks``, this check runs first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def unwritable_dir_error(target: str | Path) -> str | None:
    """Why ``target`` cannot be created and written, or None when it can.

    The nearest existing folder on the way to ``target`` is tried with a real temporary folder
    (permission bits, ACLs, read-only mounts and network file systems all answer the same way).
    """
    folder = Path(target).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".latentgen-write-check-"):
            return None
    except OSError as exc:
        return f"{folder} is not writable ({exc.strerror or exc})"


class RunDirCheck(Callback):
    """Checks ``hydra.run.dir`` (``hydra.sweep.dir`` for ``-m``) before Hydra creates it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, config.hydra.run.dir, "run dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, config.hydra.sweep.dir, "sweep dir")

    @staticmethod
    def _check(config: DictConfig, target: str, what: str) -> None:
        problem = unwritable_dir_error(target)
        if problem:
            log_dir = OmegaConf.select(config, "paths.log_dir", default="?")
            # SystemExit, not an exception: Hydra turns exceptions raised by callbacks into warnings
            raise SystemExit(
                f"Error: cannot create the {what} {target}: {problem}. paths.log_dir is {log_dir}; put "
                "the runs in a writable folder with paths.log_dir=/path/to/logs on the command line or "
                "LATENTGEN_LOG_DIR=/path/to/logs in the environment."
            )
