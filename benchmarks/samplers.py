"""Sampler speed/quality trade-offs: wall time and FID-LeNet of the priors' samplers.

    python benchmarks/samplers.py --ldm LDM.ckpt --transformer GPT.ckpt --maskgit MASKGIT.ckpt \
        --classifier CLASSIFIER.ckpt [--num-samples 1000] [--grid 14]
    python benchmarks/samplers.py --train --log-dir logs    # train the four with their default budgets
    python benchmarks/samplers.py --quick                   # smoke run: tiny models, a few samples

Rows (each the wall time to draw and decode ``--num-samples`` images, same seed, and FID-LeNet
against as many real test images):

* latent DDPM: DDIM-50 (reference) vs DDIM, DPM-Solver++(2M), UniPC, Euler and Heun at ``--ldm-steps``
  (default 10 and 20; target: DPM-Solver++ or UniPC at 10 steps within 5 % of DDIM-50's FID, at 20 steps
  equal or better), and DDPM over all T steps with ``--full-ddpm``;
* classifier guidance (``--latent-classifier`` with ``--ldm-uncond`` and/or ``--ldm``): FID and the share of
  samples the LeNet classifies as the requested class at each ``--guidance-scales`` value (target >= 90 %
  for the unconditional model);
* AR transformer with vs without the KV cache (target: cache >= 2x faster);
* MaskGIT-4/8/16 vs AR decoding (with cache) at the checkpoints' grid (7x7 on MNIST), and timing-only on
  a ``--grid G`` x G token grid with random weights of the same architectures (default 14; 0 skips;
  target: MaskGIT-8 >= 5x faster than AR on 14x14). Timing does not need trained weights.
A section whose checkpoint is missing is skipped; without ``--classifier`` FID is not computed.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import warnings
from pathlib import Path

import hydra
import torch
from _bench import now, print_table, use_shared_data_dir
from _common import compose_run, machine
from omegaconf import open_dict

from latentgen.diffusion.schedulers import network_calls
from latentgen.metrics.features import LeNetFeatureExtractor
from latentgen.metrics.generative import fid_kid
from latentgen.models.prior_base import PriorModule
from latentgen.sampling.from_checkpoint import draw_samples, load_prior

TARGETS = {"fast_solver": 0.05, "guided_accuracy": 0.90, "kv_cache": 2.0, "maskgit8": 5.0}
EXPERIMENTS = {"ldm": "ldm_mnist", "transformer": "transformer_mnist", "maskgit": "maskgit_mnist",
               "classifier": "classifier_mnist"}
# tiny variants for --quick: few steps, small nets (and T=100 diffusion steps), cheap validation
QUICK_COMMON = ["debug=limit", "test=false", "trainer.limit_val_batches=1", "data.eval_batch_size=64", "images.num=4"]
QUICK_STAGE1 = ["stage1.overrides=['data.eval_batch_size=64','test=false','trainer.limit_val_batches=1']"]
QUICK_MODELS = {
    "ldm": ["model.base_channels=16", "model.num_res_blocks=1", "model.num_train_timesteps=100"],
    "transformer": ["model.d_model=32", "model.n_layers=2", "model.n_heads=2"],
    "maskgit": ["model.d_model=32", "model.n_layers=2", "model.n_heads=2"],
    "classifier": [],
}


def train_checkpoint(name: str, quick: bool, log_dir: Path, out: Path) -> Path:
    """Train ``name``'s experiment (tiny with ``quick``); returns its final checkpoint."""
    from latentgen.train import train

    overrides = [f"+experiment={EXPERIMENTS[name]}", "logger=csv"]
    if quick:
        overrides += QUICK_COMMON + QUICK_MODELS[name] + (QUICK_STAGE1 if name != "classifier" else [])
    cfg = compose_run(overrides, out / name)
    with open_dict(cfg):
        cfg.paths.log_dir = str(log_dir)
        cfg.extras.enforce_tags = False
    _, objects = train(cfg)
    path = out / f"{name}.ckpt"
    objects["trainer"].save_checkpoint(path)
    return path


def real_images(model: PriorModule, n: int, data_dir: str) -> torch.Tensor:
    """The first ``n`` test images of the prior's dataset (recorded in its checkpoint)."""
    data = (model.hparams.get("stage1_info") or {}).get("data") or {"target": "latentgen.data.datamodules.MNISTDataModule"}
    args = {k: v for k, v in data.items() if k != "target" and v is not None}
    dm = hydra.utils.instantiate({"_target_": data["target"], **args, "data_dir": data_dir, "download": False})
    dm.setup()
    return dm.test_set.get_batch(range(min(n, len(dm.test_set))))[0]


class Bench:
    """Times ``draw_samples`` of one prior under different options and scores them with FID-LeNet."""

    def __init__(self, args, extractor: LeNetFeatureExtractor | None, data_dir: str) -> None:
        self.args, self.extractor, self.data_dir = args, extractor, data_dir
        self._real: dict[int, torch.Tensor] = {}

    def warm_up(self, model: PriorModule, options: dict) -> None:
        """One small untimed draw: lazy initialisation and allocator growth stay out of the first row."""
        model.sample_latents(2, model.labels_for(2), **options)

    def run(self, model: PriorModule, options: dict, tokens_only: bool = False) -> tuple[float, float | None]:
        """Wall seconds for ``--num-samples`` samples (decoded unless ``tokens_only``) and their FID-LeNet."""
        n, bs, device = self.args.num_samples, self.args.batch_size, model.device
        if tokens_only:  # e.g. random weights at a grid no stage 1 here decodes
            gen = torch.Generator(device=device).manual_seed(self.args.seed)
            t0 = now(device)
            for start in range(0, n, bs):
                b = min(bs, n - start)
                model.sample_latents(b, model.labels_for(b), generator=gen, **options)
            return now(device) - t0, None
        t0 = now(device)
        images, _, _ = draw_samples(model, n, bs, self.args.seed, None, options, progress=False)
        seconds = now(device) - t0
        if self.extractor is None:
            return seconds, None
        real = self._real.setdefault(id(model), real_images(model, n, self.data_dir))
        return seconds, fid_kid(real, images, self.extractor, kid_subsets=10)["fid_lenet"]


    def run_classes(self, model: PriorModule, options: dict) -> tuple[float, float | None, float | None]:
        """Like :meth:`run`, with labels cycling through the classes; also the share the LeNet classifies
        as the requested class."""
        n, bs = self.args.num_samples, self.args.batch_size
        t0 = now(model.device)
        images, labels, _ = draw_samples(model, n, bs, self.args.seed, None, options, progress=False)
        seconds = now(model.device) - t0
        if self.extractor is None:
            return seconds, None, None
        if labels is None:  # an unconditional model without guidance: the requested classes all the same
            labels = torch.arange(n) % 10
        real = self._real.setdefault(id(model), real_images(model, n, self.data_dir))
        fid = fid_kid(real, images, self.extractor, kid_subsets=10)["fid_lenet"]
        with torch.no_grad():
            pred = torch.cat([self.extractor.logits(b.to(self.extractor.device)).argmax(-1) for b in images.split(500)])
        return seconds, fid, float((pred.cpu() == labels).double().mean())


def fmt_fid(fid: float | None) -> str:
    return "n/a" if fid is None else f"{fid:.2f}"


LDM_SOLVERS = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)", "unipc": "UniPC", "euler": "Euler", "heun": "Heun"}


def ldm_configs(model, steps: list[int], full_ddpm: bool, samplers: list[str]) -> list[tuple[str, dict]]:
    """(row name, options): DDIM-50 first (the reference), then every solver at each step count."""
    t = int(model.hparams.num_train_timesteps)
    configs = [("DDIM-50", {"sampler": "ddim", "num_inference_steps": min(50, t)})]
    if full_ddpm:
        configs.append((f"DDPM-{t}", {"sampler": "ddpm", "num_inference_steps": t}))
    for sampler, label in LDM_SOLVERS.items():
        if sampler not in samplers:
            continue
        configs += [(f"{label}-{k}", {"sampler": sampler, "num_inference_steps": k}) for k in steps
                    if k <= t and not (sampler == "ddim" and k == 50)]
    return configs


def ldm_section(bench: Bench, model) -> None:
    configs = ldm_configs(model, bench.args.ldm_steps, bench.args.full_ddpm, bench.args.ldm_samplers)
    bench.warm_up(model, configs[0][1])
    results = {name: bench.run(model, opts) for name, opts in configs}
    ref_s, ref_fid = results["DDIM-50"]
    rows = []
    for name, opts in configs:
        s, fid = results[name]
        calls = network_calls(model.make_scheduler(opts["sampler"]), opts["num_inference_steps"])
        worse = "n/a" if fid is None or ref_fid is None else f"{100 * (fid / max(ref_fid, 1e-12) - 1):+.1f} %"
        rows.append([name, str(calls), f"{s:.2f}", f"{bench.args.num_samples / s:.1f}", f"{ref_s / s:.1f}x",
                     fmt_fid(fid), worse])
    print_table(["sampler", "net calls", "wall s", "samples/s", "speed-up vs DDIM-50", "FID-LeNet", "FID vs DDIM-50"],
                rows, title=f"latent DDPM, {bench.args.num_samples} samples (guidance as in the checkpoint)")
    if ref_fid is None:
        return
    tol = TARGETS["fast_solver"]
    for k, bound, what in ((10, 1 + tol, f"within {100 * tol:.0f} % of"), (20, 1.0, "equal or better than")):
        got = {name: results[name][1] for name in (f"DPM-Solver++(2M)-{k}", f"UniPC-{k}") if name in results}
        if got:
            best = min(got, key=got.get)
            ok = got[best] <= bound * ref_fid
            print(f"target at {k} steps, FID {what} DDIM-50 ({ref_fid:.2f}): {best} {got[best]:.2f} "
                  f"({'meets' if ok else 'BELOW'})")


def guidance_section(bench: Bench, model, classifier, scales: list[float], base: dict, kind: str) -> None:
    """Classifier guidance of ``model`` with ``classifier``: share of samples the LeNet gives the requested class."""
    rows = []
    for scale in scales:
        options = {**base, "classifier": classifier, "classifier_scale": scale} if scale else dict(base)
        s, fid, acc = bench.run_classes(model, options)
        rows.append([f"{scale:g}", f"{s:.2f}", fmt_fid(fid), "n/a" if acc is None else f"{100 * acc:.1f} %"])
    sampler = {**model.sampling, **base}
    print_table(["classifier_scale", "wall s", "FID-LeNet", "requested class (LeNet)"], rows,
                title=f"classifier guidance of the {kind} latent DDPM ({sampler['sampler']}-"
                      f"{sampler['num_inference_steps']}), {bench.args.num_samples} samples")
    print(f"target: >= {100 * TARGETS['guided_accuracy']:.0f} % of samples of the requested class (unconditional model)")


def ar_maskgit_section(bench: Bench, gpt, maskgit, grid_label: str, tokens_only: bool = False) -> None:
    """KV cache on/off for ``gpt`` and MaskGIT-4/8/16 for ``maskgit`` (either may be None)."""
    configs = []
    if gpt is not None:
        configs += [("AR, KV cache", gpt, {"use_cache": True}), ("AR, no cache", gpt, {"use_cache": False})]
    if maskgit is not None:
        configs += [(f"MaskGIT-{k}", maskgit, {"num_inference_steps": k}) for k in (4, 8, 16) if k <= maskgit.seq_len]
    for model in {id(m): m for _, m, _ in configs}.values():
        bench.warm_up(model, next(opts for _, m, opts in configs if m is model))
    results = {name: bench.run(model, opts, tokens_only) for name, model, opts in configs}
    ar_s = results.get("AR, KV cache", (None,))[0]
    seq_len = math.prod((gpt or maskgit).grid_shape)
    rows = [[name, f"{s:.2f}", f"{bench.args.num_samples / s:.1f}", "-" if ar_s is None else f"{ar_s / s:.2f}x",
             *net_work(name, seq_len), fmt_fid(fid)] for name, (s, fid) in results.items()]
    print_table(["sampler", "wall s", "samples/s", "speed-up vs AR (cache)", "sequential net calls",
                 "positions through the net", "FID-LeNet"], rows,
                title=f"AR transformer vs MaskGIT, {grid_label}, {bench.args.num_samples} samples")
    print("(a compute-bound device such as a CPU pays for positions; a latency-bound one such as a GPU at small "
          "batch pays for sequential calls)")
    if gpt is not None:
        gain = results["AR, no cache"][0] / results["AR, KV cache"][0]
        print(f"target KV cache >= {TARGETS['kv_cache']:.0f}x: {gain:.2f}x "
              f"({'meets' if gain >= TARGETS['kv_cache'] else 'BELOW'})")
    if gpt is not None and "MaskGIT-8" in results:
        gain = ar_s / results["MaskGIT-8"][0]
        where = "target (14x14 grid)" if grid_label.startswith("14x14") else "for reference (target is on 14x14)"
        uncached = results["AR, no cache"][0] / results["MaskGIT-8"][0]
        print(f"MaskGIT-8 vs AR {where}: {gain:.1f}x against AR with the KV cache, {uncached:.1f}x against AR "
              f"without (target >= {TARGETS['maskgit8']:.0f}x: {'meets' if gain >= TARGETS['maskgit8'] else 'BELOW'}"
              " against the cached AR)")


def net_work(sampler: str, seq_len: int) -> tuple[str, str]:
    """Sequential network calls and token positions run through the network to draw one sequence:
    AR with a KV cache feeds one new position per call, AR without re-runs the whole prefix, and
    MaskGIT-K runs all positions K times."""
    if sampler == "AR, KV cache":
        return str(seq_len), str(seq_len)
    if sampler == "AR, no cache":
        return str(seq_len), str(seq_len * (seq_len + 1) // 2)
    k = int(sampler.removeprefix("MaskGIT-"))
    return str(k), str(k * seq_len)


def random_weights(loaded: PriorModule | None, config_group: str, grid: int, tmp: Path, device) -> PriorModule:
    """The loaded prior's architecture (or the config default) at a grid x grid token grid, untrained."""
    if loaded is not None:
        hp = {**dict(loaded.hparams), "grid_shape": [grid, grid], "stage1_hparams": None, "stage1_info": None}
        return type(loaded)(**hp).to(device).eval()
    cfg = compose_run([f"model={config_group}", "model.num_tokens=128", f"model.grid_shape=[{grid},{grid}]"], tmp)
    return hydra.utils.instantiate(cfg.model, _convert_="all").to(device).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ldm", "transformer", "maskgit", "classifier"):
        parser.add_argument(f"--{name}", type=Path, default=None, help=f"{EXPERIMENTS[name]} checkpoint")
    parser.add_argument("--train", action="store_true", help="train missing checkpoints with default budgets")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="artefact store and kept checkpoints of --train (default: a temp dir)")
    parser.add_argument("--ldm-uncond", type=Path, default=None,
                        help="an unconditional latent DDPM checkpoint (ldm_mnist model.num_classes=null) for the "
                             "classifier-guidance section")
    parser.add_argument("--latent-classifier", type=Path, default=None,
                        help="latent_classifier_mnist checkpoint: classifier guidance of --ldm-uncond (and --ldm)")
    parser.add_argument("--guidance-sampler", default="dpmpp_2m", help="sampler of the classifier-guidance rows")
    parser.add_argument("--guidance-steps", type=int, default=20)
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--ldm-steps", type=int, nargs="+", default=[10, 20],
                        help="step counts of every latent-DDPM solver (DDIM-50 is always the reference)")
    parser.add_argument("--ldm-samplers", nargs="+", default=list(LDM_SOLVERS), choices=list(LDM_SOLVERS),
                        help="the solvers of the latent-DDPM table (each at every --ldm-steps count)")
    parser.add_argument("--full-ddpm", action="store_true", help="also DDPM over all T steps (slow)")
    parser.add_argument("--sections", nargs="+", default=["ldm", "guidance", "ar"],
                        choices=["ldm", "guidance", "ar"], help="which tables to print")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--grid", type=int, default=14, help="token grid side of the random-weight timing (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny models trained here, 16 samples")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_samples, args.batch_size = 16, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    use_shared_data_dir()
    data_dir = os.environ.get("LATENTGEN_DATA_DIR", "")  # empty: the data module's default (./data)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory(prefix="bench_samplers_") as tmp:
        tmp = Path(tmp)
        ckpts = {name: getattr(args, name) for name in EXPERIMENTS}
        # with --log-dir, trained checkpoints are kept there for later runs (--ldm PATH ...)
        keep = args.log_dir / "benchmark_checkpoints" if args.log_dir else tmp
        for name, path in ckpts.items():
            if path is None and (args.quick or args.train):
                ckpts[name] = train_checkpoint(name, args.quick, args.log_dir or tmp / "logs", keep)
                print(f"trained {name}: {ckpts[name]}")
        extractor = LeNetFeatureExtractor(ckpts["classifier"]).to(device) if ckpts["classifier"] else None
        bench = Bench(args, extractor, data_dir)
        models = {n: load_prior(str(p), device) for n, p in ckpts.items() if p is not None and n != "classifier"}
        if extractor is None:
            print("no --classifier: FID-LeNet not computed")

        if "ldm" not in args.sections:
            pass
        elif "ldm" in models:
            ldm_section(bench, models["ldm"])
        else:
            print("no --ldm checkpoint: latent DDPM section skipped")
        if "guidance" in args.sections and args.latent_classifier:
            from latentgen.stages.guidance_classifier import load_guidance_classifier

            classifier = load_guidance_classifier(args.latent_classifier, device)
            solver = {"sampler": args.guidance_sampler, "num_inference_steps": args.guidance_steps}
            if args.ldm_uncond is not None:
                guidance_section(bench, load_prior(str(args.ldm_uncond), device), classifier, args.guidance_scales,
                                 solver, "unconditional")
            if ckpts["ldm"] is not None:
                # the null-class branch of a classifier-free-guidance model is an unconditional DDPM
                # trained jointly with the conditional one (label dropout)
                for cfg_scale, kind in ((0.0, "unconditional (null-class branch of the CFG-trained)"),
                                        (None, "conditional (its own classifier-free guidance)")):
                    base = {**solver, **({} if cfg_scale is None else {"guidance_scale": cfg_scale})}
                    guidance_section(bench, models["ldm"], classifier, args.guidance_scales, base, kind)
        elif "guidance" in args.sections:
            print("no --latent-classifier: classifier-guidance section skipped")
        gpt, maskgit = models.get("transformer"), models.get("maskgit")
        if "ar" not in args.sections:
            pass
        elif gpt is not None or maskgit is not None:
            h, w = (gpt or maskgit).grid_shape
            ar_maskgit_section(bench, gpt, maskgit, f"{h}x{w} grid, trained weights")
        else:
            print("no --transformer/--maskgit checkpoint: trained AR vs MaskGIT section skipped")
        if args.grid and "ar" in args.sections:
            gpt_g = random_weights(gpt, "transformer", args.grid, tmp / "grid", device)
            mask_g = random_weights(maskgit, "discrete_diffusion", args.grid, tmp / "grid", device)
            ar_maskgit_section(bench, gpt_g, mask_g, f"{args.grid}x{args.grid} grid, random weights (tokens only)",
                               tokens_only=True)
    print(f"\nmachine: {machine()}  (torch threads: {torch.get_num_threads()}, device: {device})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
