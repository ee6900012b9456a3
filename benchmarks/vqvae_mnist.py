"""Train ``vqvae_mnist`` with its default budget; print test PSNR, codebook usage and wall time.

    python benchmarks/vqvae_mnist.py [extra Hydra overrides]

Target on 2 CPU cores: >= 25 dB test PSNR (PSNR of the mean test MSE, images in [0, 1]) with >= 90%
of codes in use, in <= 5 minutes of training.
"""

from __future__ import annotations

import sys
import tempfile
import time

from _common import compose_run, machine

from latentgen.train import train


def main() -> None:
    out = tempfile.mkdtemp(prefix="bench_vqvae_")
    cfg = compose_run(["+experiment=vqvae_mnist", "logger=csv", *sys.argv[1:]], out)
    t0 = time.perf_counter()
    metrics, objects = train(cfg)
    wall = time.perf_counter() - t0
    print("\n== vqvae_mnist benchmark ==")
    print(f"machine:            {machine()}")
    print(f"run dir:            {out}")
    print(f"optimizer steps:    {objects['trainer'].global_step}")
    print(f"test PSNR:          {float(metrics['test/psnr']):.2f} dB  (target >= 25)")
    print(f"test SSIM:          {float(metrics['test/ssim']):.4f}")
    print(f"codes in use:       {100 * float(metrics['test/code_usage']):.1f} %  (target >= 90)")
    print(f"codebook perplexity:{float(metrics['test/perplexity']):.1f}")
    timer = next(c for c in objects["trainer"].callbacks if type(c).__name__ == "Timer")
    print(f"training time:      {timer.time_elapsed('train'):.0f} s  (target <= 300)")
    print(f"wall time:          {wall:.0f} s (data loading, fit, validation, test)")


if __name__ == "__main__":
    main()
