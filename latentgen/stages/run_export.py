"""What a training run that makes a model for the artefact store hands back to the process storing it.

The training runs as its own process (``python -m latentgen.train ... hydra.run.dir=RUN_DIR`` with
:data:`EXPORT_OVERRIDE`); the :class:`StoreExport` callback then writes ``RUN_DIR/store_export/``:

* ``result.json`` after fitting (and again after testing): the checkpoint to store (the best one, or
  ``weights.ckpt``, the final weights, when the run keeps no checkpoint, e.g. ``debug=fdr``), the final
  ``val/`` and ``test/`` metrics, and the devices and nodes it trained on;
* ``failure.json`` when fitting or testing raises: the error's type and message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

EXPORT_DIR = "store_export"
EXPORT_OVERRIDE = "+callbacks.store_export._target_=latentgen.stages.run_export.StoreExport"


def _number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


class StoreExport(Callback):
    """Write ``store_export/`` into the run dir (``trainer.default_root_dir``), on global rank 0."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    @staticmethod
    def folder(trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / EXPORT_DIR

    def _write(self, trainer: pl.Trainer, name: str, content: dict[str, Any]) -> None:
        if trainer.is_global_zero:
            folder = self.folder(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"{name}.tmp"
            tmp.write_text(json.dumps(content, indent=2))
            tmp.replace(folder / name)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:  # a resumed run dir: nothing of an earlier attempt counts
            for name in ("result.json", "failure.json"):
                (self.folder(trainer) / name).unlink(missing_ok=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and not trainer.fast_dev_run:
            ckpt = Path(best).resolve()
        else:  # every rank takes part, rank 0 writes
            ckpt = self.folder(trainer) / "weights.ckpt"
            trainer.save_checkpoint(ckpt, weights_only=True)
        self.result = {"checkpoint": str(ckpt), "metrics": {}, "devices": trainer.num_devices,
                       "num_nodes": trainer.num_nodes}
        self._add_metrics(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.result:
            self._add_metrics(trainer)

    def _add_metrics(self, trainer: pl.Trainer) -> None:
        self.result["metrics"].update({k: _number(v) for k, v in trainer.callback_metrics.items()
                                       if k.startswith(("val/", "test/"))})
        self._write(trainer, "result.json", self.result)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, Exception):  # not a requeue (SystemExit) or Ctrl-C
            kind = type(exception)
            self._write(trainer, "failure.json", {"type": f"{kind.__module__}.{kind.__qualname__}",
                                                  "message": str(exception)})


@dataclass
class RunResult:
    """What a finished training run exported for the store."""

    checkpoint: Path
    metrics: dict[str, float]
    devices: int | None
    num_nodes: int | None


def read_result(run_dir: Path) -> RunResult | None:
    """The run's ``store_export/result.json``, or None if it wrote none."""
    path = run_dir / EXPORT_DIR / "result.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return RunResult(Path(data["checkpoint"]), data["metrics"], data.get("devices"), data.get("num_nodes"))


def read_failure(run_dir: Path) -> dict[str, str] | None:
    """The run's ``store_export/failure.json`` (``type``, ``message``), or None."""
    path = run_dir / EXPORT_DIR / "failure.json"
    return json.loads(path.read_text()) if path.is_file() else None
