"""CSV logger whose ``metrics.csv`` survives restarts: a resumed run appends to it.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when a new process starts logging into a folder
that already holds one, so a run killed and resumed in the same run dir lost every row from before
the kill. ``ResumableCSVLogger`` keeps those rows. The first step a new process logs marks where it
took over: rows of earlier processes from that step on were logged after the checkpoint it resumed
from, their steps are trained again, and they are dropped, so no step appears twice. Rows are
written to disk as soon as they are logged (``flush_logs_every_n_steps=1``). Lightning logs a step's
metrics after the callbacks that checkpoint it, so a ``kill -9`` in between loses that one row.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    """``ExperimentWriter`` that continues an existing ``metrics.csv`` instead of deleting it."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._took_over = False  # set once this process's first rows replaced the redone steps

    def _check_log_dir_exists(self) -> None:  # called by ``__init__``: continue the file, not delete it
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def save(self) -> None:
        if self.metrics and not self._took_over:
            self._took_over = True
            self.drop_rows_from(self.metrics[0]["step"])
        super().save()

    def drop_rows_from(self, step: float) -> int:
        """Remove the rows with ``step >= step`` from ``metrics.csv`` (atomically); returns how many."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return 0
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [row for row in rows if not row.get("step") or float(row["step"]) < float(step)]
        if len(kept) < len(rows):
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            os.replace(tmp, path)
        return len(rows) - len(kept)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` (``<save_dir>/<name>/<version>/metrics.csv``) that appends across restarts."""

    def __init__(self, save_dir: str | os.PathLike, name: str | None = "csv", version: int | str | None = "",
                 prefix: str = "", flush_logs_every_n_steps: int = 1) -> None:
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
