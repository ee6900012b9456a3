"""The stage-1 family hand-off: class recorded and rebuilt, continuous stage 1s have no tokens, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from latentgen.models.stage1_base import (
    DEFAULT_STAGE1_CLASS,
    FrozenStage1Module,
    Stage1Module,
    build_stage1,
    stage1_class,
)
from latentgen.models.vqvae import VQVAE
from latentgen.stages.latent_cache import build_latent_cache, load_split
from latentgen.stages.stage1 import Stage1, check_stage1_fits, load_stage1

TINY_VQ = dict(hidden_channels=8, res_channels=4, num_res_blocks=1, latent_dim=4, num_codes=8, base_channels=4)


class ContinuousToy(Stage1Module):
    """A continuous stage 1 small enough to reason about: average-pool by 4, one 1x1 conv each way."""

    discrete = False
    family_label = "toy continuous autoencoder"

    def __init__(self, in_channels: int = 1, latent_dim: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.latent_dim = latent_dim
        self.enc = nn.Conv2d(in_channels, latent_dim, 1)
        self.dec = nn.Conv2d(latent_dim, in_channels, 1)

    def encode(self, x):
        self.check_images(x)
        return self.enc(nn.functional.avg_pool2d(x, 4))

    def decode_latents(self, z):
        return torch.sigmoid(self.dec(nn.functional.interpolate(z, scale_factor=4)))

    def latent_grid(self, spatial):
        return tuple(s // 4 for s in spatial)


def test_old_hparams_without_a_class_rebuild_a_vqvae():
    model = build_stage1(TINY_VQ)
    assert type(model) is VQVAE and model.discrete and model.num_codes == 8
    assert stage1_class(None) is VQVAE and stage1_class(DEFAULT_STAGE1_CLASS) is VQVAE


@pytest.mark.parametrize(("name", "message"), [
    ("os.system", "not a latentgen model"),
    ("latentgen.models.classifier.Classifier", "not a stage-1 model class"),
    ("latentgen.models.nothing.Here", "does not exist in this latentgen version"),
])
def test_only_latentgen_stage1_classes_are_rebuilt(name, message):
    with pytest.raises(ValueError, match=message):
        stage1_class(name)


def test_unknown_hyperparameters_name_the_class():
    with pytest.raises(ValueError, match="VQVAE does not accept"):
        build_stage1({**TINY_VQ, "codebook_flavour": "mint"})


def test_frozen_stage1_is_rebuilt_from_the_recorded_class_and_refuses_another():
    # a class outside the latentgen package is never imported from a checkpoint
    with pytest.raises(ValueError, match="not a latentgen model"):
        FrozenStage1Module({"latent_dim": 3}, {"class": f"{__name__}.ContinuousToy"})
    holder = FrozenStage1Module(TINY_VQ, {"class": DEFAULT_STAGE1_CLASS})
    assert type(holder.stage1) is VQVAE and not holder.stage1.training
    with pytest.raises(ValueError, match="built for a VQVAE stage 1 but got a ContinuousToy"):
        holder.attach_stage1(ContinuousToy())


def test_a_continuous_stage1_refuses_the_token_api_with_the_fix():
    toy = ContinuousToy()
    x = torch.rand(2, 1, 8, 8)
    assert toy.reconstruct(x).shape == x.shape and toy.num_codes is None
    for call in (lambda: toy.quantize(toy.encode(x)), lambda: toy.encode_to_indices(x),
                 lambda: toy.decode_code(torch.zeros(2, 2, 2, dtype=torch.long))):
        with pytest.raises(ValueError, match="continuous latent space and no codebook: use a VQ stage 1"):
            call()
    with pytest.raises(ValueError, match="built for 1-channel images got a batch of shape \\(2, 3, 8, 8\\)"):
        toy.encode(torch.rand(2, 3, 8, 8))


def test_stage1_fit_checks_run_on_classes(tmp_path):
    prior = OmegaConf.create({"task_name": "transformer_mnist", "data": {"field": "tokens"},
                              "model": {"_target_": "latentgen.models.autoregressive_priors.TransformerPrior"}})
    check_stage1_fits(prior, VQVAE, "stage1.experiment=vqvae_mnist")  # tokens: fine
    with pytest.raises(ValueError, match="the prior transformer_mnist .* needs discrete tokens, but stage 1 is a "
                                         "toy continuous autoencoder"):
        check_stage1_fits(prior, ContinuousToy, "stage1.experiment=toy")
    ldm = OmegaConf.create({"task_name": "ldm_mnist", "data": {"field": "latents"}, "model": {}})
    check_stage1_fits(ldm, ContinuousToy, "stage1.experiment=toy")  # a continuous prior on continuous latents
    with pytest.raises(ValueError, match="is a Classifier, not a stage-1 model: set stage1.experiment"):
        from latentgen.models.classifier import Classifier

        check_stage1_fits(ldm, Classifier, "stage1.experiment=classifier_mnist")


def test_a_classifier_experiment_as_stage1_is_refused_before_training(tmp_path, mnist_dir):
    from latentgen.train import train

    from .conftest import compose_train

    cfg = compose_train(["+experiment=ldm_mnist", "debug=fdr", "stage1.experiment=classifier_mnist"], tmp_path)
    with pytest.raises(ValueError, match="is a Classifier, not a stage-1 model"):
        train(cfg)
    assert not (Path(cfg.paths.artifact_dir) / "stage1").exists()


def test_continuous_latent_cache_has_latents_and_no_tokens(tmp_path, mnist_dir):
    from .conftest import data_dir

    torch.manual_seed(0)
    toy = ContinuousToy().eval()
    ckpt = tmp_path / "toy.ckpt"
    torch.save({"state_dict": toy.state_dict()}, ckpt)
    data_cfg = OmegaConf.create({"_target_": "latentgen.data.datamodules.MNISTDataModule", "data_dir": str(data_dir()),
                                 "download": False, "batch_size": 64, "num_workers": 0})
    stage1 = Stage1(model=toy, ckpt_path=ckpt, sha256="0" * 64)
    cache = build_latent_cache(stage1, data_cfg, tmp_path / "artifacts", batch_size=50, max_items=100)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["stage1"]["class"] == f"{__name__}.ContinuousToy"
    assert meta["num_codes"] is None and meta["grid_shape"] == [7, 7] and meta["latent_dim"] == 2
    assert not list(cache.glob("*_tokens.npy"))
    split = load_split(cache, "val")
    assert set(split) == {"latents", "labels"} and split["latents"].shape == (100, 2, 7, 7)
    x = torch.from_numpy(np.array(split["latents"][:3]))
    assert x.abs().sum() > 0


def test_stage1_checkpoint_records_its_class_for_the_prior(tmp_path, mnist_dir):
    from latentgen.train import train

    from .conftest import TINY, compose_train

    cfg = compose_train(["+experiment=vqvae_mnist", "debug=fdr", *TINY], tmp_path)
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = False
        cfg.trainer.max_steps = 2
        cfg.trainer.limit_val_batches = 1
        cfg.test = False
    _, objects = train(cfg)
    stage1 = load_stage1(objects["trainer"].checkpoint_callback.last_model_path)
    assert stage1.describe()["class"] == DEFAULT_STAGE1_CLASS
    assert type(stage1.model) is VQVAE and not any(p.requires_grad for p in stage1.model.parameters())
