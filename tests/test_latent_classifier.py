"""Noise-conditional latent classifier: the guidance gradient, its checks against a latent DDPM, training
on the latent cache, its checkpoint, and how it is found for an LDM."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from latentgen.diffusion.pipeline import classifier_guided
from latentgen.diffusion.schedulers import make_scheduler
from latentgen.metrics.registry import eval_spec
from latentgen.models.latent_classifier import LatentClassifier
from latentgen.models.latent_diffusion import LatentDiffusion
from latentgen.models.vqvae import VQVAE
from latentgen.sampling.from_checkpoint import load_prior
from latentgen.stages.artifacts import sha256_file
from latentgen.stages.guidance_classifier import (
    compose_classifier_run,
    load_guidance_classifier,
    resolve_guidance_classifier,
)
from latentgen.stages.identity import artifact_key
from latentgen.train import train
from latentgen.utils.checkpoint_io import CheckpointError

C, GRID, K = 4, [4, 4], 3
TINY_CLF = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1)
TINY_LDM = dict(base_channels=16, num_res_blocks=1, attention_heads=2, prediction_type="v_prediction",
                num_sample_images=4)
TINY_VQVAE = dict(hidden_channels=16, res_channels=8, num_res_blocks=1, latent_dim=C, num_codes=8, num_log_images=0)
MNIST = "latentgen.data.datamodules.MNISTDataModule"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def stage1_info(sha: str = "a" * 64, target: str = MNIST, ckpt_path: str | None = None, config_hash=None) -> dict:
    return {"ckpt_path": ckpt_path or f"/store/stage1/{sha[:4]}/model.ckpt", "sha256": sha,
            "config_hash": config_hash, "experiment": "vqvae_mnist",
            "data": {"target": target, "val_size": 5000, "split_seed": 0}}


def tiny_ldm(**kw) -> LatentDiffusion:
    args = {"latent_channels": C, "grid_shape": GRID, "num_classes": K, "stage1_info": stage1_info(), **TINY_LDM, **kw}
    return LatentDiffusion(**args).eval()


def tiny_classifier(**kw) -> LatentClassifier:
    args = {"latent_channels": C, "grid_shape": GRID, "num_classes": K, "stage1_info": stage1_info(), **TINY_CLF, **kw}
    return LatentClassifier(**args).eval()


@pytest.fixture(scope="module")
def class_means() -> torch.Tensor:
    return 1.5 * torch.randn(K, C, *GRID, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trained(class_means) -> LatentClassifier:
    """A classifier fitted for a few steps to latents scattered around one mean per class."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: the one_thread fixture is not active yet
    torch.manual_seed(0)
    clf = tiny_classifier().train()
    opt = torch.optim.Adam(clf.net.parameters(), lr=3e-3)
    for _ in range(40):
        y = torch.randint(0, K, (64,))
        x0 = class_means[y] + 0.5 * torch.randn(64, C, *GRID)
        t = torch.randint(0, 1000, (64,))
        loss = F.cross_entropy(clf(clf.noise_scheduler.add_noise(x0, torch.randn_like(x0), t), t), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    torch.set_num_threads(threads)
    return clf.eval()


def noisy_batch(class_means, t: torch.Tensor, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(t)) % K
    x0 = class_means[y] + 0.5 * torch.randn(len(t), C, *GRID, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return make_scheduler("ddpm", 1000, "cosine").add_noise(x0, noise, t), y


# -- the guidance gradient ---------------------------------------------------------------------------
def test_trained_classifier_beats_chance_at_low_noise(trained, class_means):
    t = torch.full((60,), 100)
    x_t, y = noisy_batch(class_means, t)
    with torch.no_grad():
        acc = (trained(x_t, t).argmax(-1) == y).float().mean()
    assert acc > 0.9


def test_step_along_grad_log_prob_raises_log_prob(trained, class_means):
    t = torch.arange(500, 980, 40)  # where log p is not saturated at 0
    x_t, y = noisy_batch(class_means, t)
    with torch.no_grad():  # as the sampler calls it
        grad = trained.grad_log_prob(x_t, t, y)
        step = 0.05 * grad / grad.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        before = trained.log_prob(x_t, t, y)
        up, down = trained.log_prob(x_t + step, t, y), trained.log_prob(x_t - step, t, y)
    assert grad.shape == x_t.shape and grad.dtype == x_t.dtype
    assert (up > before).all() and (down < before).all()
    # finite differences agree with the gradient
    fd = (up - down) / 2
    first_order = (grad * step).flatten(1).sum(1)
    assert torch.allclose(fd, first_order, rtol=0.1, atol=1e-5)
    # each latent's gradient is its own: the batch does not mix
    single = torch.cat([trained.grad_log_prob(x_t[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(3)])
    assert torch.allclose(grad[:3], single, atol=1e-6)
    # inference mode and float64 latents; the weights get no gradient
    with torch.inference_mode():
        grad64 = trained.grad_log_prob(x_t.double(), t, y)
    assert grad64.dtype == torch.float64 and torch.allclose(grad64.float(), grad, atol=1e-6)
    assert all(p.grad is None for p in trained.parameters())


def test_one_guided_ddim_step_raises_log_prob_of_the_next_latent(trained, class_means):
    scheduler = make_scheduler("ddim", 1000, "cosine", "v_prediction")
    scheduler.set_timesteps(10)
    t, t_next = int(scheduler.timesteps[2]), int(scheduler.timesteps[3])  # 799 -> 699: not yet certain
    tb = torch.full((30,), t)
    x_t, y = noisy_batch(class_means, tb, seed=2)
    out = torch.zeros_like(x_t)  # any denoiser: the guided step adds the same shift to it
    with torch.no_grad():
        grad = trained.grad_log_prob(x_t, tb, y)
        guided_out = classifier_guided(scheduler, out, x_t, tb, grad, 2.0)
        plain = scheduler.step(out, t, x_t).prev_sample
        guided = scheduler.step(guided_out, t, x_t).prev_sample
        tn = torch.full((30,), t_next)
        gain = trained.log_prob(guided, tn, y) - trained.log_prob(plain, tn, y)
    assert gain.mean() > 0 and (gain > 0).float().mean() > 0.8


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("num_classes", [None, K])
def test_ldm_samples_with_classifier_guidance(trained, num_classes, sampler):
    ldm = tiny_ldm(num_classes=num_classes)
    torch.manual_seed(3)
    with torch.no_grad():  # a denoiser that is not the identity
        for p in ldm.ema_net.out.parameters():
            p.normal_(0, 0.05)
    labels = torch.arange(12) % K
    draw = dict(sampler=sampler, num_inference_steps=8)
    plain = ldm.sample_latents(12, labels, generator=torch.Generator().manual_seed(0), **draw)
    guided = ldm.sample_latents(12, labels, generator=torch.Generator().manual_seed(0), classifier=trained,
                                classifier_scale=3.0, **draw)
    assert guided.shape == (12, C, *GRID) and torch.isfinite(guided).all()
    t0 = torch.zeros(12, dtype=torch.long)
    with torch.no_grad():
        gain = trained.log_prob(guided * ldm.scale_factor, t0, labels) - trained.log_prob(plain * ldm.scale_factor, t0, labels)
    assert gain.mean() > 0.5


# -- check_matches: a classifier for another DDPM is refused ------------------------------------------
def test_matching_classifier_is_accepted():
    clf, ldm = tiny_classifier(), tiny_ldm()
    clf.scale_factor.fill_(1.5)
    ldm.scale_factor.fill_(1.5 * (1 + 5e-5))
    clf.check_matches(ldm)


MISMATCHES = {
    "stage 1": ({}, {"stage1_info": stage1_info("b" * 64)},
                r"stage 1: the classifier was trained on the latents of stage-1 checkpoint aaaaaaaaaaaa \(/store/stage1/aaaa"
                r"/model.ckpt\), the LDM on bbbbbbbbbbbb"),
    "data": ({}, {"stage1_info": stage1_info(target="latentgen.data.datamodules.FashionMNISTDataModule")},
             r"data: the classifier's latent cache encodes .*MNISTDataModule, the LDM's .*FashionMNISTDataModule"),
    "latent": ({"latent": "post"}, {},
               r"the classifier sees the 'post' latents, the LDM diffuses the 'pre' ones; train the classifier with "
               r"model.latent=pre"),
    "timesteps": ({"num_train_timesteps": 500}, {},
                  r"the classifier has num_train_timesteps=500, the LDM num_train_timesteps=1000; train the "
                  r"classifier with model.num_train_timesteps=1000"),
    "schedule": ({"beta_schedule": "linear"}, {},
                 r"the classifier has beta_schedule=linear, the LDM beta_schedule=cosine; train the classifier with "
                 r"model.beta_schedule=cosine"),
    "channels": ({}, {"latent_channels": 8}, r"the classifier takes latents \[4, 4, 4\], the LDM makes \[8, 4, 4\]"),
    "grid": ({}, {"grid_shape": [5, 5]}, r"the classifier takes latents \[4, 4, 4\], the LDM makes \[4, 5, 5\]"),
    "classes": ({}, {"num_classes": 5}, r"the classifier has 3 classes, the LDM 5; train the classifier with "
                                        r"model.num_classes=5"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_check_matches_refuses_each_mismatch(case):
    clf_kw, ldm_kw, message = MISMATCHES[case]
    clf, ldm = tiny_classifier(**clf_kw), tiny_ldm(**ldm_kw)
    with pytest.raises(ValueError, match=message) as err:
        clf.check_matches(ldm)
    assert "cannot guide this latent DDPM" in str(err.value) and "guidance_classifier.ckpt_path" in str(err.value)
    assert str(err.value).count("\n  - ") == 1  # only the one mismatch is named


def test_check_matches_refuses_another_scale_factor():
    clf, ldm = tiny_classifier(), tiny_ldm()
    clf.scale_factor.fill_(0.5)
    ldm.scale_factor.fill_(0.5 * (1 + 3e-4))
    with pytest.raises(ValueError, match=r"scale factor: the classifier's latents are scaled by 0.5, the LDM's by "
                                         r"0.50015 .*train the classifier with the LDM's latent_cache settings"):
        clf.check_matches(ldm)


def test_check_matches_compares_stage1_weights_when_no_sha_is_recorded():
    stage1 = VQVAE(**TINY_VQVAE)
    clf = tiny_classifier(stage1_info=None, stage1_hparams=dict(stage1.hparams))
    ldm = tiny_ldm(stage1_info=None, stage1_hparams=dict(stage1.hparams))
    clf.attach_stage1(stage1)
    ldm.attach_stage1(stage1)
    clf.check_matches(ldm)
    ldm.attach_stage1(VQVAE(**TINY_VQVAE))  # other initial weights
    with pytest.raises(ValueError, match="stage-1 weights differ from the LDM's"):
        clf.check_matches(ldm)
    with pytest.raises(ValueError, match=r"cannot tell whether they share one \(the LDM has a stage 1 and the "
                                         r"classifier none\)"):
        tiny_classifier(stage1_info=None).check_matches(ldm)


def test_a_pinned_stage1_must_be_the_resolved_one():
    with pytest.raises(ValueError, match=r"model.stage1_sha256=cccc.* pins the stage 1 .* resolved stage 1 aaaa"):
        tiny_classifier(stage1_sha256="c" * 64)
    assert tiny_classifier(stage1_sha256="a" * 64).hparams.stage1_sha256 == "a" * 64


# -- its checkpoint: a guidance classifier, not a prior ------------------------------------------------
def fit_one_step(model: pl.LightningModule, data: TensorDataset, path) -> None:
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent)
    trainer.fit(model, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)


def test_checkpoint_loads_as_guidance_classifier_and_is_refused_as_prior(tmp_path, class_means):
    data = TensorDataset(class_means.repeat(2, 1, 1, 1), torch.arange(2 * K) % K)
    clf, ldm = tiny_classifier(), tiny_ldm(stage1_hparams=TINY_VQVAE, num_inference_steps=2)
    ldm.attach_stage1(VQVAE(**TINY_VQVAE))  # it decodes a sample grid at the end of training
    fit_one_step(clf, data, tmp_path / "clf.ckpt")
    fit_one_step(ldm, data, tmp_path / "ldm.ckpt")

    loaded = load_guidance_classifier(tmp_path / "clf.ckpt")
    assert isinstance(loaded, LatentClassifier) and loaded.ckpt_path == tmp_path / "clf.ckpt"
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    t, y = torch.tensor([10, 500]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.allclose(loaded.log_prob(class_means[:2], t, y), clf.eval().log_prob(class_means[:2], t, y))

    spec = OmegaConf.create({"ckpt_path": str(tmp_path / "clf.ckpt")})
    assert resolve_guidance_classifier(spec, None, ldm).ckpt_path == tmp_path / "clf.ckpt"
    with pytest.raises(ValueError, match=rf"(?s)latent classifier {tmp_path / 'clf.ckpt'} cannot guide .*num_classes=5"):
        resolve_guidance_classifier(spec, None, tiny_ldm(num_classes=5))

    with pytest.raises(CheckpointError, match=r"holds a LatentClassifier, not a stage-2 prior: a latent classifier "
                                              r"only guides a latent DDPM.*guidance_classifier.ckpt_path="):
        load_prior(str(tmp_path / "clf.ckpt"))
    with pytest.raises(ValueError, match="LatentClassifier cannot be evaluated"):
        eval_spec(loaded)
    with pytest.raises(CheckpointError, match="holds a LatentDiffusion, not a latent classifier"):
        load_guidance_classifier(tmp_path / "ldm.ckpt")


# -- found for an LDM: its stage 1 is part of the key ----------------------------------------------------
def test_classifier_run_is_pinned_to_the_ldms_stage1_and_schedule(tmp_path, compose_cfg):
    paths = compose_cfg().paths
    files = []
    for i in range(2):
        files.append(tmp_path / f"s1_{i}.ckpt")
        files[-1].write_bytes(f"stage 1 number {i}".encode())
    spec = OmegaConf.create({"experiment": None, "overrides": ["trainer.max_epochs=1"], "debug": None,
                             "logger": "csv", "auto_train": True, "ckpt_path": None})

    def run(path, **kw):
        ldm = tiny_ldm(stage1_info=stage1_info(sha256_file(path), ckpt_path=str(path)), **kw)
        return compose_classifier_run(spec, paths, ldm)[0]

    cfg = run(files[0], beta_schedule="linear")
    assert cfg.task_name == "latent_classifier_mnist" and cfg.stage1.ckpt_path == str(files[0].resolve())
    assert cfg.model.stage1_sha256 == sha256_file(files[0]) and cfg.model.beta_schedule == "linear"
    assert cfg.trainer.max_epochs == 1 and cfg.model.latent == "pre"
    assert artifact_key(run(files[0])) == artifact_key(run(files[0]))
    assert artifact_key(run(files[0])) != artifact_key(run(files[1]))  # another stage 1, another classifier

    # a moved store: the stage 1 is found under its recorded key
    store = tmp_path / "logs" / "artifacts" / "stage1" / "k1"
    store.mkdir(parents=True)
    (store / "model.ckpt").write_bytes(files[1].read_bytes())
    paths.artifact_dir = str(tmp_path / "logs" / "artifacts")
    info = stage1_info(sha256_file(files[1]), ckpt_path="/gone/model.ckpt", config_hash="k1")
    cfg = compose_classifier_run(spec, paths, tiny_ldm(stage1_info=info))[0]
    assert cfg.stage1.ckpt_path == str((store / "model.ckpt").resolve())
    info["config_hash"] = None
    with pytest.raises(ValueError, match=r"stage-1 checkpoint \(SHA-256 \w{12}\) is not here \(/gone/model.ckpt\)"):
        compose_classifier_run(spec, paths, tiny_ldm(stage1_info=info))
    with pytest.raises(ValueError, match="does not record its dataset"):
        compose_classifier_run(spec, paths, tiny_ldm(stage1_info={"sha256": "a" * 64}))


# -- training on the latent cache -------------------------------------------------------------------------
def test_fast_dev_run_logs_accuracy_per_timestep_band(compose_cfg, mnist_dir, shared_log_dir):
    cfg = compose_cfg("+experiment=latent_classifier_mnist", "debug=fdr")
    cfg.paths.log_dir = str(shared_log_dir)  # shares the fdr stage 1 of the other priors' tests
    metrics, objects = train(cfg)
    model = objects["model"]
    assert isinstance(model, LatentClassifier) and objects["trainer"].fast_dev_run
    for key in ("val/loss", "val/acc", "val/acc_t0-249", "val/acc_t250-749", "val/acc_t750-999", "test/acc",
                "test/acc_t0-249"):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    assert model.stage1 is not None and model.hparams.stage1_info["sha256"]
    assert model.scale_factor.item() != 1.0 and model.latent_channels == model.stage1.latent_dim


@pytest.mark.slow
def test_guidance_classifier_is_trained_once_for_an_ldm_and_guides_it(compose_cfg, mnist_dir, shared_log_dir):
    cfg = compose_cfg("+experiment=ldm_mnist", "debug=fdr")
    cfg.paths.log_dir = str(shared_log_dir)
    _, objects = train(cfg)
    ldm = objects["model"].eval()
    spec = OmegaConf.create({"experiment": None, "overrides": [], "debug": "fdr", "logger": "csv",
                             "ckpt_path": None, "auto_train": True})
    clf = resolve_guidance_classifier(spec, cfg.paths, ldm)
    assert clf.hparams.stage1_info["sha256"] == ldm.hparams.stage1_info["sha256"]
    again = resolve_guidance_classifier(OmegaConf.merge(spec, {"auto_train": False}), cfg.paths, ldm)
    assert again.ckpt_path == clf.ckpt_path  # stored once, then reused
    labels = torch.arange(4) % 10
    z = ldm.sample_latents(4, labels, generator=torch.Generator().manual_seed(0), num_inference_steps=3,
                           classifier=clf, classifier_scale=1.0)
    assert z.shape == (4, ldm.latent_channels, *ldm.grid_shape) and torch.isfinite(z).all()
