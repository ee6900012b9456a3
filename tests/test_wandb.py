"""W&B in offline mode: a real run directory with metrics and the full config, no API key leaks."""

from __future__ import annotations

import json
from pathlib import Path

from latentgen.train import train


def test_wandb_offline_run_dir_has_metrics_and_config(compose_cfg, mnist_dir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-should-never-be-logged-0123456789")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg(
        "+experiment=vqvae_mnist", "debug=limit", "logger=wandb", "test=false",
        "model.num_codes=16",
    )
    train(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = runs[0]
    assert list(run.glob("*.wandb")), "no binary W&B log (the file `wandb sync` uploads)"
    summary = json.loads((run / "files" / "wandb-summary.json").read_text())
    assert "val/recon_loss" in summary and "train/loss" in summary
    config_text = (run / "files" / "config.yaml").read_text()
    assert "vqvae_mnist" in config_text and "output_dir" in config_text
    for f in run.rglob("*"):
        if f.is_file():
            assert b"secret-key-should-never-be-logged" not in f.read_bytes(), f
