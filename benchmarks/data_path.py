"""Data path of stage-2 training: the latent cache vs encoding with the frozen stage 1 on the fly.

    python benchmarks/data_path.py                          # transformer prior, full cache, 3 rounds
    python benchmarks/data_path.py --prior ldm --stage1-ckpt path/to/vqvae.ckpt
    python benchmarks/data_path.py --quick                  # smoke run (small cache, a few steps)

The prior and its latent cache are built by the real stage builder (``latentgen.stages.builder``):
stage 1 is the given checkpoint or a tiny one trained through the artefact store (``stage1.debug=limit``;
its quality does not matter for timing), and the cache is encoded once. Then, with the same prior,
optimiser and batch size, the benchmark times:

* prior training reading the cache (``LatentDataModule`` train loader -> prior step) against the same
  step fed by the image loader -> frozen encoder -> tokens/latents (target: cache >= 10x faster);
* the data paths alone (latent loader; image loader + encoder) and each loader alone in batches/s,
  next to the prior step on a fixed batch: the loader share of a step shows whether it can bottleneck.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from _bench import (
    median,
    now,
    print_table,
    silence_logging,
    time_calls,
    use_shared_data_dir,
    window_rate,
)
from _common import compose_run, machine
from omegaconf import open_dict

from latentgen.stages.builder import build_stage
from latentgen.stages.resolver import resolve_dependencies
from latentgen.stages.stage1 import compose_stage1

TARGET_SPEEDUP = 10.0
PRIORS = {"transformer": "transformer_mnist", "pixelcnn": "pixelcnn_mnist", "maskgit": "maskgit_mnist",
          "ldm": "ldm_mnist"}


def batches(make_loader: Callable[[], torch.utils.data.DataLoader]) -> Iterator:
    """Batches forever, starting a new epoch (a new loader iterator) when one ends."""
    while True:
        yield from make_loader()


class PriorTrainer:
    """The prior's own ``training_step`` + backward + optimiser step, without a Trainer."""

    def __init__(self, model: pl.LightningModule, device: torch.device) -> None:
        self.model = silence_logging(model).to(device).train()
        self.opt = model.configure_optimizers()["optimizer"]
        self.device = device

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = self.model.training_step([x.to(self.device), y.to(self.device)], 0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def make_encoder(stage1, field: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    stage1 = stage1.to(device).eval()

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        z = stage1.encode(images.to(device))
        return stage1.quantize(z)[1] if field == "tokens" else z

    return encode


def rate(source: Iterator, consume: Callable, steps: int, warmup: int, batch_size: int, device) -> float:
    """Samples/s of ``consume(batch)`` over ``steps`` batches of ``source`` after ``warmup`` ones."""
    stamps = []
    for _ in range(warmup + steps):
        consume(next(source))
        stamps.append(now(device))
    return window_rate(stamps, warmup, batch_size)


def build(args, out: Path):
    overrides = [f"+experiment={PRIORS[args.prior]}", "logger=csv", f"latent_cache.max_items={args.cache_items}",
                 f"data.batch_size={args.batch_size}"]
    overrides.append(f"stage1.ckpt_path={args.stage1_ckpt}" if args.stage1_ckpt else "stage1.debug=limit")
    if args.quick and not args.stage1_ckpt:  # cheap validation/test of the tiny stage 1
        overrides.append("stage1.overrides=['data.eval_batch_size=64','test=false','trainer.limit_val_batches=1']")
    cfg = compose_run([*overrides, *args.overrides], out / "run")
    with open_dict(cfg):
        cfg.paths.log_dir = str(args.log_dir or out)
    latent_dm, model = build_stage(cfg, resolve_dependencies(cfg))
    image_cfg = compose_stage1(cfg).data
    image_dm = hydra.utils.instantiate(image_cfg, batch_size=latent_dm.batch_size)
    image_dm.prepare_data()
    image_dm.setup("fit")
    return latent_dm, image_dm, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of the prior's config")
    parser.add_argument("--prior", choices=sorted(PRIORS), default="transformer")
    parser.add_argument("--stage1-ckpt", default=None, help="VQ-VAE checkpoint (default: train a tiny one)")
    parser.add_argument("--log-dir", default=None, help="artefact store root to reuse (default: a temp dir)")
    parser.add_argument("--cache-items", default="null", help="items encoded per split (null = all)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the two training paths")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 512 cached items, batch 32, 4 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.cache_items, args.batch_size, args.steps, args.warmup, args.rounds = 512, 32, 4, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    use_shared_data_dir()
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    with tempfile.TemporaryDirectory(prefix="bench_datapath_") as tmp:
        latent_dm, image_dm, model = build(args, Path(tmp))
        field, bs = latent_dm.field, latent_dm.batch_size
        pl.seed_everything(0, verbose=False)
        trainer = PriorTrainer(model, device)
        encode = make_encoder(model.stage1, field, device)
        cached = batches(latent_dm.train_dataloader)
        images = batches(image_dm.train_dataloader)

        def train_cached(batch):
            trainer.step(*batch)

        def train_on_the_fly(batch):
            x, y = batch
            trainer.step(encode(x), y)

        run = dict(steps=args.steps, warmup=args.warmup, batch_size=bs, device=device)
        from_cache, on_the_fly = [], []
        for r in range(args.rounds):
            from_cache.append(rate(cached, train_cached, **run))
            on_the_fly.append(rate(images, train_on_the_fly, **run))
            print(f"round {r + 1}: cache {from_cache[-1]:.0f}/s, on the fly {on_the_fly[-1]:.0f}/s")
        latent_loader = rate(cached, lambda b: None, **run)
        image_loader = rate(images, lambda b: None, **run)
        image_encode = rate(images, lambda b: encode(b[0]), **run)
        fixed = next(cached)
        step_s = time_calls(lambda: trainer.step(*fixed), args.steps, device)

    c, f = median(from_cache), median(on_the_fly)
    print_table(
        ["prior training", "samples/s", "ms/batch", "rounds samples/s"],
        [["latent cache -> prior step", f"{c:.0f}", f"{1e3 * bs / c:.2f}", " ".join(f"{v:.0f}" for v in from_cache)],
         ["images -> frozen encoder -> prior step", f"{f:.0f}", f"{1e3 * bs / f:.2f}",
          " ".join(f"{v:.0f}" for v in on_the_fly)]],
        title=f"{args.prior} prior ({field}), batch {bs}, {args.steps} steps after {args.warmup} warm-up, "
              f"median of {args.rounds} rounds")
    verdict = "meets" if c / f >= TARGET_SPEEDUP else "BELOW"
    print(f"training speed-up from the cache: {c / f:.2f}x  (target >= {TARGET_SPEEDUP:.0f}x: {verdict})")
    print(f"data-path speed-up (latent loader vs image loader + encoder): {latent_loader / image_encode:.1f}x")
    step_ms = 1e3 * step_s
    print_table(
        ["part", "batches/s", "ms/batch", "% of prior step"],
        [["latent loader alone", f"{latent_loader / bs:.1f}", f"{1e3 * bs / latent_loader:.2f}",
          f"{100 * (1e3 * bs / latent_loader) / step_ms:.1f}"],
         ["image loader alone", f"{image_loader / bs:.1f}", f"{1e3 * bs / image_loader:.2f}",
          f"{100 * (1e3 * bs / image_loader) / step_ms:.1f}"],
         ["image loader + frozen encoder", f"{image_encode / bs:.1f}", f"{1e3 * bs / image_encode:.2f}",
          f"{100 * (1e3 * bs / image_encode) / step_ms:.1f}"],
         ["prior step alone (fixed batch)", f"{1 / step_s:.1f}", f"{step_ms:.2f}", "100.0"]],
        title=f"loaders vs model step (num_workers={latent_dm.num_workers}: loading runs in the training process)")
    print(f"\nmachine: {machine()}  (torch threads: {torch.get_num_threads()}, device: {device})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
