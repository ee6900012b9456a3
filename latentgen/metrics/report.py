"""Evaluation reports: ``report.json`` (metrics + provenance), ``report.md`` and a W&B summary."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latentgen import __version__
from latentgen.metrics.generative import display_name
from latentgen.utils.pylogger import RankedLogger

log = RankedLogger(__name__)

LABELS = {
    "fid_inception": "FID (Inception-v3)",
    "nll_nats_per_grid": "Test NLL (nats / latent grid)",
    "bits_per_token": "Test NLL (bits / token)",
    "sampling_time_s": "Sampling time (s)",
    "sampling_ms_per_image": "Sampling time (ms / image)",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "code_usage": "Codebook usage (test)",
    "code_perplexity": "Codebook perplexity (test)",
}


def metric_label(key: str) -> str:
    """Display name of a metric key: ``fid_lenet`` -> ``FID-LeNet``, ``psnr`` -> ``PSNR (dB)``."""
    return LABELS.get(key) or display_name(key)


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metrics as plain floats; a non-finite value is an error naming the metric."""
    out = {}
    for key, value in metrics.items():
        value = float(value.item() if hasattr(value, "item") else value)
        if not math.isfinite(value):
            raise FloatingPointError(f"metric {key} ({metric_label(key)}) is {value}: check the checkpoint, "
                                     "the classifier and the number of samples")
        out[key] = value
    return out


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, title: str, metrics: Mapping[str, float], provenance: dict[str, Any],
                 config: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = finite_metrics(metrics)
    provenance = {**provenance, "latentgen_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    report = {"title": title, "metrics": metrics, "labels": {k: metric_label(k) for k in metrics},
              "provenance": provenance, "config": config or {}}
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str, allow_nan=False))

    lines = [f"# {title}\n"]
    for key in ("ckpt", "model", "sampler", "stage1_sha256", "data", "num_samples", "seed"):
        if provenance.get(key) is not None:
            value = provenance[key]
            value = value.get("dataset", value) if isinstance(value, dict) else value
            lines.append(f"- **{key}**: `{value}`")
    clf = provenance.get("classifier") or {}
    if clf:
        acc = clf.get("test_accuracy")
        lines.append(f"- **classifier**: `{clf.get('ckpt_path')}`" + (f" (test accuracy {acc:.4f})" if acc else ""))
    lines += ["", markdown_table(["Metric", "Value"], [[metric_label(k), v] for k, v in metrics.items()])]
    lines.append("FID/KID-LeNet and the classifier score use the LeNet classifier above; they compare only "
                 "with numbers computed with the same classifier checkpoint and the same N.\n")
    md_path = out / "report.md"
    md_path.write_text("\n".join(lines))
    return {"json": json_path, "md": md_path}


def log_wandb_summary(wandb_cfg: Mapping[str, Any] | None, out_dir: str | Path, name: str,
                      metrics: Mapping[str, float], config: dict[str, Any]) -> Path | None:
    """A W&B run (offline unless ``wandb_cfg.mode`` says otherwise) whose summary holds the metrics."""
    if not wandb_cfg or not wandb_cfg.get("enabled", False):
        return None
    import wandb

    run = wandb.init(project=wandb_cfg.get("project", "latentgen"), mode=wandb_cfg.get("mode", "offline"),
                     dir=str(out_dir), name=name, job_type="evaluate", tags=list(wandb_cfg.get("tags") or []),
                     entity=wandb_cfg.get("entity"), config=config)
    try:
        run.summary.update({f"eval/{k}": v for k, v in metrics.items()})
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    log.info(f"W&B summary written to {run_dir}")
    return run_dir
