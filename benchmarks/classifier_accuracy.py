"""Train ``+experiment=classifier_mnist`` with its default budget; print test accuracy and wall time.

    LATENTGEN_DATA_DIR=/work/shared/datasets python benchmarks/classifier_accuracy.py
    python benchmarks/classifier_accuracy.py --threads 1 trainer.max_epochs=2   # extra overrides

Runs through ``latentgen.train.train`` (the same code path as the CLI) with a CSV logger, writing
into a temporary directory unless ``--out`` is given. Exits non-zero if the accuracy is below
``--target`` (0.99 by default), so it doubles as a regression check.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from latentgen.train import train
from latentgen.utils.compose import compose_config


def compose_run(experiment: str, overrides: list[str], out: Path):
    cfg = compose_config([f"+experiment={experiment}", "logger=csv", *overrides])
    with open_dict(cfg):
        del cfg["hydra"]  # like the CLI, whose task config has no hydra node (its runtime
        # fields, e.g. hydra.job.num, stay missing under compose() and break resolving)
        cfg.paths.output_dir = str(out / "run")
        cfg.paths.log_dir = str(out / "logs")
        cfg.extras.print_config = False
        cfg.extras.enforce_tags = False
        cfg.callbacks.progress_bar.refresh_rate = 0 if not sys.stderr.isatty() else 10
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_epochs=2")
    parser.add_argument("--experiment", default="classifier_mnist")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--target", type=float, default=0.99, help="minimum test accuracy")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        cfg = compose_run(args.experiment, args.overrides, out)
        start = time.perf_counter()
        metrics, objects = train(cfg)
        wall = time.perf_counter() - start
        GlobalHydra.instance().clear()

    trainer = objects["trainer"]
    acc = float(metrics["test/acc"])
    print(f"experiment        : {args.experiment} {' '.join(args.overrides)}".rstrip())
    print(f"torch threads     : {torch.get_num_threads()} (cpus: {os.cpu_count()})")
    print(f"epochs / steps    : {trainer.current_epoch} / {trainer.global_step}")
    print(f"test accuracy     : {acc:.4f}")
    print(f"test loss         : {float(metrics['test/loss']):.4f}")
    print(f"wall time (fit+test): {wall:.1f} s")
    print(f"machine: {machine()}")
    if acc < args.target:
        print(f"FAIL: test accuracy {acc:.4f} < target {args.target}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
