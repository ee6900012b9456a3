"""Re-masking in the MaskGIT sampler: low-confidence revealed tokens go back to [MASK]."""

from __future__ import annotations

import math

import pytest
import torch

from latentgen.diffusion.absorbing import AbsorbingDiffusion, MaskGITSampler, sample_tokens
from latentgen.diffusion.guidance import guided
from latentgen.models.discrete_diffusion import DiscreteDiffusionPrior
from latentgen.sampling.from_checkpoint import sampler_options

K = 16  # codebook size
MASK_ID = K
TINY_NET = dict(d_model=16, n_layers=1, n_heads=2, num_sample_images=4)


def random_net(seq_len: int, num_classes: int = 4, seed: int = 0):
    """Small fixed random network depending on tokens and labels (last class = null)."""
    g = torch.Generator().manual_seed(seed)
    tok_emb = torch.randn(K + 1, K, generator=g)
    pos_emb = torch.randn(seq_len, K, generator=g)
    cls_emb = torch.randn(num_classes + 1, K, generator=g)

    def logits_fn(tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        out = tok_emb[tokens] + pos_emb + tok_emb[tokens].mean(dim=1, keepdim=True)
        if labels is not None:
            out = out + cls_emb[labels][:, None, :]
        return 2.0 * out

    return logits_fn


def recorded(logits_fn):
    """``logits_fn`` that keeps every input it is called with (one call per step without guidance)."""
    inputs: list[torch.Tensor] = []

    def fn(tokens, labels):
        inputs.append(tokens.clone())
        return logits_fn(tokens, labels)

    return fn, inputs


def reference_maskgit(sampler: MaskGITSampler, logits_fn, batch_size, seq_len, labels=None, null_label=None,
                      generator=None) -> torch.Tensor:
    """The MaskGIT decoding loop as it was before re-masking existed (the behaviour ``remask=none`` keeps)."""
    masked_after = sampler.masked_counts(seq_len)
    tokens = torch.full((batch_size, seq_len), sampler.mask_token_id, dtype=torch.long)
    masked = torch.ones(batch_size, seq_len, dtype=torch.bool)
    steps = sampler.num_inference_steps
    for k in range(steps):
        logits = guided(logits_fn, (tokens,), labels, null_label, sampler.guidance_scale).float()
        if sampler.mask_token_id < logits.shape[-1]:
            logits[..., sampler.mask_token_id] = float("-inf")
        sampled = sample_tokens(logits, sampler.temperature, generator)
        confidence = torch.log_softmax(logits, dim=-1).gather(-1, sampled[..., None]).squeeze(-1)
        noise_scale = sampler.randomness * (1.0 - k / steps)
        if noise_scale > 0:
            u = torch.rand(confidence.shape, generator=generator)
            confidence = confidence - noise_scale * torch.log(-torch.log(u.clamp(1e-6, 1 - 1e-6)))
        confidence = confidence.masked_fill(~masked, float("inf"))
        keep = torch.topk(confidence, seq_len - masked_after[k], dim=1).indices
        revealed = torch.zeros_like(masked).scatter_(1, keep, True)
        tokens = torch.where(revealed & masked, sampled, tokens)
        masked = ~revealed
    return tokens


# -- the option off is the old sampler ---------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 16])
@pytest.mark.parametrize(("temperature", "randomness", "scale"), [(1.0, 1.0, 1.0), (0.0, 0.0, 2.0), (0.7, 2.0, 0.0)])
@pytest.mark.parametrize("remask", [{}, {"remask": "none", "remask_ratio": 0.5},
                                    {"remask": "confidence", "remask_ratio": 0.01}])  # 0.01 re-masks nothing here
def test_off_equals_the_old_sampler(steps, temperature, randomness, scale, remask):
    seq_len, batch = 16, 5
    labels = torch.tensor([0, 1, 2, 3, 0])
    sampler = MaskGITSampler(MASK_ID, steps, "cosine", temperature, randomness, scale, **remask)
    got = sampler.sample(random_net(seq_len), batch, seq_len, labels=labels, null_label=4,
                         generator=torch.Generator().manual_seed(7))
    want = reference_maskgit(sampler, random_net(seq_len), batch, seq_len, labels=labels, null_label=4,
                             generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, want)


def test_model_default_is_off_and_the_options_pass_through():
    model = DiscreteDiffusionPrior(K, [4, 4], num_classes=3, **TINY_NET).eval()
    assert model.remasking == {"remask": "none", "remask_ratio": 0.0}
    assert {"remask", "remask_ratio"} <= sampler_options(model)
    labels = torch.tensor([0, 1, 2])
    old = MaskGITSampler(model.net.mask_token_id, 8)
    want = reference_maskgit(old, model.net, 3, 16, labels, 3, torch.Generator().manual_seed(3))
    assert torch.equal(model.sample_latents(3, labels, generator=torch.Generator().manual_seed(3)),
                       want.reshape(3, 4, 4))
    options = dict(num_inference_steps=8, guidance_scale=2.0, remask="confidence", remask_ratio=0.5)
    got = model.sample_latents(3, labels, generator=torch.Generator().manual_seed(3), **options)
    direct = model.process.make_sampler(temperature=1.0, randomness=1.0, **options).sample(
        model.net, 3, 16, labels=labels, null_label=3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, direct.reshape(3, 4, 4))
    assert not torch.equal(got, model.sample_latents(3, labels, generator=torch.Generator().manual_seed(3),
                                                     **{**options, "remask": "none"}))
    configured = DiscreteDiffusionPrior(K, [4, 4], num_classes=3, remask="confidence", remask_ratio=0.5,
                                        **TINY_NET).eval()
    configured.load_state_dict(model.state_dict())
    assert torch.equal(configured.sample_latents(3, labels, generator=torch.Generator().manual_seed(3),
                                                 num_inference_steps=8, guidance_scale=2.0), got)


# -- with re-masking ----------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_no_mask_left_and_the_schedule_holds(steps, ratio, scale):
    seq_len, batch = 16, 4
    sampler = MaskGITSampler(MASK_ID, steps, guidance_scale=scale, remask="confidence", remask_ratio=ratio)
    fn, inputs = recorded(random_net(seq_len))
    tokens = sampler.sample(fn, batch, seq_len, labels=torch.tensor([0, 1, 2, 3]), null_label=4,
                            generator=torch.Generator().manual_seed(1))
    assert tokens.shape == (batch, seq_len) and not (tokens == MASK_ID).any() and tokens.max() < K
    if scale != 1.0:  # one call carries the conditional and the unconditional halves
        inputs = [x[:batch] for x in inputs]
    masked = torch.stack([*(x == MASK_ID for x in inputs), tokens == MASK_ID])  # before each step, then after
    counts = masked.sum(dim=2)
    expected = [seq_len, *sampler.masked_counts(seq_len)]
    assert torch.equal(counts, torch.tensor(expected)[:, None].expand(-1, batch))
    assert all(a >= b for a, b in zip(expected[:-1], expected[1:], strict=True)) and expected[-1] == 0
    remasked = (masked[1:] & ~masked[:-1]).sum(dim=2)  # revealed before a step, masked after it
    assert torch.equal(remasked, torch.tensor(sampler.remask_counts(seq_len))[:, None].expand(-1, batch))
    assert sampler.remask_counts(seq_len)[-1] == 0
    if ratio >= 0.5 and steps >= 8:
        assert remasked.sum() > 0


def test_remask_counts_follow_the_decaying_ratio():
    sampler = MaskGITSampler(MASK_ID, 4, schedule="linear", remask="confidence", remask_ratio=0.5)
    assert sampler.masked_counts(16) == [12, 8, 4, 0]
    # sigma_k = 0.5 * (1 - k / 3) of the 0, 4, 8, 12 revealed tokens, rounded down
    assert sampler.remask_counts(16) == [0, 1, 1, 0]
    full = MaskGITSampler(MASK_ID, 4, schedule="linear", remask="confidence", remask_ratio=1.0)
    assert full.remask_counts(16) == [0, 2, 2, 0]
    # the share is capped by what stays masked: step 2 of 3 on 4 tokens keeps only one masked
    capped = MaskGITSampler(MASK_ID, 3, schedule="linear", remask="confidence", remask_ratio=1.0)
    assert capped.masked_counts(4) == [2, 1, 0] and capped.remask_counts(4) == [0, 1, 0]
    assert MaskGITSampler(MASK_ID, 4, remask="none", remask_ratio=1.0).remask_counts(16) == [0] * 4
    assert MaskGITSampler(MASK_ID, 1, remask="confidence", remask_ratio=1.0).remask_counts(16) == [0]


def test_the_lowest_confidence_revealed_tokens_are_remasked():
    """Each position's token is fixed; its probability changes every step, so only a recomputed score works."""
    seq_len, batch, steps = 16, 3, 6
    token_of = torch.arange(seq_len) % K
    score_gen = torch.Generator().manual_seed(5)
    scores = [torch.rand(batch, seq_len, generator=score_gen) * 6 for _ in range(steps)]
    inputs: list[torch.Tensor] = []

    def logits_fn(tokens, labels):
        step = len(inputs)
        inputs.append(tokens.clone())
        logits = torch.zeros(*tokens.shape, K)
        return logits.scatter(-1, token_of.expand(batch, -1)[..., None], scores[step][..., None])

    sampler = MaskGITSampler(MASK_ID, steps, temperature=0.0, randomness=1.0, remask="confidence",
                             remask_ratio=1.0)
    tokens = sampler.sample(logits_fn, batch, seq_len, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens, token_of.expand(batch, -1))
    counts = sampler.remask_counts(seq_len)
    assert counts == [0, 0, 1, 2, 1, 0]
    after = [*inputs[1:], tokens]
    for k in range(steps):
        was_revealed = inputs[k] != MASK_ID
        remasked = was_revealed & (after[k] == MASK_ID)
        for b in range(batch):
            # the model's current probability of a revealed token rises with its score at this step
            current = scores[k][b].masked_fill(~was_revealed[b], float("inf"))
            lowest = set(torch.argsort(current)[: counts[k]].tolist())
            assert set(remasked[b].nonzero().flatten().tolist()) == lowest


def test_remasked_tokens_are_predicted_again():
    """A token whose probability drops is re-masked and then redrawn from the next step's prediction."""
    seq_len, steps = 8, 4

    def changing_mind():
        calls = []

        def logits_fn(tokens, labels):
            calls.append(tokens)
            logits = torch.zeros(*tokens.shape, K)
            if len(calls) == 1:  # token 1 first, token 2 afterwards
                logits[:, :, 1] = torch.linspace(4, 5, tokens.shape[1])
            else:
                logits[:, :, 2] = 10.0
            return logits

        return logits_fn

    sampler = MaskGITSampler(MASK_ID, steps, temperature=0.0, randomness=0.0, remask="confidence",
                             remask_ratio=1.0)
    assert sampler.remask_counts(seq_len) == [0, 0, 1, 0]
    tokens = sampler.sample(changing_mind(), 1, seq_len)
    without = MaskGITSampler(MASK_ID, steps, temperature=0.0, randomness=0.0).sample(changing_mind(), 1, seq_len)
    assert without[0].tolist() == [2] * 7 + [1]  # the most confident first token is never revisited
    assert tokens[0].tolist() == [2] * 8


# -- guidance and errors -------------------------------------------------------------------------------
def test_works_with_guidance_in_the_model():
    model = DiscreteDiffusionPrior(K, [4, 4], num_classes=3, guidance_scale=2.5, remask="confidence",
                                   remask_ratio=0.3, **TINY_NET).eval()
    grids = model.sample_latents(4, model.labels_for(4), generator=torch.Generator().manual_seed(0),
                                 num_inference_steps=16)
    assert grids.shape == (4, 4, 4) and grids.min() >= 0 and grids.max() < K


@pytest.mark.parametrize("ratio", [-0.1, 1.5, math.nan, math.inf, "0.1", True, None])
def test_bad_ratios_are_refused(ratio):
    with pytest.raises(ValueError, match="remask_ratio=.* must"):
        MaskGITSampler(MASK_ID, 4, remask="confidence", remask_ratio=ratio)
    with pytest.raises(ValueError, match="remask_ratio"):
        AbsorbingDiffusion(K, MASK_ID).make_sampler(4, remask="confidence", remask_ratio=ratio)
    with pytest.raises(ValueError, match="remask_ratio"):
        DiscreteDiffusionPrior(K, [4, 4], remask="confidence", remask_ratio=ratio, **TINY_NET)
    model = DiscreteDiffusionPrior(K, [4, 4], **TINY_NET)
    if ratio is not None:  # None keeps the model's setting
        with pytest.raises(ValueError, match="remask_ratio"):
            model.sample_latents(2, remask="confidence", remask_ratio=ratio)


def test_confidence_without_a_ratio_is_refused():
    with pytest.raises(ValueError, match="remask_ratio=0 re-masks nothing: set remask_ratio in \\(0, 1\\]"):
        MaskGITSampler(MASK_ID, 4, remask="confidence")
    model = DiscreteDiffusionPrior(K, [4, 4], **TINY_NET)
    with pytest.raises(ValueError, match="re-masks nothing"):
        model.sample_latents(2, remask="confidence")


def test_unknown_mode_and_the_uniform_process_are_refused():
    with pytest.raises(ValueError, match="remask='lowest': choose one of none, confidence"):
        MaskGITSampler(MASK_ID, 4, remask="lowest", remask_ratio=0.1)
    with pytest.raises(ValueError, match="remask='confidence' needs process=absorbing.*use remask=none"):
        DiscreteDiffusionPrior(K, [4, 4], process="uniform", remask="confidence", remask_ratio=0.1, **TINY_NET)
    uniform = DiscreteDiffusionPrior(K, [4, 4], process="uniform", remask_ratio=0.1, **TINY_NET).eval()
    assert uniform.sample_latents(2, generator=torch.Generator().manual_seed(0)).shape == (2, 4, 4)
    with pytest.raises(ValueError, match="the uniform process has no \\[MASK\\] token"):
        uniform.sample_latents(2, remask="confidence", remask_ratio=0.2)
