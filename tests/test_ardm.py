"""Order-agnostic autoregressive diffusion (ARDM): the objective's identities, the sampler, the prior."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from omegaconf import OmegaConf

from latentgen.compare import step_count, sweep
from latentgen.diffusion.order_agnostic import (
    OrderAgnosticProcess,
    OrderAgnosticSampler,
    random_orders,
)
from latentgen.metrics.registry import eval_spec
from latentgen.models.ardm import ARDMPrior
from latentgen.nets.transformer import BidirectionalTransformer
from latentgen.utils.resolvers import CONF_DIR

V, D, CLASSES = 3, 4, 2  # vocabulary, positions (a 2x2 grid), classes
MASK = V
ALL_GRIDS = torch.tensor(list(itertools.product(range(V), repeat=D)))  # all V**D grids
PERMS = list(itertools.permutations(range(D)))
TINY_PRIOR = dict(num_classes=10, d_model=16, n_layers=1, n_heads=2, num_sample_images=4)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_net(seed: int = 0) -> BidirectionalTransformer:
    """A small bidirectional transformer with large random weights: far from uniform conditionals."""
    torch.manual_seed(seed)
    net = BidirectionalTransformer(V, D, CLASSES, d_model=16, n_layers=2, n_heads=2, dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.7)
    return net.eval()


def ranks_of(perm: tuple[int, ...], batch: int) -> torch.Tensor:
    """Ranks [batch, D] of the order that generates positions ``perm[0], perm[1], ...``."""
    ranks = torch.empty(D, dtype=torch.long)
    ranks[list(perm)] = torch.arange(D)
    return ranks.expand(batch, D).clone()


def per_order_nll(process, net, x, labels) -> torch.Tensor:
    """-log p_sigma(x) for every order: [num_orders, B]."""
    return torch.stack([process.order_nll(net, x, labels, ranks_of(p, len(x))) for p in PERMS])


# -- (a) the objective ----------------------------------------------------------------------------
def test_exact_expected_loss_equals_mean_per_order_nll_and_bounds_the_mixture_nll():
    net, process = tiny_net(), OrderAgnosticProcess(V, MASK)
    labels = torch.arange(len(ALL_GRIDS)) % CLASSES
    with torch.no_grad():
        # the t-weighted loss averaged exactly over every t in 1..D and every one of the D! orders
        losses = [process.training_loss(net, ALL_GRIDS, labels, t=torch.full((len(ALL_GRIDS),), t),
                                        order=ranks_of(p, len(ALL_GRIDS)))[0]
                  for t in range(1, D + 1) for p in PERMS]
    expected_loss = torch.stack(losses).double().mean(0)
    nll = per_order_nll(process, net, ALL_GRIDS, labels)  # [D!, V**D], D calls each
    bound = nll.mean(0)
    torch.testing.assert_close(expected_loss, bound, rtol=1e-5, atol=1e-5)  # unbiasedness identity
    # every order is a normalised distribution over the V**D grids (per class)
    for c in range(CLASSES):
        mass = torch.exp(-per_order_nll(process, net, ALL_GRIDS, torch.full_like(labels, c))).sum(1)
        torch.testing.assert_close(mass, torch.ones_like(mass), rtol=1e-5, atol=1e-5)
    # Jensen: E_sigma[-log p_sigma(x)] >= -log E_sigma[p_sigma(x)] (the mixture's NLL), strictly here
    mixture_nll = -(torch.logsumexp(-nll, dim=0) - math.log(len(PERMS)))
    assert torch.all(bound >= mixture_nll - 1e-9)
    assert float((bound - mixture_nll).max()) > 1e-3, "the orders should disagree for this net"
    assert float(nll.std(0).max()) > 1e-2


def test_sampled_loss_is_unbiased():
    net, process = tiny_net(1), OrderAgnosticProcess(V, MASK)
    x, y = ALL_GRIDS[[5, 40]], torch.tensor([0, 1])
    bound = per_order_nll(process, net, x, y).mean(0)
    n = 20000
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = process.training_loss(net, x.repeat_interleave(n, 0), y.repeat_interleave(n, 0), generator=gen)[0]
    draws = draws.double().view(2, n)
    stderr = draws.std(1) / math.sqrt(n)
    assert torch.all((draws.mean(1) - bound).abs() < 4 * stderr), (draws.mean(1), bound, stderr)
    per_order = process.nll_estimate(net, x.repeat_interleave(n, 0), y.repeat_interleave(n, 0), generator=gen)
    per_order = per_order.view(2, n)  # one random order each: an unbiased estimate of the same bound
    assert torch.all((per_order.mean(1) - bound).abs() < 4 * per_order.std(1) / math.sqrt(n))
    assert torch.all(per_order.std(1) < draws.std(1))  # and less noisy than the one-call loss
    two = process.nll_estimate(net, x, y, num_orders=2, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    orders = [random_orders(2, D, g) for _ in range(2)]  # num_orders averages the per-order NLLs of its orders
    torch.testing.assert_close(two, sum(process.order_nll(net, x, y, o) for o in orders) / 2)


def test_loss_weights_and_masking():
    """t=1 masks everything with weight 1; t=D leaves one position masked with weight D."""
    seen = []

    def net(tokens, labels):
        seen.append(tokens.clone())
        return torch.zeros(*tokens.shape, V)  # uniform: CE = log V per position

    process, x = OrderAgnosticProcess(V, MASK), ALL_GRIDS[[7, 60]]
    order = ranks_of((2, 0, 3, 1), 2)
    for t, revealed in ((1, []), (2, [2]), (D, [2, 0, 3])):
        loss, _ = process.training_loss(net, x, None, t=torch.tensor([t, t]), order=order)
        torch.testing.assert_close(loss, torch.full((2,), D * math.log(V)))  # D/(D-t+1) * (D-t+1) log V
        inputs = seen[-1]
        assert sorted(torch.nonzero(inputs[0] != MASK).flatten().tolist()) == sorted(revealed)
        assert torch.equal(inputs[:, revealed], x[:, revealed])


# -- (b) sampling ---------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [None, 1, 2, 3, D])
def test_sampler_reveals_the_order_in_steps(steps):
    net, calls = tiny_net(), []

    def recording(tokens, labels):
        calls.append(tokens.clone())
        return net(tokens, labels)

    order = random_orders(6, D, torch.Generator().manual_seed(3))
    sampler = OrderAgnosticSampler(MASK, steps)
    out = sampler.sample(recording, 6, D, labels=torch.arange(6) % CLASSES, null_label=CLASSES, order=order,
                         generator=torch.Generator().manual_seed(0))
    counts = sampler.revealed_counts(D)
    assert len(calls) == len(counts) == (steps or D) and counts[-1] == D
    assert all(b > a for a, b in zip([0, *counts], counts, strict=False))  # every step reveals >= 1
    for k, tokens in enumerate(calls):  # before step k: exactly the positions ranked below counts[k-1]
        assert torch.equal(tokens != MASK, order < (counts[k - 1] if k else 0))
    assert out.dtype == torch.long and not (out == MASK).any() and out.min() >= 0 and out.max() < V


def test_one_token_at_a_time_samples_the_mixture():
    net, process = tiny_net(2), OrderAgnosticProcess(V, MASK)
    n = 20000
    labels = torch.zeros(n, dtype=torch.long)
    out = process.make_sampler(None).sample(net, n, D, labels=labels, generator=torch.Generator().manual_seed(0))
    codes = (out * V ** torch.arange(D - 1, -1, -1)).sum(1)
    freq = torch.bincount(codes, minlength=V**D).double() / n
    nll = per_order_nll(process, net, ALL_GRIDS, torch.zeros(len(ALL_GRIDS), dtype=torch.long))
    mixture = torch.exp(-nll).mean(0)
    assert 0.5 * float((freq - mixture).abs().sum()) < 0.04


def test_guidance_scale_one_is_conditional_sampling_and_others_one_batched_call():
    net = tiny_net()
    labels, gen = torch.tensor([0, 1, 1, 0]), lambda: torch.Generator().manual_seed(7)
    plain = OrderAgnosticSampler(MASK, 2).sample(net, 4, D, labels=labels, generator=gen())
    guided_one = OrderAgnosticSampler(MASK, 2, guidance_scale=1.0).sample(
        net, 4, D, labels=labels, null_label=CLASSES, generator=gen())
    assert torch.equal(plain, guided_one)
    null = torch.full_like(labels, CLASSES)
    assert torch.equal(OrderAgnosticSampler(MASK, 2, guidance_scale=0.0).sample(
        net, 4, D, labels=labels, null_label=CLASSES, generator=gen()), OrderAgnosticSampler(MASK, 2).sample(
        net, 4, D, labels=null, generator=gen()))
    batches = []

    def recording(tokens, y):
        batches.append(y.clone())
        return net(tokens, y)

    def by_hand(tokens, y):  # the guided logits, computed per half
        cond, uncond = net(tokens, y).float(), net(tokens, torch.full_like(y, CLASSES)).float()
        return uncond + 3.0 * (cond - uncond)

    out = OrderAgnosticSampler(MASK, D, guidance_scale=3.0).sample(
        recording, 4, D, labels=labels, null_label=CLASSES, generator=gen())
    assert len(batches) == D and all(torch.equal(b, torch.cat([labels, null])) for b in batches)
    reference = OrderAgnosticSampler(MASK, D).sample(by_hand, 4, D, labels=labels, generator=gen())
    assert torch.equal(out, reference)


def test_temperature_zero_is_argmax_of_an_oracle():
    target = ALL_GRIDS[[3, 50, 77]]

    def oracle(tokens, labels):
        return torch.zeros(*tokens.shape, V).scatter(-1, target[:, :, None], 10.0)

    for steps in (1, 2, D):
        out = OrderAgnosticSampler(MASK, steps, temperature=0.0).sample(oracle, 3, D)
        assert torch.equal(out, target)


# -- (d) bad options --------------------------------------------------------------------------------
def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"num_inference_steps=0 must lie between 1"):
        OrderAgnosticSampler(MASK, 0)
    with pytest.raises(ValueError, match=r"num_inference_steps=5 must lie between 1 and D=4"):
        OrderAgnosticSampler(MASK, 5).sample(tiny_net(), 2, D)
    with pytest.raises(ValueError, match="must be an integer"):
        OrderAgnosticSampler(MASK, 2.5)
    with pytest.raises(ValueError, match="temperature=-1.0"):
        OrderAgnosticSampler(MASK, 2, temperature=-1)
    with pytest.raises(ValueError, match="guidance_scale"):
        OrderAgnosticSampler(MASK, 2, guidance_scale=-1.0)
    process = OrderAgnosticProcess(V, MASK)
    with pytest.raises(ValueError, match=r"t must lie in \[1, 4\]"):
        process.training_loss(tiny_net(), ALL_GRIDS[:2], None, t=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="permutations"):
        process.order_nll(tiny_net(), ALL_GRIDS[:2], None, torch.zeros(2, D, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must lie in"):
        process.order_nll(tiny_net(), ALL_GRIDS[:2] + V, None, ranks_of((0, 1, 2, 3), 2))
    with pytest.raises(ValueError, match="num_orders"):
        process.nll_estimate(tiny_net(), ALL_GRIDS[:2], None, num_orders=0)
    with pytest.raises(ValueError, match="collides"):
        OrderAgnosticProcess(V, V - 1)
    with pytest.raises(ValueError, match=r"num_inference_steps=50 must lie between 1 and D=49"):
        ARDMPrior(num_tokens=8, grid_shape=[7, 7], **TINY_PRIOR, num_inference_steps=50)
    with pytest.raises(ValueError, match="needs class labels"):
        ARDMPrior(num_tokens=8, grid_shape=[7, 7], **{**TINY_PRIOR, "num_classes": None}, guidance_scale=2.0)
    with pytest.raises(ValueError, match="num_tokens/grid_shape are unset"):
        ARDMPrior(**TINY_PRIOR)
    model = ARDMPrior(num_tokens=8, grid_shape=[7, 7], **TINY_PRIOR)
    with pytest.raises(ValueError, match=r"num_inference_steps=64 must lie between 1 and D=49"):
        model.sample_latents(2, torch.tensor([0, 1]), num_inference_steps=64)
    with pytest.raises(ValueError, match=r"token grids are \(4, 4\)"):
        model.nll_bound(torch.zeros(2, 4, 4, dtype=torch.long), None)


# -- the prior --------------------------------------------------------------------------------------
def test_prior_samples_bound_and_is_evaluated_with_its_bound():
    model = ARDMPrior(num_tokens=8, grid_shape=[3, 3], **TINY_PRIOR).eval()
    assert model.sampling["num_inference_steps"] == 9  # null: one token per step
    labels = torch.tensor([1, 2, 3])
    for steps in (None, 3):
        a = model.sample_latents(3, labels, generator=torch.Generator().manual_seed(0), num_inference_steps=steps)
        b = model.sample_latents(3, labels, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                                 guidance_scale=1.0)
        assert a.shape == (3, 3, 3) and torch.equal(a, b) and a.min() >= 0 and a.max() < 8
    tokens = torch.randint(0, 8, (5, 3, 3), generator=torch.Generator().manual_seed(1))
    y = torch.arange(5)
    nll = model.nll_bound(tokens, y, generator=torch.Generator().manual_seed(0))
    assert nll.shape == (5,) and torch.all(nll > 0)
    again = model.nll_bound(tokens, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(nll, again)
    # the bound is the exact per-order NLL of the drawn order
    order = random_orders(5, 9, torch.Generator().manual_seed(0))
    torch.testing.assert_close(nll, model.process.order_nll(model.net, tokens.reshape(5, 9), y, order))
    spec = eval_spec(model)
    assert spec.family == "ardm" and spec.likelihood and spec.nll_bound
    assert spec.sampler_text(model, {}) == "ardm, 9 steps"
    steps = OmegaConf.load(CONF_DIR / "compare.yaml").steps  # compare's sweep: steps.ardm, then its own D
    five = ARDMPrior(num_tokens=8, grid_shape=[5, 5], **TINY_PRIOR)
    assert [step_count(five, spec, o) for o in sweep(five, spec, steps, {})] == [4, 8, 16, 25]
    assert model.logits(tokens, y).shape == (5, 8, 3, 3)


# -- (c) training through the experiment config ---------------------------------------------------
def test_ardm_mnist_fast_dev_run(compose_cfg, mnist_dir, shared_log_dir):
    from latentgen.train import train

    cfg = compose_cfg("+experiment=ardm_mnist", "debug=fdr")
    assert cfg.stage == "ardm" and cfg.model._target_.endswith("ARDMPrior")
    assert cfg.model.num_inference_steps is None
    cfg.paths.log_dir = str(shared_log_dir)  # priors share one fdr stage 1 per dataset
    metrics, objects = train(cfg)
    assert objects["trainer"].fast_dev_run and isinstance(objects["model"], ARDMPrior)
    for key in ("test/loss", "test/nll", "test/bits_per_token"):
        assert math.isfinite(float(metrics[key])), key
    assert float(metrics["test/nll"]) == pytest.approx(float(metrics["test/loss"]) * 49, rel=1e-4)
    assert float(metrics["test/bits_per_token"]) == pytest.approx(float(metrics["test/loss"]) / math.log(2),
                                                                  rel=1e-4)


def test_evaluate_reports_the_bound_in_bits_per_token(tmp_path, trained_run, mnist_dir, monkeypatch):
    from latentgen.evaluate import evaluate
    from latentgen.utils.compose import compose_config

    from .conftest import data_dir

    monkeypatch.setenv("WANDB_SILENT", "true")
    ckpt = trained_run("ardm_mnist") / "checkpoints" / "last.ckpt"
    classifier = trained_run("classifier_mnist") / "checkpoints" / "last.ckpt"
    cfg = compose_config([f"ckpt={ckpt}", f"classifier.ckpt_path={classifier}", "show_progress=false",
                          "wandb.enabled=false", "num_samples=20", "batch_size=20", "nll.max_items=20",
                          "metrics.kid_subsets=5", "sampling.num_inference_steps=7"], config_name="evaluate.yaml")
    cfg.paths.output_dir, cfg.paths.log_dir, cfg.paths.data_dir = str(tmp_path / "out"), str(tmp_path), str(data_dir())
    m = evaluate(cfg)["metrics"]
    assert 0 < m["bits_per_token"] < 2 * math.log2(256)
    assert m["nll_nats_per_grid"] == pytest.approx(m["bits_per_token"] * 49 * math.log(2))
    # the seeded D-call bound over the first 20 test grids, recomputed by hand
    from latentgen.metrics.eval_data import RealImages, resolve_data
    from latentgen.stages.checkpoints import load_model

    model = load_model(ckpt)
    x, y = RealImages(resolve_data(model, ckpt, None), data_dir()).take("test", 20)
    tokens = model._require_stage1().encode_to_indices(x)
    bound = model.nll_bound(tokens, y, generator=torch.Generator().manual_seed(0))
    assert m["nll_nats_per_grid"] == pytest.approx(float(bound.double().mean()), rel=1e-5)
