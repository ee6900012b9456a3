"""MaskGIT with and without re-masking: FID-LeNet and wall time at K = 4, 8, 16 steps.

    python benchmarks/remasking.py --ckpt MASKGIT.ckpt --classifier CLASSIFIER.ckpt \
        [--num-samples 2000] [--ratios 0.2 0.5] [--steps 4 8 16] [--seeds 0 1 2] [--split test]

Every row draws ``--num-samples`` images per seed (the same seeds for every row) and scores them against
as many real images of ``--split`` (FID-LeNet, mean over seeds; at N = 2000 the seed alone moves it by a
few points, so rows of one K are compared seed by seed). Pick ``--ratios`` on ``--split train`` (the first
N training images) and report the chosen ones on ``--split test``. Re-masking (``remask=confidence``, ``remask_ratio=r``) returns the least
confident revealed tokens to ``[MASK]`` at every step but the last, a share of at most ``r`` of them
decaying to 0, to be predicted again; it costs no extra network call. ``remask_table`` runs the grid for
another script (``benchmarks/samplers.py``); ``print_remasking`` prints its rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from _bench import now, print_table, use_shared_data_dir
from _common import machine

from latentgen.metrics.features import LeNetFeatureExtractor
from latentgen.metrics.generative import fid_kid
from latentgen.models.prior_base import PriorModule
from latentgen.sampling.from_checkpoint import draw_samples, load_prior

SPLITS = ("train", "val", "test")


def real_images(model: PriorModule, n: int, data_dir: str, split: str = "test") -> torch.Tensor:
    """The first ``n`` images of ``split`` of the prior's dataset (recorded in its checkpoint)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
    data = (model.hparams.get("stage1_info") or {}).get("data") or {"target": "latentgen.data.datamodules.MNISTDataModule"}
    args = {k: v for k, v in data.items() if k != "target" and v is not None}
    dm = hydra.utils.instantiate({"_target_": data["target"], **args, "data_dir": data_dir, "download": False})
    dm.setup()
    dataset = getattr(dm, f"{split}_set")
    return dataset.get_batch(range(min(n, len(dataset))))[0]


def remask_table(model: PriorModule, extractor: LeNetFeatureExtractor | None, real: torch.Tensor | None,
                 steps: Sequence[int] = (4, 8, 16), ratios: Sequence[float] = (0.2, 0.5), num_samples: int = 2000,
                 batch_size: int = 500, seeds: Sequence[int] = (0,), on_row=None) -> list[dict]:
    """One row per (K, remask off or ratio): ``{"steps", "remask", "ratio", "fids", "fid", "seconds"}``.

    Every configuration draws ``num_samples`` images for each of ``seeds`` (the same seeds for all, so
    rows of one K are paired); ``fids`` holds FID-LeNet against ``real`` per seed (empty without
    ``extractor``), ``fid`` their mean (None without) and ``seconds`` the mean wall time of
    ``draw_samples`` (sampling and decoding). K above the model's sequence length is skipped. ``on_row``
    (if given) is called with each row as soon as it is measured.
    """
    configs = [c for k in steps if k <= model.seq_len
               for c in [(k, "none", 0.0), *((k, "confidence", r) for r in ratios)]]
    model.sample_latents(2, model.labels_for(2), num_inference_steps=min(steps))  # untimed warm-up
    rows = []
    for k, remask, ratio in configs:
        options = {"num_inference_steps": k, "remask": remask, "remask_ratio": ratio}
        fids, times = [], []
        for seed in seeds:
            t0 = now(model.device)
            images, _, _ = draw_samples(model, num_samples, batch_size, seed, None, options, progress=False)
            times.append(now(model.device) - t0)
            if extractor is not None and real is not None:
                fids.append(fid_kid(real, images, extractor, kid_subsets=10)["fid_lenet"])
        rows.append({"steps": k, "remask": remask, "ratio": ratio, "fids": fids,
                     "fid": statistics.fmean(fids) if fids else None, "seconds": statistics.fmean(times)})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def print_remasking(rows: list[dict], title: str) -> None:
    """The table of ``remask_table``'s rows; "vs off" is the mean per-seed FID change against remask off
    at the same K, "better" the number of seeds where it is lower."""
    off = {r["steps"]: r["fids"] for r in rows if r["remask"] == "none"}
    table = []
    for r in rows:
        ref, fids = off.get(r["steps"]), r["fids"]
        change, better = "-", "-"
        if fids and ref and r["remask"] != "none":
            diffs = [a - b for a, b in zip(fids, ref, strict=True)]
            change, better = f"{statistics.fmean(diffs):+.2f}", f"{sum(d < 0 for d in diffs)}/{len(diffs)}"
        fid = "n/a" if r["fid"] is None else f"{r['fid']:.2f}"
        if len(fids) > 1:
            fid += f" ± {statistics.stdev(fids):.2f}"
        table.append([r["steps"], r["remask"], f"{r['ratio']:g}", fid, change, better, f"{r['seconds']:.1f}"])
    print_table(["K", "remask", "ratio", "FID-LeNet", "vs off", "better", "seconds"], table, title=title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="maskgit_mnist (absorbing) checkpoint")
    parser.add_argument("--classifier", type=Path, default=None, help="classifier_mnist checkpoint (FID-LeNet)")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5], help="remask_ratio values")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="real images to score against: tune on train, report on test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one draw of --num-samples per seed and configuration; FID is their mean")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_shared_data_dir()
    data_dir = os.environ.get("LATENTGEN_DATA_DIR", "")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    warnings.filterwarnings("ignore")
    model = load_prior(str(args.ckpt), device)
    if getattr(model, "process_name", None) != "absorbing":
        raise SystemExit(f"{args.ckpt} is not an absorbing discrete diffusion (MaskGIT) prior")
    extractor = LeNetFeatureExtractor(args.classifier).to(device) if args.classifier else None
    real = real_images(model, args.num_samples, data_dir, args.split) if extractor is not None else None
    if extractor is None:
        print("no --classifier: FID-LeNet not computed")
    def progress(row: dict) -> None:
        fid = "n/a" if row["fid"] is None else " / ".join(f"{f:.2f}" for f in row["fids"])
        print(f"K={row['steps']} remask={row['remask']} ratio={row['ratio']:g}: FID-LeNet {fid}, "
              f"{row['seconds']:.1f} s", flush=True)

    rows = remask_table(model, extractor, real, args.steps, args.ratios, args.num_samples, args.batch_size,
                        args.seeds, on_row=progress)
    seeds = ", ".join(map(str, args.seeds))
    print_remasking(rows, f"MaskGIT re-masking, {args.num_samples} samples (seeds {seeds}) vs the first "
                          f"{len(real) if real is not None else 0} {args.split} images")
    print(f"\nmachine: {machine()}  (torch threads: {torch.get_num_threads()}, device: {device})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
