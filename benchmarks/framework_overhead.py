"""Framework overhead: VQ-VAE training steps through ``pl.Trainer`` vs a plain PyTorch loop.

    python benchmarks/framework_overhead.py                 # 5 paired rounds of 200 steps each
    python benchmarks/framework_overhead.py --profile       # also switch framework parts off one by one
    python benchmarks/framework_overhead.py --quick         # smoke run (a few steps)

Both sides train the ``vqvae_mnist`` model (a fresh, identically seeded ``VQVAE`` each round) on the
same ``MNISTDataModule`` train loader with the model's own AdamW + LR schedule. The Lightning side is a
real ``Trainer.fit`` with the configured callbacks, CSV logger, progress bar and ``log_every_n_steps``;
the plain side calls the same encoder/quantiser/decoder and optimiser directly. Throughput is images/s
between the end of the warm-up steps and the last step (data loading, logging and callbacks included).
Rounds alternate which side runs first, and the verdict is the median of the per-round ratios, so a
machine whose speed drifts hits both sides alike. Target: Lightning / plain >= 0.95.

Every step is also split into compute (forward + backward, stamped by hooks on both sides) and the rest
(data, optimiser, hooks, logging, progress bar). The rest of Lightning minus the rest of the plain loop is
the framework's own time per step, a figure that does not move with the machine's speed. Below target
(or with ``--profile``) each framework feature is switched off in turn, each paired with a plain round.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import types
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from _bench import median, now, print_table, use_shared_data_dir, window_rate
from _common import compose_run, machine
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback

from latentgen.utils.instantiate import instantiate_callbacks, instantiate_loggers

TARGET = 0.95
# callback names (conf/callbacks) with their own switch; every other callback is "other"
PROGRESS_BAR, MODEL_SUMMARY, LR_MONITOR = "progress_bar", "model_summary", "lr_monitor"


@dataclass(frozen=True)
class Variant:
    """Which framework parts a Lightning round keeps."""

    name: str
    progress_bar: bool = True
    logger: bool = True
    step_logging: bool = True  # self.log / self.log_dict (and the perplexity they log) in training_step
    other_callbacks: bool = True
    model_summary: bool = True
    log_every_n_steps: int | None = None  # None: as configured

    def keeps(self, callback: str) -> bool:
        """Whether this variant keeps the configured callback named ``callback``."""
        if callback == LR_MONITOR and not self.logger:
            return False  # LearningRateMonitor refuses to run without a logger
        return {PROGRESS_BAR: self.progress_bar, MODEL_SUMMARY: self.model_summary}.get(callback, self.other_callbacks)


AS_CONFIGURED = Variant("as configured")
ABLATIONS = [
    replace(AS_CONFIGURED, name="no progress bar", progress_bar=False),
    replace(AS_CONFIGURED, name="no self.log in training_step", step_logging=False),
    replace(AS_CONFIGURED, name="no logger (nor LR monitor)", logger=False),
    replace(AS_CONFIGURED, name="log_every_n_steps=10^9", log_every_n_steps=10**9),
    replace(AS_CONFIGURED, name="no callbacks (bar kept)", other_callbacks=False, model_summary=False),
    Variant("bare Trainer (all off)", progress_bar=False, logger=False, step_logging=False,
            other_callbacks=False, model_summary=False),
]


class StepPhases:
    """Wall-clock stamps per training step: around the model's forward (module hooks), around backward,
    and at the step's end. Forward + backward is the compute both loops share; the rest is theirs."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.steps = device, []

    def new_step(self) -> None:
        self.steps.append({})

    def mark(self, key: str) -> None:
        self.steps[-1][key] = now(self.device)

    def watch(self, model: torch.nn.Module) -> None:
        def stamp(key):  # training forwards only: validation also calls the model
            return lambda module, *args: self.mark(key) if module.training and self.steps else None

        model.register_forward_pre_hook(stamp("forward_start"))
        model.register_forward_hook(stamp("forward_end"))


class PhaseClock(Callback):
    """``StepPhases`` driven by the Trainer's hooks."""

    def __init__(self, device: torch.device) -> None:
        self.phases = StepPhases(device)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.phases.watch(pl_module)

    def on_train_batch_start(self, *args, **kwargs) -> None:
        self.phases.new_step()

    def on_before_backward(self, *args, **kwargs) -> None:
        self.phases.mark("backward_start")

    def on_after_backward(self, *args, **kwargs) -> None:
        self.phases.mark("backward_end")

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.phases.mark("end")


@dataclass(frozen=True)
class Round:
    """One timed round: images/s over the window, and the median ms/step of compute and of the rest."""

    rate: float
    compute_ms: float
    rest_ms: float


def summarize(steps: list[dict[str, float]], warmup: int, batch_size: int) -> Round:
    """``steps``: per-step stamps (see ``StepPhases``); the window starts after ``warmup`` steps."""
    rate = window_rate([s["end"] for s in steps], warmup, batch_size)
    window = range(warmup, len(steps))
    compute = [steps[i]["forward_end"] - steps[i]["forward_start"] + steps[i]["backward_end"]
               - steps[i]["backward_start"] for i in window]
    wall = [steps[i]["end"] - steps[i - 1]["end"] for i in window]
    return Round(rate, 1e3 * median(compute), 1e3 * median([w - c for w, c in zip(wall, compute, strict=True)]))


def loss_only_step(self, batch, batch_idx):
    """``VQVAE.training_step`` without its logging: what the plain loop computes."""
    x = batch[0]
    x_hat, _, vq_loss = self(x)
    return F.mse_loss(x_hat, x) + vq_loss


def fresh_model(cfg: DictConfig):
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return hydra.utils.instantiate(cfg.model, _convert_="all")


def lightning_round(cfg: DictConfig, datamodule, variant: Variant, steps: int, warmup: int,
                    device: torch.device) -> Round:
    # a fresh run dir: with a checkpoint in it, fit(ckpt_path=None) would resume from last.ckpt
    # (Lightning does so whenever an OnExceptionCheckpoint callback is configured)
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="fit_", dir=cfg.paths.log_dir)
    model = fresh_model(cfg)
    if not variant.step_logging:
        model.training_step = types.MethodType(loss_only_step, model)
    configured = OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=True)
    callbacks = instantiate_callbacks(DictConfig({k: v for k, v in configured.items() if variant.keeps(k)}))
    clock = PhaseClock(device)
    loggers = instantiate_loggers(cfg.get("logger")) if variant.logger else False
    extra = {"max_steps": warmup + steps, "max_epochs": -1, "enable_progress_bar": variant.progress_bar,
             "enable_model_summary": variant.model_summary, "enable_checkpointing": variant.other_callbacks}
    if variant.log_every_n_steps is not None:
        extra["log_every_n_steps"] = variant.log_every_n_steps
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[*callbacks, clock], logger=loggers, **extra)
    trainer.fit(model, datamodule=datamodule)
    return summarize(clock.phases.steps[: warmup + steps], warmup, datamodule.batch_size)


def plain_round(cfg: DictConfig, datamodule, steps: int, warmup: int, device: torch.device) -> Round:
    model = fresh_model(cfg).to(device).train()
    optim = model.configure_optimizers()
    opt, sched = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    phases = StepPhases(device)
    phases.watch(model)
    while len(phases.steps) < warmup + steps:
        for x, _ in datamodule.train_dataloader():
            phases.new_step()
            x = x.to(device)
            x_hat, _, vq_loss = model(x)
            loss = F.mse_loss(x_hat, x) + vq_loss
            opt.zero_grad(set_to_none=True)
            phases.mark("backward_start")
            loss.backward()
            phases.mark("backward_end")
            opt.step()
            sched.step()
            phases.mark("end")
            if len(phases.steps) == warmup + steps:
                break
    return summarize(phases.steps, warmup, datamodule.batch_size)


def paired(cfg: DictConfig, datamodule, variant: Variant, args, device: torch.device,
           plain_first: bool) -> tuple[Round, Round]:
    """A Lightning round and a plain round back to back, in the given order: (lightning, plain)."""
    sides = {"lightning": partial(lightning_round, cfg, datamodule, variant, args.steps, args.warmup, device),
             "plain": partial(plain_round, cfg, datamodule, args.steps, args.warmup, device)}
    order = ("plain", "lightning") if plain_first else ("lightning", "plain")
    done = {side: sides[side]() for side in order}
    return done["lightning"], done["plain"]


def loader_ms_per_batch(datamodule, batches: int) -> float:
    it = iter(datamodule.train_dataloader())
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return 1e3 * (time.perf_counter() - t0) / batches


def build_config(out: Path, overrides: list[str]) -> DictConfig:
    cfg = compose_run(["+experiment=vqvae_mnist", "logger=csv", *overrides], out)
    with open_dict(cfg):
        cfg.paths.log_dir = str(out)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. data.batch_size=256")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps at the start of every round")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (Lightning and plain), alternating order")
    parser.add_argument("--profile", action="store_true", help="always run the ablations (else only below target)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 steps of batch 32, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds = 5, 2, 1
        args.overrides = ["data.batch_size=32", *args.overrides]
    if args.threads:
        torch.set_num_threads(args.threads)
    use_shared_data_dir()
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        cfg = build_config(Path(tmp), args.overrides)
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
        per_epoch = len(datamodule.train_dataloader())
        if args.warmup + args.steps > per_epoch:
            print(f"note: {args.warmup + args.steps} steps cross an epoch ({per_epoch} batches): validation "
                  "and checkpointing at the epoch end fall inside the Lightning window")

        pairs = []
        for r in range(args.rounds):  # alternate which side goes first: a drifting machine hits both alike
            lit, ref = paired(cfg, datamodule, AS_CONFIGURED, args, device, plain_first=r % 2 == 1)
            pairs.append((lit, ref))
            print(f"round {r + 1}: lightning {lit.rate:.0f} img/s, plain {ref.rate:.0f} img/s, "
                  f"ratio {lit.rate / ref.rate:.3f}")
        bs = datamodule.batch_size
        lightning, plain = [p[0] for p in pairs], [p[1] for p in pairs]
        ratio = median([lit.rate / ref.rate for lit, ref in pairs])
        rows = [[name, f"{median([x.rate for x in side]):.0f}", f"{median([1e3 * bs / x.rate for x in side]):.1f}",
                 f"{median([x.compute_ms for x in side]):.1f}", f"{median([x.rest_ms for x in side]):.1f}",
                 " ".join(f"{x.rate:.0f}" for x in side)]
                for name, side in (("pl.Trainer fit (as configured)", lightning), ("plain PyTorch loop", plain))]
        print_table(["loop", "img/s (median)", "ms/step", "compute ms (fwd+bwd)", "rest ms", "rounds img/s"], rows,
                    title=f"VQ-VAE training throughput, batch {bs}, {args.steps} steps after {args.warmup} warm-up")
        framework_ms = median([lit.rest_ms - ref.rest_ms for lit, ref in pairs])
        step_ms = median([1e3 * bs / ref.rate for ref in plain])
        verdict = "meets" if ratio >= TARGET else "BELOW"
        print(f"\nratio lightning/plain (median of the {len(pairs)} paired rounds): {ratio:.3f}  "
              f"(target >= {TARGET}: {verdict}); ratio of the median img/s: "
              f"{median([x.rate for x in lightning]) / median([x.rate for x in plain]):.3f}")
        print(f"framework time per step (Lightning's rest minus the plain loop's, median over rounds): "
              f"{framework_ms:+.2f} ms = {100 * framework_ms / step_ms:+.1f} % of a plain step")
        loader_ms = loader_ms_per_batch(datamodule, min(per_epoch - 1, max(5, args.steps // 2)))
        print(f"train loader alone: {loader_ms:.2f} ms/batch ({100 * loader_ms / step_ms:.1f} % of a "
              "plain step; both loops read the same loader)")

        if ratio < TARGET and not args.profile and args.quick:
            print("(--quick: ablations skipped; add --profile to run them)")
        if args.profile or (ratio < TARGET and not args.quick):
            rows = []
            for i, variant in enumerate(ABLATIONS):
                lit, ref = paired(cfg, datamodule, variant, args, device, plain_first=i % 2 == 1)
                rows.append([variant.name, f"{lit.rate:.0f}", f"{ref.rate:.0f}", f"{lit.rate / ref.rate:.3f}",
                             f"{lit.rest_ms - ref.rest_ms:+.2f}"])
            print_table(["lightning variant", "img/s", "paired plain img/s", "ratio",
                         "framework ms/step"], rows, title="what costs what (each variant paired with a plain round)")
            print("not in the window: validation, metric syncs (sync_dist only on val/test epochs) and image "
                  "logging (reconstructions at validation end) happen once per epoch")
    print(f"\nmachine: {machine()}  (torch threads: {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
