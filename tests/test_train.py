"""Compose every experiment with Hydra's compose() and run it with fast_dev_run; short real runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from latentgen.train import train
from latentgen.utils.resolvers import CONF_DIR
from latentgen.utils.run import resolved_container

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_train_yaml_puts_experiment_before_local_and_debug():
    defaults = OmegaConf.load(CONF_DIR / "train.yaml").defaults
    names = [str(next(iter(d)) if isinstance(d, dict) or OmegaConf.is_dict(d) else d) for d in defaults]
    names = [n.removeprefix("optional ") for n in names]
    assert names.index("experiment") < names.index("local") < names.index("debug")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment, compose_cfg):
    cfg = compose_cfg(f"+experiment={experiment}")
    assert cfg.task_name == experiment
    assert cfg.model._target_ and cfg.data._target_
    resolved_container(cfg)  # every interpolation outside Hydra's own node resolves


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, compose_cfg, mnist_dir, shared_log_dir):
    cfg = compose_cfg(f"+experiment={experiment}", "debug=fdr")
    cfg.paths.log_dir = str(shared_log_dir)  # priors share one fdr stage 1 per dataset
    metrics, objects = train(cfg)
    assert objects["trainer"].fast_dev_run
    assert any(k.startswith("test/") for k in metrics), metrics


def test_short_run_writes_checkpoints_images_and_returns_metric(compose_cfg, mnist_dir):
    cfg = compose_cfg("+experiment=vqvae_mnist", "debug=limit", "logger=csv", "model.num_codes=16")
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "images").glob("val_reconstructions_step*.png"))
    assert (out / "csv" / "metrics.csv").is_file()
    for key in ("val/recon_loss", "val/psnr", "val/ssim", "val/perplexity", "val/code_usage", "test/psnr"):
        assert key in metrics, key
    assert objects["trainer"].global_step == 8


def test_resume_from_last_checkpoint_continues_step_count(compose_cfg, mnist_dir):
    cfg = compose_cfg("+experiment=vqvae_mnist", "debug=limit", "logger=csv", "test=false",
                      "trainer.max_epochs=2")
    train(cfg)
    cfg.trainer.max_epochs = 3  # one more epoch of 4 batches than the first run's 2 x 4
    cfg.trainer.max_steps = 12
    cfg.ckpt_path = "last"
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 12  # 2 epochs x 4 batches, +1 resumed epoch


def test_missing_checkpoint_path_is_a_clear_error(compose_cfg, mnist_dir):
    cfg = compose_cfg("+experiment=vqvae_mnist", "debug=fdr", "ckpt_path=/nonexistent/x.ckpt")
    with pytest.raises(FileNotFoundError, match="ckpt_path=/nonexistent/x.ckpt"):
        train(cfg)
