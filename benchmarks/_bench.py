"""Small pieces shared by the throughput benchmarks: tables, clocks, silent training steps."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> None:
    """Left-aligned plain-text table (floats as given: format them before)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n== {title} ==")
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work so wall-clock times mean something."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def now(device: torch.device | str = "cpu") -> float:
    sync(device)
    return time.perf_counter()


def window_rate(stamps: Sequence[float], warmup: int, items_per_step: int) -> float:
    """Items/s between the end of step ``warmup`` and the last step (``stamps``: one per step end)."""
    if len(stamps) <= warmup or warmup < 1:
        raise ValueError(f"need more than warmup={warmup} (>= 1) step times, got {len(stamps)}")
    steps = len(stamps) - warmup
    return steps * items_per_step / (stamps[-1] - stamps[warmup - 1])


def silence_logging(module: torch.nn.Module) -> torch.nn.Module:
    """Make ``self.log``/``self.log_dict`` no-ops so a LightningModule's ``training_step`` runs without
    a Trainer (the benchmarks time the step itself)."""
    module.log = lambda *args, **kwargs: None
    module.log_dict = lambda *args, **kwargs: None
    return module


def time_calls(fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu") -> float:
    """Median seconds per call of ``fn`` over ``repeats`` calls (one untimed call first)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = now(device)
        fn()
        times.append(now(device) - t0)
    return median(times)


def use_shared_data_dir() -> None:
    """Point ``LATENTGEN_DATA_DIR`` at ``../shared/datasets`` beside the repository when unset and present."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if "LATENTGEN_DATA_DIR" not in os.environ and shared.is_dir():
        os.environ["LATENTGEN_DATA_DIR"] = str(shared)
