"""`latentgen.sample`: from a checkpoint alone, reproducible, with options and prefix completion."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from latentgen.sample import sample
from latentgen.utils.resolvers import CONF_DIR

from .conftest import data_dir


def _cfg(tmp_path, ckpt, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="sample.yaml", overrides=[f"ckpt={ckpt}", "show_progress=false", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.data_dir = str(data_dir())
    return cfg


def test_same_seed_same_grid_other_seed_other_grid(tmp_path, trained_run, mnist_dir):
    ckpt = trained_run("pixelcnn_mnist") / "checkpoints" / "last.ckpt"
    a = sample(_cfg(tmp_path / "a", ckpt, "num_samples=6", "batch_size=4", "seed=3"))
    b = sample(_cfg(tmp_path / "b", ckpt, "num_samples=6", "batch_size=4", "seed=3"))
    c = sample(_cfg(tmp_path / "c", ckpt, "num_samples=6", "batch_size=4", "seed=4"))
    assert a["png"].read_bytes() == b["png"].read_bytes()
    za, zc = np.load(a["npz"]), np.load(c["npz"])
    assert za["images"].shape == (6, 1, 28, 28) and za["images"].dtype == np.uint8
    assert za["samples"].shape == (6, 7, 7)
    assert not np.array_equal(za["samples"], zc["samples"])
    assert za["labels"].tolist() == [0, 1, 2, 3, 4, 5]


def test_labels_temperature_and_topk(tmp_path, trained_run, mnist_dir):
    ckpt = trained_run("pixelcnn_mnist") / "checkpoints" / "last.ckpt"
    out = sample(_cfg(tmp_path, ckpt, "num_samples=3", "labels=7", "sampling.temperature=0.5", "sampling.top_k=5"))
    assert np.load(out["npz"])["labels"].tolist() == [7, 7, 7]


def test_prefix_completion_keeps_real_prefix(tmp_path, trained_run, mnist_dir):
    from latentgen.sampling.from_checkpoint import load_prior, real_prefix_grids

    ckpt = trained_run("pixelcnn_mnist") / "checkpoints" / "last.ckpt"
    out = sample(_cfg(tmp_path, ckpt, "num_samples=4", "prefix.enabled=true", "prefix.fraction=0.5"))
    samples = np.load(out["npz"])["samples"]
    real, _ = real_prefix_grids(load_prior(str(ckpt)), 4, "test", str(data_dir()))
    assert np.array_equal(samples[:, :4], real[:, :4].numpy())  # top 4 of 7 rows kept


def test_options_that_do_not_apply_are_rejected(tmp_path, trained_run, mnist_dir):
    ckpt = trained_run("pixelcnn_mnist") / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"\['num_inference_steps'\] do not apply to PixelCNNPrior"):
        sample(_cfg(tmp_path, ckpt, "num_samples=2", "sampling.num_inference_steps=10"))


def test_stage1_checkpoint_is_refused(tmp_path, trained_run, mnist_dir):
    ckpt = trained_run("vqvae_mnist") / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="not a stage-2 prior"):
        sample(_cfg(tmp_path, ckpt, "num_samples=2"))
