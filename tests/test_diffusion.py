"""Mathematical checks for the latent diffusion schedules, schedulers, losses, guidance and UNet."""

from __future__ import annotations

import math

import pytest
import torch

from latentgen.diffusion.guidance import drop_labels, guided
from latentgen.diffusion.losses import diffusion_loss, min_snr_weight
from latentgen.diffusion.pipeline import classifier_guided, sample_latents
from latentgen.diffusion.schedulers import (
    SAMPLERS,
    from_epsilon,
    make_scheduler,
    network_calls,
    to_epsilon,
    training_target,
)
from latentgen.diffusion.schedules import VarianceSchedule, make_betas
from latentgen.nets.unet import UNet

SCHEDULES = ("linear", "cosine")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


pytestmark = pytest.mark.usefixtures("one_thread")


def oracle(scheduler, x0: torch.Tensor):
    """Denoiser that knows x0 and returns the exact output for the scheduler's parameterisation."""
    abar_table = scheduler.alphas_cumprod.double()
    kind = scheduler.config.prediction_type

    def fn(x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        abar = abar_table[t].reshape(-1, *([1] * (x.ndim - 1)))
        xd, x0d = x.double(), x0.double()
        eps = (xd - abar.sqrt() * x0d) / (1 - abar).sqrt()
        if kind == "epsilon":
            out = eps
        elif kind == "sample":
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
def test_scheduler_uses_the_variance_schedule_table(name: str) -> None:
    table = VarianceSchedule(name, 1000)
    for sampler in SAMPLERS:
        sched = make_scheduler(sampler, 1000, name, "epsilon")
        torch.testing.assert_close(sched.betas.double(), table.betas, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(sched.alphas_cumprod.double(), table.alphas_cumprod, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", SCHEDULES)
def test_add_noise_statistics(name: str) -> None:
    sched = make_scheduler("ddpm", 1000, name)
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
    sched = make_scheduler("ddpm", 1000, "cosine", prediction_type)
    gen = torch.Generator().manual_seed(1)
    shape = (5, 4, 7, 7)
    x0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 3, 250, 700, 990])
    xt = sched.add_noise(x0, noise, t)
    target = training_target(sched, x0, noise, t)
    torch.testing.assert_close(to_epsilon(sched, target, xt, t), noise, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(from_epsilon(sched, noise, xt, t), target, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------- timesteps
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("n", [1, 4, 10, 50])
def test_timesteps_are_trailing(sampler: str, n: int) -> None:
    """Every sampler starts at the noisiest step t = T-1, whatever the number of steps."""
    sched = make_scheduler(sampler, 1000, "cosine")
    calls = network_calls(sched, n)
    ts = sched.timesteps.double()
    assert round(ts[0].item()) == 999
    assert calls == (2 * n - 1 if sampler == "heun" else n)
    assert bool((ts[1:] <= ts[:-1]).all())


def test_bad_sampler_options_are_named() -> None:
    with pytest.raises(ValueError, match="dpm_fast.*ddpm, ddim, dpmpp_2m, unipc, euler, heun"):
        make_scheduler("dpm_fast")
    with pytest.raises(ValueError, match="x0"):
        make_scheduler("ddim", prediction_type="x0")
    sched = make_scheduler("ddim")
    oracle_fn = oracle(sched, torch.zeros(1, 2, 3, 3))
    for n in (0, 1001):
        with pytest.raises(ValueError, match=str(n)):
            sample_latents(oracle_fn, sched, (1, 2, 3, 3), n)
    with pytest.raises(ValueError, match="eta.*ddim"):
        sample_latents(oracle_fn, make_scheduler("dpmpp_2m"), (1, 2, 3, 3), 5, eta=0.5)
    with pytest.raises(ValueError, match="classifier"):
        sample_latents(oracle_fn, sched, (1, 2, 3, 3), 5, classifier_scale=1.0)


# --------------------------------------------------------------- sampling
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_every_sampler_recovers_x0_from_an_oracle(sampler: str, prediction_type: str) -> None:
    scheduler = make_scheduler(sampler, 1000, "cosine", prediction_type)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 4, 7, 7, generator=gen)
    steps = 1000 if sampler == "ddpm" and prediction_type == "epsilon" else 20
    out = sample_latents(oracle(scheduler, x0), scheduler, x0.shape, steps, generator=gen)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0, atol=2e-3, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_eta_recovers_x0(eta: float) -> None:
    scheduler = make_scheduler("ddim", 1000, "linear", "v_prediction")
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 4, 7, 7, generator=gen)
    out = sample_latents(oracle(scheduler, x0), scheduler, x0.shape, 10, generator=gen, eta=eta)
    torch.testing.assert_close(out, x0, atol=2e-3, rtol=0)


@pytest.mark.parametrize("steps", [1000, 40])
def test_ddpm_oracle_chain_preserves_forward_marginals(steps: int) -> None:
    """Posterior steps with the true x0 keep x_s ~ N(sqrt(abar_s) x0, 1 - abar_s)."""
    scheduler = make_scheduler("ddpm", 1000, "linear")
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(5)
    n, x0 = 4_000, torch.tensor([[0.8, -1.2]], dtype=torch.float64)
    x0b = x0.expand(n, 2)
    t0 = int(scheduler.timesteps[0])
    noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x = scheduler.add_noise(x0b, noise, torch.full((n,), t0)).double()
    fn = oracle(scheduler, x0b)
    timesteps = scheduler.timesteps.tolist()
    checks = set(timesteps[:: max(1, steps // 4)])
    for t in timesteps[:-1]:
        x = scheduler.step(fn(x, torch.full((n,), t)), t, x, generator=gen).prev_sample
        s = int(scheduler.previous_timestep(t))
        if s in checks:
            abar = scheduler.alphas_cumprod[s].item()
            torch.testing.assert_close(
                x.mean(0).double(), math.sqrt(abar) * x0[0], atol=4 * math.sqrt((1 - abar) / n), rtol=0
            )
            torch.testing.assert_close(
                x.var(0).double(),
                torch.full((2,), 1 - abar, dtype=torch.float64),
                atol=4 * math.sqrt(2 / n) * (1 - abar) + 1e-6,
                rtol=0,
            )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_classifier_guidance_shifts_the_noise_by_the_scaled_gradient(prediction_type: str) -> None:
    sched = make_scheduler("ddim", 1000, "cosine", prediction_type)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    out = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([10, 500, 950])
    guided_out = classifier_guided(sched, out, x, t, grad, 2.5)
    abar = sched.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    shift = to_epsilon(sched, guided_out, x, t) - to_epsilon(sched, out, x, t)
    torch.testing.assert_close(shift, -(1 - abar).sqrt() * 2.5 * grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(classifier_guided(sched, out, x, t, grad, 0.0), out)


def test_classifier_guidance_skips_steps_of_almost_pure_noise() -> None:
    """At t = T-1 of the cosine schedule (abar ~ 2e-9) x_t carries no class: no guidance there."""
    from latentgen.diffusion.pipeline import GUIDANCE_MIN_ALPHA_BAR

    sched = make_scheduler("ddim", 1000, "cosine", "v_prediction")
    abar = sched.alphas_cumprod.double()
    noisy = int((abar >= GUIDANCE_MIN_ALPHA_BAR).nonzero().max()) + 1
    assert abar[999] < 1e-8 and noisy <= 999
    x, out = torch.randn(2, 2, 3, 3, dtype=torch.float64), torch.randn(2, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([999, noisy - 1])
    guided_out = classifier_guided(sched, out, x, t, torch.ones_like(x), 3.0)
    torch.testing.assert_close(guided_out[0], out[0])
    assert not torch.allclose(guided_out[1], out[1])


def test_classifier_guidance_moves_samples_towards_the_class() -> None:
    """A Gaussian 'classifier' pulling to +2: guided oracle-free sampling of N(0, I) data shifts the mean."""
    sched = make_scheduler("dpmpp_2m", 1000, "cosine", "epsilon")

    def model_fn(x, t, labels):  # exact denoiser of N(0, I) data: eps = sqrt(1 - abar) x
        abar = sched.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
        return ((1 - abar).sqrt() * x.double()).float()

    def grad_fn(x, t, labels):  # grad log N(x; 2, 1)
        return 2.0 - x

    shape = (256, 1, 2, 2)
    labels = torch.zeros(256, dtype=torch.long)
    plain = sample_latents(model_fn, sched, shape, 20, labels=labels, generator=torch.Generator().manual_seed(0))
    pulled = sample_latents(model_fn, sched, shape, 20, labels=labels, generator=torch.Generator().manual_seed(0),
                            classifier_grad=grad_fn, classifier_scale=1.0)
    assert abs(plain.mean().item()) < 0.15
    assert pulled.mean().item() > 0.5 + plain.mean().item()


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
