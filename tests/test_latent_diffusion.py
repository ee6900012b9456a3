"""Latent DDPM stage: scale factor, EMA and sampling from a checkpoint alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latentgen.models.latent_diffusion import LatentDiffusion
from latentgen.sample import sample
from latentgen.stages.latent_cache import load_split
from latentgen.train import train


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory, mnist_dir):
    from .conftest import compose_train

    tmp = tmp_path_factory.mktemp("ldm")
    cfg = compose_train(["+experiment=ldm_mnist", "debug=limit", "test=false",
                         "model.base_channels=32", "model.num_inference_steps=5", "model.num_sample_images=10"], tmp)
    _, objects = train(cfg)
    return cfg, objects


def test_scale_factor_from_cache_round_trips_through_checkpoint(ldm_run):
    cfg, objects = ldm_run
    model = objects["model"]
    z = np.asarray(load_split(model.cache_dir, "train")["latents"], dtype=np.float32)
    expected = 1.0 / float(torch.from_numpy(z).std())
    assert model.scale_factor.item() == pytest.approx(expected, rel=1e-4)
    assert abs(model.scale_factor.item() - 1.0) > 1e-3
    loaded = LatentDiffusion.load_from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
                                                  map_location="cpu")
    assert loaded.scale_factor.item() == pytest.approx(model.scale_factor.item(), rel=0, abs=0)


def test_ema_weights_are_saved_and_differ_from_online_weights(ldm_run):
    cfg, _ = ldm_run
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    sd = ckpt["state_dict"]
    ema_keys = [k for k in sd if k.startswith("ema_net.")]
    assert ema_keys
    diffs = [not torch.equal(sd[k], sd["net." + k[len("ema_net."):]]) for k in ema_keys if sd[k].is_floating_point()]
    assert any(diffs)


def test_checkpoint_alone_samples_images_with_ddpm_and_ddim(ldm_run):
    cfg, _ = ldm_run
    model = LatentDiffusion.load_from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
                                                 map_location="cpu")
    g = torch.Generator().manual_seed(0)
    a = model.sample_images(3, labels=[1, 2, 3], generator=g, sampler="ddim", num_inference_steps=4)
    b = model.sample_images(3, labels=[1, 2, 3], generator=torch.Generator().manual_seed(0), sampler="ddim",
                            num_inference_steps=4)
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, b)
    c = model.sample_images(2, generator=g, sampler="ddpm", num_inference_steps=10, guidance_scale=2.0)
    assert c.shape == (2, 1, 28, 28) and 0 <= c.min() and c.max() <= 1
    assert list((Path(cfg.paths.output_dir) / "images").glob("samples_step*.png"))


def test_latent_choice_is_validated():
    with pytest.raises(ValueError, match="latent='mid'"):
        LatentDiffusion(latent_channels=4, grid_shape=[7, 7], latent="mid")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "unipc", "euler", "heun"])
def test_sampler_choice_round_trips_through_the_sample_cli(ldm_run, tmp_path, sampler):
    from .test_sample import _cfg

    cfg, _ = ldm_run
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    model = LatentDiffusion.load_from_checkpoint(ckpt, map_location="cpu").eval()
    steps = 3
    out = sample(_cfg(tmp_path, ckpt, "num_samples=2", "batch_size=2", "seed=5", f"sampling.sampler={sampler}",
                      f"sampling.num_inference_steps={steps}"))
    got = np.load(out["npz"])["samples"]
    direct = model.sample_latents(2, model.labels_for(2), generator=torch.Generator().manual_seed(5),
                                  sampler=sampler, num_inference_steps=steps)
    np.testing.assert_allclose(got, direct.numpy(), rtol=1e-5, atol=1e-5)
    other = "ddim" if sampler != "ddim" else "dpmpp_2m"
    assert not np.allclose(got, model.sample_latents(2, model.labels_for(2), generator=torch.Generator().manual_seed(5),
                                                     sampler=other, num_inference_steps=steps).numpy())


def test_unknown_sampler_is_named_with_the_choices(ldm_run, tmp_path):
    from .test_sample import _cfg

    cfg, _ = ldm_run
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="dpm_fast.*ddpm, ddim, dpmpp_2m, unipc, euler, heun"):
        sample(_cfg(tmp_path, ckpt, "num_samples=2", "sampling.sampler=dpm_fast"))
    with pytest.raises(ValueError, match="eta.*ddim"):
        sample(_cfg(tmp_path, ckpt, "num_samples=2", "sampling.sampler=unipc", "sampling.eta=1.0"))
