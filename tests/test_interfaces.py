"""One interface per concept: optimizer/schedule configs, discrete diffusion processes, guidance and labels,
and checkpoints written before these interfaces."""

from __future__ import annotations

import functools
import math

import hydra
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import ListConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentgen.diffusion.absorbing import AbsorbingDiffusion
from latentgen.diffusion.uniform import UniformDiscreteDiffusion
from latentgen.models.base import param_groups, warmup_schedule
from latentgen.models.discrete_diffusion import DiscreteDiffusionPrior
from latentgen.models.latent_diffusion import LatentDiffusion
from latentgen.models.vqvae import VQVAE
from latentgen.nets.transformer import BidirectionalTransformer
from latentgen.stages.checkpoints import load_model
from latentgen.stages.stage1 import load_stage1
from latentgen.utils.checkpoint_io import load_checkpoint
from latentgen.utils.compose import compose_config

K, GRID = 16, [4, 4]
TINY_VQVAE = dict(hidden_channels=16, res_channels=8, num_res_blocks=1, latent_dim=8, num_codes=K, num_log_images=0)
TINY_NET = dict(d_model=16, n_layers=1, n_heads=2, num_sample_images=4)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
    GlobalHydra.instance().clear()


def fit_one_step(model: pl.LightningModule, data: TensorDataset, path) -> None:
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent)
    trainer.fit(model, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)


# -- optimizer and LR schedule ----------------------------------------------------------------------
class _Parts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear, self.conv = nn.Linear(4, 4), nn.Conv2d(2, 2, 3)
        self.norms = nn.ModuleList([nn.LayerNorm(4), nn.GroupNorm(1, 2), nn.BatchNorm2d(2)])
        self.emb, self.pos_emb = nn.Embedding(5, 4), nn.Parameter(torch.zeros(1, 3, 4))
        self.frozen = nn.Linear(4, 4).requires_grad_(False)


def test_param_groups_decay_only_weight_matrices():
    parts = _Parts()
    decay, no_decay = param_groups(parts, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(parts.linear.weight), id(parts.conv.weight)}
    skipped = [parts.linear.bias, parts.conv.bias, parts.emb.weight, parts.pos_emb,
               *(p for norm in parts.norms for p in norm.parameters())]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in skipped}
    net = BidirectionalTransformer(K, 6, num_classes=3, d_model=8, n_layers=1, n_heads=2)
    decay, no_decay = param_groups(net, 0.01)
    assert all(p.ndim == 2 for p in decay["params"])
    assert {id(net.tok_emb.weight), id(net.cls_emb.weight), id(net.pos_emb)} <= {id(p) for p in no_decay["params"]}


def test_warmup_schedule_warms_up_then_decays():
    def factors(**kwargs) -> list[float]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_schedule(opt, total_steps=14, **kwargs)
        out = []
        for _ in range(14):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    cosine = factors(warmup_steps=4)
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(cosine[4:], cosine[5:], strict=False)) and cosine[-1] > 0.05
    assert factors(warmup_steps=2, decay="constant") == [0.5] + [1.0] * 13
    assert math.isclose(factors(decay="cosine")[0], 1.0)
    with pytest.raises(ValueError, match="model.scheduler.decay=constant or cosine"):
        factors(decay="linear")


def test_model_configs_pass_optimizer_and_schedule_as_configs_to_the_model():
    cfg = compose_config(["+experiment=transformer_mnist", "model.optimizer.lr=3e-4",
                          "model.scheduler.decay=constant", "model.num_tokens=16", "model.grid_shape=[4,4]"])
    model = hydra.utils.instantiate(cfg.model, _convert_="all", d_model=16, n_layers=1, n_heads=2)
    assert model.hparams.optimizer == {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-4,
                                       "weight_decay": 0.01, "betas": [0.9, 0.95]}
    assert model.hparams.scheduler["decay"] == "constant" and "lr" not in model.hparams
    optim = model.configure_optimizers()
    decay, no_decay = optim["optimizer"].param_groups
    assert isinstance(optim["optimizer"], torch.optim.AdamW) and decay["initial_lr"] == 3e-4 and decay["betas"] == (0.9, 0.95)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    with pytest.raises(ConfigCompositionException, match="lr"):
        compose_config(["+experiment=transformer_mnist", "model.lr=3e-4"])  # the old key is gone


def test_optimizer_arguments_fail_with_one_clear_error():
    with pytest.raises(ValueError, match=r"model.optimizer.lr=3e-4"):
        VQVAE(**TINY_VQVAE, optimizer={"_target_": "torch.optim.AdamW", "lr": 0.0})
    with pytest.raises(TypeError, match="_recursive_: false"):
        VQVAE(**TINY_VQVAE, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    with pytest.raises(TypeError, match=r"unexpected arguments \['lr_shedule'\]"):
        VQVAE(**TINY_VQVAE, lr_shedule="cosine")
    with pytest.raises(TypeError, match="not both"):
        VQVAE(**TINY_VQVAE, lr=1e-3, optimizer={"_target_": "torch.optim.AdamW"})


def test_optimizer_numbers_reach_the_checkpoint_as_plain_data(tmp_path):
    """NumPy and OmegaConf values in the configs would make the optimizer state unreadable with weights_only."""
    old_style = VQVAE(**TINY_VQVAE, lr=np.float64(1e-3), betas=ListConfig([0.9, 0.99]))
    new_style = VQVAE(**TINY_VQVAE, optimizer={"_target_": "torch.optim.AdamW", "lr": np.float32(1e-3),
                                               "betas": OmegaConf.create([0.9, 0.99])})
    for i, model in enumerate((old_style, new_style)):
        fit_one_step(model, TensorDataset(torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)), tmp_path / f"{i}.ckpt")
        ckpt = load_checkpoint(tmp_path / f"{i}.ckpt", purpose="test")
        assert type(ckpt["hyper_parameters"]["optimizer"]["lr"]) is float
        assert type(ckpt["optimizer_states"][0]["param_groups"][0]["lr"]) is float


# -- checkpoints written before the optimizer configs and the num_inference_steps name -------------
def to_old_format(hparams: dict) -> dict:
    """The hyperparameters as checkpoints stored them before: separate optimizer arguments, ``num_steps``."""
    old = {k: v for k, v in hparams.items() if k not in ("optimizer", "scheduler", "num_inference_steps")}
    opt, sched = hparams["optimizer"], hparams["scheduler"]
    old.update(lr=opt["lr"], weight_decay=opt["weight_decay"], betas=tuple(opt["betas"]),
               warmup_steps=sched["warmup_steps"], lr_schedule=sched["decay"])
    if "num_inference_steps" in hparams:
        old["num_steps"] = hparams["num_inference_steps"]
    if hparams.get("stage1_hparams"):
        old["stage1_hparams"] = to_old_format(hparams["stage1_hparams"])
    return old


def test_old_format_checkpoints_load_for_sampling_and_as_stage1(tmp_path):
    torch.manual_seed(0)
    adamw = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 2e-3, "weight_decay": 0.0, "betas": [0.9, 0.99]}
    warmup = {"_target_": "latentgen.models.base.warmup_schedule", "_partial_": True, "warmup_steps": 3,
              "decay": "constant"}
    vqvae = VQVAE(**TINY_VQVAE, downsample=2, optimizer=adamw, scheduler=warmup)
    fit_one_step(vqvae, TensorDataset(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)), tmp_path / "vq.ckpt")
    prior = DiscreteDiffusionPrior(K, GRID, num_classes=3, process="uniform", num_inference_steps=5, **TINY_NET,
                                   stage1_hparams=dict(vqvae.hparams), optimizer=adamw, scheduler=warmup)
    prior.attach_stage1(vqvae)
    fit_one_step(prior, TensorDataset(torch.randint(0, K, (8, *GRID)), torch.randint(0, 3, (8,))), tmp_path / "p.ckpt")
    for name in ("vq", "p"):
        ckpt = torch.load(tmp_path / f"{name}.ckpt", weights_only=True)
        ckpt["hyper_parameters"] = to_old_format(ckpt["hyper_parameters"])
        torch.save(ckpt, tmp_path / f"{name}_old.ckpt")

    old, new = load_model(tmp_path / "p_old.ckpt"), load_model(tmp_path / "p.ckpt")
    assert old.sampling["num_inference_steps"] == 5 and "num_steps" not in old.hparams
    assert old.hparams.optimizer == {**adamw, "betas": (0.9, 0.99)} and old.hparams.scheduler == warmup
    assert old.stage1.hparams.optimizer["lr"] == 2e-3 and "lr" not in old.stage1.hparams
    draw = [m.sample_images(3, generator=torch.Generator().manual_seed(1)) for m in (old, new)]
    assert torch.equal(*draw)
    stage1 = load_stage1(tmp_path / "vq_old.ckpt").model
    assert stage1.hparams.scheduler == warmup
    assert torch.equal(stage1.state_dict()["quantizer.codebook"], vqvae.state_dict()["quantizer.codebook"])


# -- discrete diffusion: one interface, the module delegates ----------------------------------------
@pytest.mark.parametrize("process", [AbsorbingDiffusion(K, K), UniformDiscreteDiffusion(K)])
def test_discrete_processes_share_training_loss_and_sampler(process):
    net = BidirectionalTransformer(K, 6, num_classes=3, d_model=16, n_layers=1, n_heads=2)
    x0, labels = torch.randint(0, K, (4, 6)), torch.tensor([0, 1, 2, 3])
    loss, acc = process.training_loss(net, x0, labels)
    loss.backward()
    assert loss.ndim == 0 and loss > 0 and 0 <= acc <= 1 and net.head.weight.grad is not None
    sampler = process.make_sampler(num_inference_steps=3, temperature=1.0, randomness=0.5, guidance_scale=2.0)
    tokens = sampler.sample(net, 4, 6, labels=labels[:4] % 3, null_label=net.null_label,
                            generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (4, 6) and 0 <= tokens.min() and tokens.max() < K


def test_discrete_prior_delegates_to_its_process():
    model = DiscreteDiffusionPrior(K, GRID, num_classes=3, process="absorbing", **TINY_NET).eval()
    model.process = UniformDiscreteDiffusion(K, "linear")  # any process with the interface
    labels = torch.tensor([0, 1, 2])
    got = model.sample_latents(3, labels, generator=torch.Generator().manual_seed(2), num_inference_steps=4)
    sampler = model.process.make_sampler(num_inference_steps=4, temperature=1.0, randomness=1.0, guidance_scale=1.0)
    want = sampler.sample(model.net, 3, 16, labels=labels, null_label=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(got, want.reshape(3, *GRID))


# -- guidance and labels ----------------------------------------------------------------------------
def test_guidance_on_an_unconditional_prior_is_refused_when_built_and_when_sampled():
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs class labels"):
        LatentDiffusion(8, GRID, num_classes=None, base_channels=16, num_res_blocks=1, guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs class labels"):
        DiscreteDiffusionPrior(K, GRID, num_classes=None, guidance_scale=2.0, **TINY_NET)
    model = DiscreteDiffusionPrior(K, GRID, num_classes=None, **TINY_NET)
    assert model.sample_latents(2, generator=torch.Generator().manual_seed(0)).shape == (2, *GRID)
    with pytest.raises(ValueError, match="use guidance_scale=1.0"):
        model.sample_latents(2, guidance_scale=3.0)


def test_prior_labels_go_through_one_check():
    model = DiscreteDiffusionPrior(K, GRID, num_classes=3, **TINY_NET)
    assert model.labels_for(4).tolist() == [0, 1, 2, 0] and model.labels_for(2, 1).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got range \[0, 5\]; use class ids 0..2"):
        model.labels_for(2, [0, 5])
    with pytest.raises(ValueError, match=r"labels must have shape \[3\]"):
        model.labels_for(3, [0, 1])
    unconditional = DiscreteDiffusionPrior(K, GRID, num_classes=None, **TINY_NET)
    assert unconditional.labels_for(2) is None
    with pytest.raises(ValueError, match="model is unconditional"):
        unconditional.labels_for(2, 1)
