"""The benchmark scripts still run end to end (``--quick``) and print the figures they promise.

They are smoke runs: no figure is compared with a target here (benchmarks never fail on a slow machine),
but each script must finish, print its verdict lines with numbers, and name the machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def run_benchmark(script: str, *args: str, data_dir, tmp_path) -> str:
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(data_dir), "LATENTGEN_LOG_DIR": str(tmp_path / "logs"),
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"^machine: .*CPU cores", proc.stdout, re.M), proc.stdout[-2000:]
    return proc.stdout


def test_framework_overhead_quick(mnist_dir, tmp_path) -> None:
    out = run_benchmark("framework_overhead.py", "--quick", "--profile", data_dir=mnist_dir, tmp_path=tmp_path)
    assert re.search(rf"ratio lightning/plain .*: {NUMBER}", out)
    assert re.search(rf"framework time per step .*: [+-]{NUMBER} ms", out)
    # every ablation row made it into the table
    for variant in ("no progress bar", "no self.log in training_step", "bare Trainer (all off)"):
        assert re.search(rf"^{re.escape(variant)}\s+{NUMBER}\s+{NUMBER}", out, re.M), out


def test_data_path_quick(mnist_dir, tmp_path) -> None:
    out = run_benchmark("data_path.py", "--quick", "--log-dir", str(tmp_path / "logs"),
                        data_dir=mnist_dir, tmp_path=tmp_path)
    assert re.search(rf"training speed-up from the cache: {NUMBER}x", out), out
    assert re.search(rf"data-path speed-up .*: {NUMBER}x", out), out


def test_samplers_quick(mnist_dir, tmp_path) -> None:
    out = run_benchmark("samplers.py", "--quick", "--grid", "6", data_dir=mnist_dir, tmp_path=tmp_path)
    assert re.search(rf"^MaskGIT-8\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+8\s+288\s", out, re.M), out
    assert re.search(rf"target KV cache >= 2x: {NUMBER}x", out), out


def test_gpu_throughput_quick_on_cpu(tmp_path) -> None:
    """Without a GPU the script times the CPU; a given peak still yields an MFU for every row."""
    out = run_benchmark("gpu_throughput.py", "--quick", "--peak-tflops", "1,1", data_dir=tmp_path, tmp_path=tmp_path)
    assert "no GPU" in out
    for model in ("vqvae", "ldm_unet", "transformer"):
        for precision in ("fp32", "bf16-mixed"):
            assert re.search(rf"^{model}\s+{precision}\s+off\s+{NUMBER}\s+{NUMBER}.*\s{NUMBER} %$", out, re.M), out
