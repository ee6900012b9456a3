"""W&B in offline mode: a real run directory with metrics and the full config, no API key leaks."""

from __future__ import annotations

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
    logs = list(run.glob("*.wandb"))
    assert len(logs) == 1, "no binary W&B log (the file `wandb sync` uploads)"
    # offline runs keep history, config and summary records in that log
    record_bytes = logs[0].read_bytes()
    for key in (b"val/recon_loss", b"train/loss", b"val/psnr", b"latentgen.models.vqvae.VQVAE", b"output_dir", str(cfg.paths.output_dir).encode()):
        assert key in record_bytes, key
    assert list((run / "files" / "media" / "images").rglob("*.png")), "reconstruction grid not logged as a W&B image"
    for f in run.rglob("*"):
        if f.is_file():
            assert b"secret-key-should-never-be-logged" not in f.read_bytes(), f
