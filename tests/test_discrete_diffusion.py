"""Tests for mask schedules, absorbing (MaskGIT) and uniform discrete diffusion."""

from __future__ import annotations

import math

import pytest
import torch

from latentgen.diffusion.absorbing import AbsorbingDiffusion, MaskGITSampler
from latentgen.diffusion.guidance import guided
from latentgen.diffusion.mask_schedules import SCHEDULES, gamma
from latentgen.diffusion.uniform import UniformDiffusionSampler, UniformDiscreteDiffusion

K = 16  # codebook size
MASK_ID = K


def oracle(target: torch.Tensor, num_tokens: int = K):
    """Network that puts a huge logit on the target token at every position."""

    def logits_fn(tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, num_tokens)
        return logits.scatter(-1, target[: tokens.shape[0], :, None], 1e4)

    return logits_fn


def random_net(seq_len: int, num_classes: int = 4, seed: int = 0):
    """Small fixed random network depending on tokens and labels (last class = null)."""
    g = torch.Generator().manual_seed(seed)
    tok_emb = torch.randn(K + 1, K, generator=g)
    pos_emb = torch.randn(seq_len, K, generator=g)
    cls_emb = torch.randn(num_classes + 1, K, generator=g)

    def logits_fn(tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        ctx = tok_emb[tokens].mean(dim=1, keepdim=True)
        out = tok_emb[tokens] + pos_emb + ctx
        if labels is not None:
            out = out + cls_emb[labels][:, None, :]
        return 2.0 * out

    return logits_fn


def masks_after_each_step(sampler: MaskGITSampler, logits_fn, batch: int, seq_len: int, **kwargs):
    """Sample, recording which positions are still masked after every step (from the net's inputs)."""
    seen = []

    def recording(tokens, labels):
        seen.append(tokens == MASK_ID)
        return logits_fn(tokens, labels)

    tokens = sampler.sample(recording, batch, seq_len, generator=torch.Generator().manual_seed(0), **kwargs)
    return tokens, torch.stack([*seen[1:], tokens == MASK_ID])


# --------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_endpoints_and_monotone(name: str) -> None:
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)
    values = gamma(name, grid)
    assert values[0].item() == 1.0 and values[-1].item() == 0.0
    assert torch.all(values[1:] <= values[:-1])
    assert gamma(name, 0.0) == 1.0 and gamma(name, 1.0) == 0.0
    floats = [gamma(name, i / 100) for i in range(101)]
    assert all(a >= b for a, b in zip(floats[:-1], floats[1:], strict=True))
    assert math.isclose(floats[37], values[370].item(), abs_tol=1e-9)


def test_unknown_schedule_errors() -> None:
    with pytest.raises(ValueError, match="cosine"):
        gamma("bogus", 0.5)
    with pytest.raises(ValueError, match="bogus"):
        MaskGITSampler(MASK_ID, 4, schedule="bogus")


# --------------------------------------------------------------------------- MaskGIT
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 4, 8, 12])
def test_maskgit_reveals_scheduled_counts(steps: int, schedule: str) -> None:
    seq_len, batch = 12, 3
    sampler = MaskGITSampler(MASK_ID, steps, schedule=schedule)
    masked = sampler.masked_counts(seq_len)
    counts = [before - after for before, after in zip([seq_len, *masked[:-1]], masked, strict=True)]
    assert len(counts) == steps and sum(counts) == seq_len and min(counts) >= 1
    if steps == seq_len:
        assert counts == [1] * seq_len
    if steps == 1:
        assert counts == [seq_len]
    tokens, trace = masks_after_each_step(sampler, random_net(seq_len), batch, seq_len)
    assert not (tokens == MASK_ID).any() and tokens.max() < K
    assert trace.shape == (steps, batch, seq_len) and not trace[-1].any()
    before = torch.full((batch,), seq_len)
    for k in range(steps):
        after = trace[k].sum(dim=1)
        assert torch.all(before - after == counts[k])
        if k > 0:  # revealed positions stay revealed
            assert not (trace[k] & ~trace[k - 1]).any()
        before = after


def test_maskgit_schedule_formula_and_too_many_steps() -> None:
    sampler = MaskGITSampler(MASK_ID, 4, schedule="linear")
    assert sampler.masked_counts(16) == [12, 8, 4, 0]
    with pytest.raises(ValueError, match="num_inference_steps=4 exceeds seq_len=3"):
        sampler.masked_counts(3)


def test_maskgit_one_per_step_in_random_order() -> None:
    seq_len = 10
    sampler = MaskGITSampler(MASK_ID, seq_len, randomness=1.0)
    _, trace = masks_after_each_step(sampler, oracle(torch.zeros(4, seq_len, dtype=torch.long)), 4, seq_len)
    prev = torch.ones(4, seq_len, dtype=torch.bool)
    order = []
    for k in range(seq_len):
        newly = prev & ~trace[k]
        assert torch.all(newly.sum(dim=1) == 1)
        order.append(newly.float().argmax(dim=1))
        prev = trace[k]
    orders = torch.stack(order, dim=1)
    assert all(sorted(row.tolist()) == list(range(seq_len)) for row in orders)
    assert len({tuple(row.tolist()) for row in orders}) > 1


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_maskgit_oracle_recovers_target(steps: int, temperature: float) -> None:
    target = torch.randint(0, K, (3, 8), generator=torch.Generator().manual_seed(2))
    sampler = MaskGITSampler(MASK_ID, steps, temperature=temperature)
    out = sampler.sample(oracle(target), 3, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, target)


def test_cfg_scale_one_equals_conditional() -> None:
    net, labels = random_net(8), torch.tensor([0, 1, 2])
    plain = MaskGITSampler(MASK_ID, 4).sample(net, 3, 8, labels=labels, generator=torch.Generator().manual_seed(5))
    guided_once = MaskGITSampler(MASK_ID, 4, guidance_scale=1.0).sample(
        net, 3, 8, labels=labels, null_label=4, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(plain, guided_once)
    uniform = UniformDiscreteDiffusion(K)
    u_plain = UniformDiffusionSampler(uniform, 4).sample(
        net, 3, 8, labels=labels, generator=torch.Generator().manual_seed(5)
    )
    u_guided = UniformDiffusionSampler(uniform, 4, guidance_scale=1.0).sample(
        net, 3, 8, labels=labels, null_label=4, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(u_plain, u_guided)


def test_guided_logits_formula_and_errors() -> None:
    net, labels = random_net(8), torch.tensor([0, 3])
    tokens = torch.randint(0, K, (2, 8), generator=torch.Generator().manual_seed(0))
    cond, uncond = net(tokens, labels), net(tokens, torch.full_like(labels, 4))
    out = guided(net, (tokens,), labels, 4, 3.0)
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond))
    with pytest.raises(ValueError, match="null_label"):
        guided(net, (tokens,), labels, None, 2.0)
    with pytest.raises(ValueError, match="unconditional"):
        guided(net, (tokens,), None, 4, 2.0)


# --------------------------------------------------------------------------- absorbing
def test_absorbing_corrupt_counts() -> None:
    proc = AbsorbingDiffusion(K, MASK_ID, schedule="cosine")
    tokens = torch.randint(0, K, (5, 20), generator=torch.Generator().manual_seed(0))
    r = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    noisy, mask = proc.corrupt(tokens, generator=torch.Generator().manual_seed(1), r=r)
    expected = [
        20,
        math.ceil(20 * math.cos(math.pi / 8)),
        math.ceil(20 * math.cos(math.pi / 4)),
        math.ceil(20 * math.cos(0.45 * math.pi)),
        1,
    ]
    assert mask.sum(dim=1).tolist() == expected
    assert torch.all(noisy[mask] == MASK_ID) and torch.equal(noisy[~mask], tokens[~mask])
    noisy, mask = proc.corrupt(tokens, generator=torch.Generator().manual_seed(2))
    assert torch.all(mask.sum(dim=1) >= 1) and torch.all(noisy[mask] == MASK_ID)
    with pytest.raises(ValueError, match="mask_token_id"):
        AbsorbingDiffusion(K, 3)


def test_absorbing_loss_only_on_masked() -> None:
    proc = AbsorbingDiffusion(K, MASK_ID)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (4, 10), generator=g)
    _, mask = proc.corrupt(tokens, generator=g, r=torch.full((4,), 0.5))
    logits = torch.randn(4, 10, K, generator=g)
    loss = proc.loss(logits, tokens, mask)
    manual = torch.nn.functional.cross_entropy(logits[mask], tokens[mask])
    torch.testing.assert_close(loss, manual)
    changed = logits.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), K, generator=g) * 10
    torch.testing.assert_close(proc.loss(changed, tokens, mask), loss)
    changed[mask] += torch.randn(int(mask.sum()), K, generator=g) * 10
    assert not torch.isclose(proc.loss(changed, tokens, mask), loss)


# --------------------------------------------------------------------------- uniform
@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_uniform_forward_fractions(t: float) -> None:
    proc = UniformDiscreteDiffusion(K, schedule="cosine")
    tokens = torch.randint(0, K, (64, 256), generator=torch.Generator().manual_seed(0))
    noisy, replaced = proc.add_noise(
        tokens, torch.full((64,), t), generator=torch.Generator().manual_seed(1)
    )
    level = 1 - proc.keep_probability(torch.tensor(t)).item()
    assert level == pytest.approx(1 - math.cos(math.pi * t / 2))
    assert replaced.float().mean().item() == pytest.approx(level, abs=0.02)
    changed = (noisy != tokens).float().mean().item()
    assert changed == pytest.approx(level * (1 - 1 / K), abs=0.02)
    assert torch.equal(noisy[~replaced], tokens[~replaced])


def test_uniform_endpoints() -> None:
    proc = UniformDiscreteDiffusion(K)
    tokens = torch.zeros(64, 256, dtype=torch.long)
    clean, replaced = proc.add_noise(tokens, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(clean, tokens) and not replaced.any()
    noisy, replaced = proc.add_noise(tokens, 1.0, generator=torch.Generator().manual_seed(0))
    assert replaced.all()
    freq = torch.bincount(noisy.flatten(), minlength=K).float() / noisy.numel()
    assert torch.allclose(freq, torch.full((K,), 1 / K), atol=0.01)


def test_uniform_loss_all_positions() -> None:
    proc = UniformDiscreteDiffusion(K)
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2, 6, K, generator=g), torch.randint(0, K, (2, 6), generator=g)
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), reduction="none"
    )
    torch.testing.assert_close(proc.loss(logits, targets), ce.mean())


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 5])
def test_uniform_oracle_recovers_target(steps: int, temperature: float) -> None:
    target = torch.randint(0, K, (3, 8), generator=torch.Generator().manual_seed(3))
    sampler = UniformDiffusionSampler(UniformDiscreteDiffusion(K), steps, temperature=temperature)
    out = sampler.sample(oracle(target), 3, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, target)
