"""Helpers shared by the benchmark scripts: compose real configs, time things, describe the machine."""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from latentgen.utils.compose import compose_config


def compose_run(overrides: list[str], out_dir: str | Path) -> DictConfig:
    """Compose ``conf/train.yaml`` as the CLI would, with the run dir at ``out_dir``."""
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.extras.print_config = False
    return cfg


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


@contextmanager
def timed(results: dict, key: str):
    t0 = time.perf_counter()
    yield
    results[key] = time.perf_counter() - t0
