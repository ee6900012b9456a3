"""Behaviour tests for the autoregressive / bidirectional priors and AR sampling."""

from __future__ import annotations

import math

import pytest
import torch

from latentgen.nets.pixelcnn import GatedPixelCNN
from latentgen.nets.transformer import BidirectionalTransformer, CausalTransformer
from latentgen.sampling.autoregressive import (
    filter_logits,
    sample_from_logits,
    sample_gpt,
    sample_pixelcnn,
)


def _dependency(emb: torch.nn.Module, outputs, tokens: torch.Tensor) -> torch.Tensor:
    """Matrix D[i, j] = |d out_i / d embedding_j|, summed over batch and channels.

    ``outputs(tokens)`` returns one scalar per output position, shape [B, n_out].
    All rows come from one backward pass: the batch is replicated once per
    output position and copy ``i`` only back-propagates output ``i``.
    """
    captured: dict[str, torch.Tensor] = {}
    handle = emb.register_forward_hook(lambda _m, _i, out: captured.setdefault("emb", out))
    b = tokens.shape[0]
    n_pos = tokens[0].numel()
    try:
        out = outputs(tokens.repeat(n_pos, *([1] * (tokens.dim() - 1))))
    finally:
        handle.remove()
    n_out = out.shape[1]
    assert n_out == n_pos
    diagonal = out.view(n_out, b, n_out).diagonal(dim1=0, dim2=2).sum()
    (grad,) = torch.autograd.grad(diagonal, captured["emb"])
    return grad.reshape(n_out, b, n_pos, -1).abs().sum(dim=(1, 3))


def _pixelcnn_dependency(net: GatedPixelCNN, size: int) -> torch.Tensor:
    torch.manual_seed(0)
    tokens = torch.randint(0, net.num_tokens, (3, size, size))
    return _dependency(net.embedding, lambda t: net(t).sum(1).flatten(1), tokens)


@pytest.mark.parametrize("kernel_size,num_layers", [(3, 6), (5, 4)])
def test_pixelcnn_is_causal_without_blind_spot(kernel_size: int, num_layers: int) -> None:
    torch.manual_seed(1)
    net = GatedPixelCNN(5, hidden_channels=16, num_layers=num_layers, kernel_size=kernel_size)
    dep = _pixelcnn_dependency(net.double(), 7)
    n = dep.shape[0]
    future = torch.ones(n, n, dtype=torch.bool).triu()  # j >= i, current position included
    assert torch.all(dep[future] == 0), "logits depend on the current or a future position"
    # Deep enough nets cover every earlier position, including those up-right of i.
    assert torch.all(dep[~future] > 0), "some earlier positions are outside the receptive field"


def test_pixelcnn_covers_up_right_position_of_shallow_net() -> None:
    torch.manual_seed(2)
    net = GatedPixelCNN(5, hidden_channels=16, num_layers=2, kernel_size=3).double()
    dep = _pixelcnn_dependency(net, 7)
    i = 5 * 7 + 3  # (r, c) = (5, 3)
    # Up-right positions (the blind spot of a single masked stack) are covered.
    for r, c in [(4, 5), (4, 4), (3, 5), (2, 3), (5, 1), (5, 2)]:
        assert dep[i, r * 7 + c] > 0, f"position {(r, c)} missing from receptive field"
    # Two 3x3 layers reach three rows up and two columns sideways, no further.
    assert dep[i, 1 * 7 + 3] == 0 and dep[i, 4 * 7 + 6] == 0 and dep[i, 5 * 7 + 0] == 0
    assert torch.all(dep[i, i:] == 0)


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (14, 14), (5, 9)])
def test_pixelcnn_shapes_and_conditioning(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = GatedPixelCNN(6, num_classes=3, hidden_channels=8, num_layers=2, kernel_size=3)
    tokens = torch.randint(0, 6, (2, *size))
    labels = torch.tensor([0, 2])
    logits = net(tokens, labels)
    assert logits.shape == (2, 6, *size)
    other = net(tokens, torch.tensor([1, 1]))
    assert not torch.allclose(logits, other), "labels have no effect"
    with pytest.raises(ValueError, match="labels are required"):
        net(tokens)
    with pytest.raises(ValueError, match="tokens must lie"):
        net(torch.full((1, *size), 6), labels[:1])


def test_pixelcnn_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        GatedPixelCNN(4, kernel_size=4)


def _tiny_gpt(num_classes: int | None = None, seq_len: int = 12) -> CausalTransformer:
    torch.manual_seed(0)
    net = CausalTransformer(7, seq_len, num_classes=num_classes, d_model=32, n_layers=2, n_heads=4)
    return net.double()


def test_gpt_is_causal() -> None:
    net = _tiny_gpt(num_classes=3)
    tokens = torch.randint(0, 7, (2, 12))
    labels = torch.tensor([0, 2])

    dep = _dependency(net.tok_emb, lambda t: net(t, labels.repeat(12)).sum(-1), tokens)
    future = torch.ones(12, 12, dtype=torch.bool).triu()
    assert torch.all(dep[future] == 0), "logits[:, i] depends on tokens[:, i:]"
    assert torch.all(dep[~future] > 0), "logits[:, i] ignores some of tokens[:, :i]"
    # logits[:, 0] only sees the class start token.
    out = net(tokens, labels)
    assert not torch.allclose(out[:, 0], net(tokens, torch.tensor([1, 1]))[:, 0])


def test_gpt_prefix_forward_and_cache_match_full_forward() -> None:
    net = _tiny_gpt().eval()
    tokens = torch.randint(0, 7, (3, 12))
    full = net(tokens)
    assert full.shape == (3, 12, 7)
    assert net(tokens[:, :0]).shape == (3, 0, 7)
    torch.testing.assert_close(net(tokens[:, :5]), full[:, :5])
    cache = net.init_cache(3)
    steps = [net.decode(tokens[:, :4], cache)]  # start + 4 tokens -> logits for token 4
    for i in range(4, 11):
        steps.append(net.decode(tokens[:, i : i + 1], cache))
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 4:])
    assert cache.length == 12
    with pytest.raises(ValueError, match="exceeds seq_len"):
        net.decode(tokens[:, 11:], cache)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"temperature": 0.7, "top_k": 3},
        {"temperature": 1.3, "top_p": 0.8},
        {"top_k": 5, "top_p": 0.6},
    ],
)
@pytest.mark.parametrize("prefix_len", [0, 1, 5])
def test_gpt_cached_sampling_matches_uncached(kwargs: dict, prefix_len: int) -> None:
    net = _tiny_gpt(num_classes=2)
    net.train()
    labels = torch.tensor([0, 1, 1, 0])
    prefix = torch.randint(0, 7, (4, prefix_len), generator=torch.Generator().manual_seed(9))
    out = {}
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(123)
        out[use_cache] = sample_gpt(
            net, 4, labels=labels, prefix=prefix, use_cache=use_cache, generator=gen, **kwargs
        )
    assert net.training, "training mode was not restored"
    assert out[True].shape == (4, 12) and out[True].dtype == torch.long
    assert torch.equal(out[True], out[False])
    assert torch.equal(out[True][:, :prefix_len], prefix)
    assert out[True][:, prefix_len:].unique().numel() > 1, "samples are degenerate"
    other = sample_gpt(
        net, 4, labels=labels, prefix=prefix, generator=torch.Generator().manual_seed(7)
    )
    assert not torch.equal(other, out[True])


def test_gpt_sampling_respects_top_k_one() -> None:
    net = _tiny_gpt().eval()
    sample = sample_gpt(net, 3, top_k=1, generator=torch.Generator().manual_seed(0))
    # Greedy decoding: every token is the argmax given its context.
    assert torch.equal(net(sample).argmax(-1), sample)


def test_gpt_sampling_argument_errors() -> None:
    net = _tiny_gpt()
    with pytest.raises(ValueError, match="temperature"):
        sample_gpt(net, 2, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        sample_gpt(net, 2, top_p=1.5)
    with pytest.raises(ValueError, match="exceeds"):
        sample_gpt(net, 2, prefix=torch.zeros(2, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        sample_gpt(net, 2, labels=1)


@pytest.mark.parametrize("use_cache", [True, False])
def test_gpt_sampling_checks_prefix_and_label_ids_once(use_cache: bool) -> None:
    """The loop skips the per-step id checks for its own samples, but bad user ids still fail clearly."""
    net = _tiny_gpt()
    bad_prefix = torch.tensor([[0, 3], [1, net.num_tokens]])
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, \d+\), got range \[0, \d+\]"):
        sample_gpt(net, 2, prefix=bad_prefix, use_cache=use_cache)
    conditional = _tiny_gpt(num_classes=3)
    with pytest.raises(ValueError, match="labels must lie in"):
        sample_gpt(conditional, 2, labels=torch.tensor([0, 3]), use_cache=use_cache)


def test_pixelcnn_sampling_prefix_and_seed() -> None:
    torch.manual_seed(0)
    net = GatedPixelCNN(5, num_classes=2, hidden_channels=8, num_layers=2, kernel_size=3)
    prefix = torch.randint(0, 5, (2, 10))
    a = sample_pixelcnn(
        net,
        2,
        (4, 5),
        labels=1,
        prefix=prefix,
        top_p=0.9,
        generator=torch.Generator().manual_seed(1),
    )
    b = sample_pixelcnn(
        net,
        2,
        (4, 5),
        labels=1,
        prefix=prefix,
        top_p=0.9,
        generator=torch.Generator().manual_seed(1),
    )
    assert a.shape == (2, 4, 5) and torch.equal(a, b)
    assert torch.equal(a.reshape(2, -1)[:, :10], prefix)
    assert net.training
    greedy = sample_pixelcnn(net.eval(), 2, (4, 5), labels=torch.tensor([0, 1]), top_k=1)
    assert torch.equal(net(greedy, torch.tensor([0, 1])).argmax(1), greedy)
    with pytest.raises(ValueError, match="exceeds"):
        sample_pixelcnn(net, 2, (4, 5), labels=0, prefix=torch.zeros(2, 21, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens must lie"):
        sample_pixelcnn(net, 2, (4, 5), labels=0, prefix=torch.full((2, 3), 5))
    with pytest.raises(ValueError, match="labels must lie"):
        sample_pixelcnn(net, 2, (4, 5), labels=2)


def test_bidirectional_is_non_causal_and_handles_mask_and_null_class() -> None:
    torch.manual_seed(0)
    net = BidirectionalTransformer(6, 10, num_classes=3, d_model=32, n_layers=2, n_heads=4)
    net = net.double().eval()
    assert net.mask_token_id == 6 and net.null_label == 3
    tokens = torch.randint(0, 7, (2, 10))
    tokens[:, 3] = net.mask_token_id

    labels = torch.tensor([0, 1]).repeat(10)
    dep = _dependency(net.tok_emb, lambda t: net(t, labels).sum(-1), tokens)
    assert torch.all(dep > 0), "some output does not see every input position"
    logits = net(tokens)
    assert logits.shape == (2, 10, 6), "logits must not cover the mask id"
    torch.testing.assert_close(logits, net(tokens, torch.full((2,), net.null_label)))
    assert not torch.allclose(logits, net(tokens, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="labels must lie"):
        net(tokens, torch.full((2,), 4))
    plain = BidirectionalTransformer(6, 10, d_model=16, n_layers=1, n_heads=2, use_mask_token=False)
    assert plain.mask_token_id is None and plain.null_label is None
    with pytest.raises(ValueError, match="use_mask_token=True"):
        plain(tokens)
    assert plain(tokens.clamp(max=5)).shape == (2, 10, 6)


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0], [0.0, -1.0, 2.0, 2.0, 1.0]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, False, False, True], [False, False, True, True, False]]
    assert torch.equal(filter_logits(logits, top_k=10), logits)

    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    lp = probs.log()
    assert filter_logits(lp, top_p=0.7).isfinite().tolist() == [[False, True, False, True]]
    assert filter_logits(lp, top_p=0.81).isfinite().tolist() == [[True, True, False, True]]
    assert filter_logits(lp, top_p=0.5).isfinite().tolist() == [[False, True, False, False]]
    assert filter_logits(lp, top_p=0.01).isfinite().tolist() == [[False, True, False, False]]
    assert torch.equal(filter_logits(lp, top_p=1.0), lp)
    assert filter_logits(lp, top_k=3, top_p=0.9).isfinite().tolist() == [[True, True, False, True]]
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(lp, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(lp, top_p=0.0)


def test_sample_from_logits_matches_distribution() -> None:
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    logits = probs.log().expand(20000, 4)
    draws = sample_from_logits(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert freq[1] == 0
    assert torch.allclose(freq, probs.double(), atol=4 * math.sqrt(0.25 / 20000))
    top = sample_from_logits(logits, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.all(top == 2)
