"""Training-step throughput on a GPU: fp32 vs bf16-mixed, torch.compile off/on, and MFU.

    python benchmarks/gpu_throughput.py                        # all models, precisions and compile modes
    python benchmarks/gpu_throughput.py --models vqvae --batch-size 512 --peak-tflops 989,67
    python benchmarks/gpu_throughput.py --quick                # smoke run (also on a CPU: 'no GPU')

Models, built from their configs (``conf/model``) at the MNIST sizes: the VQ-VAE (28x28 images), the
latent DDPM UNet (32x7x7 latents) and the transformer prior (7x7 tokens). A step is the module's own
``training_step`` (logging silenced) under ``torch.autocast(bfloat16)`` for bf16-mixed, then backward and
AdamW, on synthetic batches already on the device. ``--compile`` wraps the forward+loss in
``torch.compile``. FLOPs per step (forward + backward) are counted once with
``torch.utils.flop_counter.FlopCounterMode``; MFU = FLOPs / step time / peak FLOP/s of the GPU (bf16
peak for bf16-mixed rows, fp32 peak for fp32 rows; dense, no sparsity) from a small table or
``--peak-tflops BF16[,FP32]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from _bench import now, print_table, silence_logging
from _common import compose_run, machine
from torch.utils.flop_counter import FlopCounterMode

# dense peak TFLOP/s (bf16 tensor cores, fp32 without TF32); the first name contained in the device name wins
PEAK_TFLOPS = [("H200", 989.0, 67.0), ("H100 PCIe", 756.0, 51.0), ("H100", 989.0, 67.0),
               ("A100", 312.0, 19.5), ("L40S", 362.0, 91.6), ("A10", 125.0, 31.2)]
MODELS = {
    "vqvae": ["model=vqvae"],
    "ldm_unet": ["model=ldm", "model.latent_channels=32", "model.grid_shape=[7,7]"],
    "transformer": ["model=transformer", "model.num_tokens=128", "model.grid_shape=[7,7]"],
}


def make_batch(name: str, model, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    labels = torch.randint(0, 10, (batch_size,), device=device)
    if name == "vqvae":
        return [torch.rand(batch_size, 1, 28, 28, device=device), labels]
    if name == "ldm_unet":
        return [torch.randn(batch_size, model.latent_channels, *model.grid_shape, device=device), labels]
    return [torch.randint(0, model.num_tokens, (batch_size, *model.grid_shape), device=device), labels]


def build(name: str, cfg_dir: Path, device: torch.device, seed: int = 0):
    cfg = compose_run(MODELS[name], cfg_dir)
    pl.seed_everything(seed, verbose=False)
    model = silence_logging(hydra.utils.instantiate(cfg.model, _convert_="all")).to(device).train()
    return model, model.configure_optimizers()["optimizer"]


def make_step(model, opt, batch, bf16: bool, compile_: bool, device: torch.device):
    def loss_fn():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model.training_step(batch, 0)

    if compile_:
        torch._dynamo.reset()  # a fresh cache: recompiling for every model would hit dynamo's limit
    forward = torch.compile(loss_fn) if compile_ else loss_fn

    def step():
        loss = forward()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def flops_per_step(name: str, cfg_dir: Path, batch_size: int, device: torch.device) -> int:
    model, opt = build(name, cfg_dir, device)
    step = make_step(model, opt, make_batch(name, model, batch_size, device), False, False, device)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def measure(name: str, cfg_dir: Path, batch_size: int, bf16: bool, compile_: bool, steps: int, warmup: int,
            device: torch.device) -> tuple[float, float]:
    """(seconds per step, seconds of the first step, compilation included)."""
    model, opt = build(name, cfg_dir, device)
    step = make_step(model, opt, make_batch(name, model, batch_size, device), bf16, compile_, device)
    t0 = now(device)
    step()
    first = now(device) - t0
    for _ in range(max(0, warmup - 1)):
        step()
    t0 = now(device)
    for _ in range(steps):
        step()
    return (now(device) - t0) / steps, first


def peak_tflops(arg: str | None, device: torch.device) -> tuple[float, float] | None:
    if arg:
        values = [float(v) for v in arg.split(",")]
        return values[0], values[-1]
    if device.type != "cuda":
        return None
    gpu = torch.cuda.get_device_name(device)
    return next(((bf16, fp32) for key, bf16, fp32 in PEAK_TFLOPS if key in gpu), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {list(MODELS)}")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--compile", choices=["off", "on", "both"], default=None,
                        help="torch.compile modes (default: both; off for --quick on a CPU)")
    parser.add_argument("--peak-tflops", default=None, help="peak TFLOP/s 'BF16[,FP32]' (default: table by GPU name)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convs in the fp32 rows")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, 2 timed steps")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.batch_size, args.steps, args.warmup = 8, 2, 1
    if args.compile is None:
        args.compile = "off" if args.quick and device.type == "cpu" else "both"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    warnings.filterwarnings("ignore")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}: choose from {list(MODELS)}")
    precisions = {"fp32": [False], "bf16": [True], "both": [False, True]}[args.precision]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    peak = peak_tflops(args.peak_tflops, device)
    if device.type != "cuda":
        print("no GPU: timing on the CPU" + ("" if peak else "; MFU not computed (no --peak-tflops)"))
    elif peak is None:
        print(f"{torch.cuda.get_device_name(device)} is not in the peak table: pass --peak-tflops for MFU")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for name in names:
            flops = flops_per_step(name, Path(tmp), args.batch_size, device)
            for bf16 in precisions:
                for compile_ in compiles:
                    t_start = time.perf_counter()
                    sec, first = measure(name, Path(tmp), args.batch_size, bf16, compile_, args.steps, args.warmup,
                                         device)
                    achieved = flops / sec / 1e12
                    mfu = "n/a" if peak is None else f"{100 * achieved / peak[0 if bf16 else 1]:.1f} %"
                    rows.append([name, "bf16-mixed" if bf16 else "fp32", "on" if compile_ else "off",
                                 f"{args.batch_size / sec:.0f}", f"{1e3 * sec:.2f}", f"{first:.1f}",
                                 f"{flops / 1e9:.2f}", f"{achieved:.3f}", mfu])
                    print(f"{name} {rows[-1][1]} compile={rows[-1][2]}: {rows[-1][3]} samples/s "
                          f"({time.perf_counter() - t_start:.0f} s)")
    print_table(["model", "precision", "compile", "samples/s", "ms/step", "first step s", "GFLOP/step",
                 "TFLOP/s", "MFU"], rows,
                title=f"training-step throughput, batch {args.batch_size}, {args.steps} steps after {args.warmup} "
                      f"warm-up{', TF32 on' if args.tf32 else ''}")
    if peak:
        print(f"peak used: {peak[0]:g} TFLOP/s bf16, {peak[1]:g} TFLOP/s fp32")
    print(f"\nmachine: {machine()}  (torch threads: {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
