"""Mathematical checks for the latent diffusion schedules, schedulers, losses, guidance and UNet."""

from __future__ import annotations

import math

import pytest
import torch

from latentgen.diffusion.guidance import drop_labels, guided
from latentgen.diffusion.losses import diffusion_loss, min_snr_weight
from latentgen.diffusion.pipeline import sample_latents
from latentgen.diffusion.schedulers import DDIMScheduler, DDPMScheduler, NoiseScheduler
from latentgen.diffusion.schedules import VarianceSchedule, make_betas
from latentgen.nets.unet import UNet

SCHEDULES = ("linear", "cosine")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


pytestmark = pytest.mark.usefixtures("one_thread")


def oracle(scheduler: NoiseScheduler, x0: torch.Tensor):
    """Denoiser that knows x0 and returns the exact output for the scheduler's parameterisation."""
    abar_table = scheduler.alphas_cumprod

    def fn(x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        abar = abar_table[t].reshape(-1, *([1] * (x.ndim - 1)))
        xd, x0d = x.double(), x0.double()
        eps = (xd - abar.sqrt() * x0d) / (1 - abar).sqrt()
        if scheduler.prediction_type == "epsilon":
            out = eps
        elif scheduler.prediction_type == "sample":
            out = x0d
        else:
            out = abar.sqrt() * eps - (1 - abar).sqrt() * x0d
        return out.to(x.dtype)

    return fn


# ------------------------------------------------------------------ schedules
def test_linear_betas_endpoints_and_rescaling() -> None:
    betas = make_betas("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    short = make_betas("linear", 250)
    assert short[0].item() == pytest.approx(4e-4) and short[-1].item() == pytest.approx(0.08)
    with pytest.raises(ValueError, match="quadratic"):
        make_betas("quadratic", 10)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_properties(name: str) -> None:
    sched = VarianceSchedule(name, 1000)
    assert bool(((sched.betas > 0) & (sched.betas < 1)).all())
    assert bool((sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all())
    assert sched.alphas_cumprod[0].item() > 0.999
    assert sched.alphas_cumprod[-1].item() < 1e-4


def test_cosine_matches_closed_form() -> None:
    total, s = 1000, 0.008
    abar = VarianceSchedule("cosine", total).alphas_cumprod
    t = torch.arange(1, total + 1, dtype=torch.float64)
    f = (
        torch.cos((t / total + s) / (1 + s) * math.pi / 2) ** 2
        / math.cos(s / (1 + s) * math.pi / 2) ** 2
    )
    # Clipping at beta = 0.999 only touches the very last steps.
    torch.testing.assert_close(abar[:-5], f[:-5], rtol=1e-9, atol=1e-12)
    assert make_betas("cosine", total).max().item() == pytest.approx(0.999)


# ---------------------------------------------------------- forward process
@pytest.mark.parametrize("name", SCHEDULES)
def test_add_noise_statistics(name: str) -> None:
    sched = DDPMScheduler(beta_schedule=name)
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    x0 = torch.tensor([1.5, -0.7, 0.2])
    for t in (0, 100, 500, 900):
        noise = torch.randn(n, 3, generator=gen)
        xt = sched.add_noise(x0.expand(n, 3), noise, torch.full((n,), t, dtype=torch.long))
        abar = sched.alphas_cumprod[t].item()
        tol = 5 * math.sqrt((1 - abar) / n) + 1e-6
        torch.testing.assert_close(xt.mean(0), math.sqrt(abar) * x0, atol=tol, rtol=0)
        torch.testing.assert_close(
            xt.var(0), torch.full((3,), 1 - abar), atol=0.03 * (1 - abar) + 1e-6, rtol=0
        )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_parameterisations_invert_each_other(prediction_type: str) -> None:
    sched = DDPMScheduler(prediction_type=prediction_type, beta_schedule="cosine")
    gen = torch.Generator().manual_seed(1)
    shape = (5, 4, 7, 7)
    x0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 3, 250, 700, 999])
    xt = sched.add_noise(x0, noise, t)
    target = sched.training_target(x0, noise, t)
    torch.testing.assert_close(sched.predict_original(target, xt, t), x0)
    torch.testing.assert_close(sched.predict_epsilon(target, xt, t), noise)


# ------------------------------------------------------------- timesteps
@pytest.mark.parametrize("n", [1, 7, 10, 50, 1000])
def test_set_timesteps(n: int) -> None:
    sched = DDIMScheduler()
    sched.set_timesteps(n)
    ts = sched.timesteps
    assert ts.dtype == torch.long and len(ts) == n and ts[0].item() == 999
    assert bool((ts[1:] < ts[:-1]).all())
    if n > 1:
        assert ts[-1].item() == 0
        gaps = (ts[:-1] - ts[1:]).double()
        assert (gaps.max() - gaps.min()).item() <= 1


def test_set_timesteps_and_step_reject_bad_values() -> None:
    sched = DDIMScheduler()
    for n in (0, 1001):
        with pytest.raises(ValueError, match=str(n)):
            sched.set_timesteps(n)
    sched.set_timesteps(10)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="500"):
        sched.step(x, 500, x)  # not one of the 10 inference timesteps


# --------------------------------------------------------------- sampling
@pytest.mark.parametrize(
    "cls,kwargs,steps",
    [
        (DDPMScheduler, {}, 1000),
        (DDPMScheduler, {"beta_schedule": "cosine"}, 25),
        (DDIMScheduler, {"eta": 0.0}, 10),
        (DDIMScheduler, {"eta": 0.0, "beta_schedule": "cosine"}, 50),
        (DDIMScheduler, {"eta": 1.0}, 10),
        (DDIMScheduler, {"eta": 1.0}, 50),
        (DDPMScheduler, {"prediction_type": "sample"}, 20),
        (DDPMScheduler, {"prediction_type": "v_prediction"}, 20),
        (DDIMScheduler, {"prediction_type": "sample"}, 20),
        (DDIMScheduler, {"prediction_type": "v_prediction", "eta": 1.0}, 20),
    ],
)
def test_oracle_recovers_x0(cls, kwargs: dict, steps: int) -> None:
    scheduler = cls(**kwargs)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 4, 7, 7, generator=gen)
    out = sample_latents(oracle(scheduler, x0), scheduler, x0.shape, steps, generator=gen)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=0)


def test_ddim_eta0_keeps_oracle_noise_constant() -> None:
    """Deterministic DDIM with the oracle moves along x_t = sqrt(abar) x0 + sqrt(1-abar) eps."""
    scheduler = DDIMScheduler(eta=0.0)
    scheduler.set_timesteps(20)
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(3, 4, 7, 7, generator=gen, dtype=torch.float64)
    x = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    fn = oracle(scheduler, x0)
    t_first = scheduler.timesteps[0].item()
    eps0 = fn(x, torch.full((3,), t_first))
    for t in scheduler.timesteps.tolist()[:-1]:
        x = scheduler.step(fn(x, torch.full((3,), t)), t, x).prev_sample
        s = scheduler.previous_timestep(t)
        abar = scheduler.alphas_cumprod[s]
        torch.testing.assert_close(x, abar.sqrt() * x0 + (1 - abar).sqrt() * eps0)


@pytest.mark.parametrize(
    "scheduler,steps",
    [(DDPMScheduler(), 1000), (DDPMScheduler(), 40), (DDIMScheduler(eta=0.5), 40)],
)
def test_oracle_chain_preserves_forward_marginals(scheduler: NoiseScheduler, steps: int) -> None:
    """Posterior steps with the true x0 keep x_s ~ N(sqrt(abar_s) x0, 1 - abar_s)."""
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(5)
    n, x0 = 4_000, torch.tensor([[0.8, -1.2]], dtype=torch.float64)
    x0b = x0.expand(n, 2)
    t0 = scheduler.timesteps[0].item()
    noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x = scheduler.add_noise(x0b, noise, torch.full((n,), t0))
    fn = oracle(scheduler, x0b)
    checks = set(scheduler.timesteps.tolist()[:: max(1, steps // 4)])
    for t in scheduler.timesteps.tolist()[:-1]:
        x = scheduler.step(fn(x, torch.full((n,), t)), t, x, generator=gen).prev_sample
        s = scheduler.previous_timestep(t)
        if s in checks:
            abar = scheduler.alphas_cumprod[s].item()
            torch.testing.assert_close(
                x.mean(0), math.sqrt(abar) * x0[0], atol=4 * math.sqrt((1 - abar) / n), rtol=0
            )
            torch.testing.assert_close(
                x.var(0),
                torch.full((2,), 1 - abar, dtype=torch.float64),
                atol=4 * math.sqrt(2 / n) * (1 - abar),
                rtol=0,
            )


@pytest.mark.parametrize("steps", [1000, 30])
def test_ddim_eta1_is_ddpm(steps: int) -> None:
    ddpm, ddim = DDPMScheduler(), DDIMScheduler(eta=1.0)
    ddpm.set_timesteps(steps)
    ddim.set_timesteps(steps)
    betas, abar = ddpm.betas, ddpm.alphas_cumprod
    for t in ddpm.timesteps.tolist():
        assert ddim.sigma(t) ** 2 == pytest.approx(ddpm.posterior_variance(t), rel=1e-10, abs=1e-15)
        if steps == 1000:  # the textbook beta_tilde of consecutive steps
            expected = 0.0 if t == 0 else (1 - abar[t - 1]) / (1 - abar[t]) * betas[t]
            assert ddpm.posterior_variance(t) == pytest.approx(float(expected), rel=1e-10)
    # Same noise draw -> same sample: the DDIM eta=1 mean equals the DDPM posterior mean.
    x = torch.randn(4, 4, 7, 7, generator=torch.Generator().manual_seed(6))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    for t in ddpm.timesteps.tolist()[:: max(1, steps // 6)]:
        a = ddpm.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        b = ddim.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_clip_sample_clips_prediction_only_when_enabled() -> None:
    x = torch.full((1, 3), 3.0)
    out = torch.zeros(1, 3)
    t = 10
    for cls in (DDPMScheduler, DDIMScheduler):
        plain = cls(prediction_type="sample").step(x, t, out).pred_original_sample
        assert plain.max().item() == pytest.approx(3.0)
        clipped = cls(prediction_type="sample", clip_sample=True, clip_sample_range=2.0)
        assert clipped.step(x, t, out).pred_original_sample.max().item() == pytest.approx(2.0)


def test_step_preserves_dtype_and_constructor_validation() -> None:
    x = torch.randn(2, 4, 7, 7, dtype=torch.float16)
    res = DDIMScheduler(eta=1.0).step(torch.zeros_like(x), 999, x)
    assert (
        res.prev_sample.dtype == torch.float16 and res.pred_original_sample.dtype == torch.float16
    )
    with pytest.raises(ValueError, match="x0"):
        DDPMScheduler(prediction_type="x0")
    with pytest.raises(ValueError, match="-1"):
        DDIMScheduler(eta=-1.0)


# ---------------------------------------------------------------- losses
def test_min_snr_weights() -> None:
    snr = torch.tensor([0.0, 0.5, 5.0, 10.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "epsilon"), torch.tensor([1, 1, 1, 0.5]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "sample"), torch.tensor([0, 0.5, 5, 5.0]))
    torch.testing.assert_close(
        min_snr_weight(snr, 5.0, "v_prediction"), torch.tensor([0, 0.5 / 1.5, 5 / 6, 5 / 11])
    )
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weight(snr, 0.0, "epsilon")


def test_diffusion_loss_weighting() -> None:
    out = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert diffusion_loss(out, target).item() == pytest.approx(2.5)
    assert diffusion_loss(out, target, torch.tensor([2.0, 0.5])).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shape"):
        diffusion_loss(out, target[:, :, :1])


# -------------------------------------------------------------- guidance
class _CountingModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = UNet(4, base_channels=16, num_res_blocks=1, attention_heads=2, num_classes=3)
        torch.nn.init.normal_(self.net.out[-1].weight, std=0.1)
        self.batches: list[int] = []

    def forward(self, x, t, labels):
        self.batches.append(x.shape[0])
        return self.net(x, t, labels)


@torch.no_grad()
def test_guidance_scales() -> None:
    model = _CountingModel().eval()
    x, t, y = torch.randn(3, 4, 7, 7), torch.tensor([5, 50, 500]), torch.tensor([0, 1, 2])
    null_label = model.net.null_label
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, null_label))
    model.batches.clear()
    assert torch.equal(guided(model, (x, t), y, null_label, 1.0), cond)
    assert torch.equal(guided(model, (x, t), y, null_label, 0.0), uncond)
    assert model.batches == [3, 3]
    out = guided(model, (x, t), y, null_label, 3.0)
    assert model.batches[-1] == 6  # one batched forward for cond + uncond
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="-1"):
        guided(model, (x, t), y, null_label, -1.0)


def test_drop_labels() -> None:
    y = torch.zeros(10_000, dtype=torch.long)
    dropped = drop_labels(y, 7, 0.2, generator=torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 7}
    assert (dropped == 7).float().mean().item() == pytest.approx(0.2, abs=0.02)
    assert torch.equal(drop_labels(y, 7, 0.0), y)


# ------------------------------------------------------------------ UNet
def _small_unet(**kwargs) -> UNet:
    return UNet(4, base_channels=16, num_res_blocks=1, attention_heads=2, **kwargs)


@pytest.mark.parametrize("size", [7, 8, 14])
@pytest.mark.parametrize("num_classes", [None, 5])
def test_unet_shapes(size: int, num_classes: int | None) -> None:
    net = _small_unet(out_channels=6, num_classes=num_classes)
    x = torch.randn(2, 4, size, size)
    labels = torch.tensor([0, 4]) if num_classes else None
    out = net(x, torch.tensor([1, 999]), labels)
    assert out.shape == (2, 6, size, size)
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv
    assert net(x, 0.5).shape == (2, 6, size, size)  # scalar float timestep


def test_unet_gradients_flow_everywhere() -> None:
    net = _small_unet(num_classes=3)
    for p in net.parameters():
        if p.ndim > 1 and torch.count_nonzero(p) == 0:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    net(x, torch.tensor([3, 700]), torch.tensor([0, 3])).square().mean().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_unet_null_label_and_validation() -> None:
    net = _small_unet(num_classes=3)
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 20])
    assert net.null_label == 3
    null = torch.full((2,), 3, dtype=torch.long)
    assert torch.equal(net(x, t, None), net(x, t, null))
    assert not torch.allclose(net(x, t, torch.tensor([0, 1])), net(x, t, null))
    with pytest.raises(ValueError, match="num_classes=None"):
        _small_unet()(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="attention_heads=3"):
        UNet(4, base_channels=16, attention_heads=3)
    with pytest.raises(ValueError, match="B, 4, H, W"):
        net(torch.randn(2, 3, 8, 8), t)


def test_unet_default_size() -> None:
    n_params = sum(p.numel() for p in UNet(4, num_classes=10).parameters())
    assert 1_000_000 < n_params < 5_000_000
