"""Evaluation entrypoint: ``python -m latentgen.evaluate ckpt=PATH [num_samples=1000 seed=0 ...]``.

Loads any stage from its checkpoint alone, finds (or trains once) the LeNet classifier of its
dataset, and writes ``report.json`` and ``report.md`` to the run dir (plus a W&B summary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from latentgen.metrics.eval_data import resolve_data
from latentgen.metrics.eval_setup import make_evaluator, pick_device, sampling_options
from latentgen.metrics.registry import eval_spec
from latentgen.metrics.report import log_wandb_summary, metric_label, write_report
from latentgen.sampling.from_checkpoint import (
    check_options,
    printable_options,
    with_guidance_classifier,
)
from latentgen.stages.artifacts import sha256_file
from latentgen.stages.checkpoints import load_model
from latentgen.utils import resolvers
from latentgen.utils.checkpoint_io import exit_on_checkpoint_error
from latentgen.utils.images import save_grid
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.run import extras

log = RankedLogger(__name__)

RECORDED_KEYS = ("num_samples", "batch_size", "seed", "sampling", "nll", "recon", "metrics", "classifier",
                 "inception")


def stage1_provenance(model: torch.nn.Module, ckpt: Path) -> dict[str, Any]:
    """Stage-1 checkpoint and SHA-256: the prior's recorded stage 1, or the checkpoint itself."""
    info = dict(getattr(model, "hparams", {}).get("stage1_info") or {})
    if not info:
        info = {"ckpt_path": str(ckpt), "sha256": sha256_file(ckpt)}
    return {k: v for k, v in info.items() if k != "data"}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the checkpoint ``cfg.ckpt``; returns the metrics and the paths written."""
    device = pick_device(cfg.device)
    ckpt = Path(cfg.ckpt)
    model = load_model(ckpt, map_location=device, purpose="evaluate").to(device).eval()
    spec = eval_spec(model)
    options = sampling_options(cfg)
    if spec.kind == "prior":
        check_options(model, options)
        options = with_guidance_classifier(model, options, cfg.guidance_classifier, cfg.paths, device)
    elif options:
        raise ValueError(f"sampling options {sorted(options)} do not apply to a {spec.label} checkpoint: "
                         "leave them null")
    source = resolve_data(model, ckpt, cfg.get("data"))
    evaluator, classifier = make_evaluator(cfg, source, device)

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if spec.kind == "prior":
        log.info(f"Sampling {cfg.num_samples} images from {spec.label} ({ckpt})")
        metrics, images = evaluator.evaluate_prior(model, options, cfg.seed, cfg.batch_size, cfg.nll.max_items)
        save_grid(images[:100], out / "samples.png", nrow=10)
        title = f"Evaluation of {spec.label}"
    else:
        metrics = evaluator.reconstruction_quality(model, cfg.recon.max_items)
        metrics.update(evaluator.recon_ceiling(model))
        title = f"Evaluation of {spec.label}: reconstructions"

    stage1 = stage1_provenance(model, ckpt)
    provenance = {
        "ckpt": str(ckpt), "ckpt_sha256": sha256_file(ckpt), "model": spec.label,
        "model_class": type(model).__name__, "kind": spec.kind,
        "sampler": spec.sampler_text(model, options), "sampling": {**getattr(model, "sampling", {}), **printable_options(options)},
        "stage1_sha256": stage1.get("sha256"), "stage1": stage1, "data": source.describe(),
        "classifier": {**classifier.describe(), "test_accuracy": evaluator.classifier_accuracy()},
        "num_samples": int(cfg.num_samples), "seed": int(cfg.seed), "device": device,
        "reference": f"first {cfg.num_samples} {source.dataset} test images",
        "fid_inception": "computed" if evaluator.inception else "skipped (no local Inception weights)",
    }
    config = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
              for k in RECORDED_KEYS}
    paths = write_report(out, title, metrics, provenance, config)
    wandb_dir = log_wandb_summary(cfg.get("wandb"), out, f"evaluate-{spec.family}", metrics,
                                  {**provenance, **config})
    for key in ("fid_lenet", "classifier_score", "bits_per_token", "psnr"):
        if key in metrics:
            log.info(f"{metric_label(key)}: {metrics[key]:.4g}")
    print(f"report: {paths['json']}\ntable:  {paths['md']}")
    return {"metrics": metrics, "provenance": provenance, "paths": paths, "wandb_dir": wandb_dir}


@hydra.main(version_base="1.3", config_path=str(resolvers.CONF_DIR), config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    extras(cfg)
    with exit_on_checkpoint_error():  # a bad checkpoint file: one clear error, no traceback
        evaluate(cfg)


if __name__ == "__main__":
    main()
