"""Vector quantiser: round trip, straight-through gradients, EMA, dead-code restart, k-means init."""

from __future__ import annotations

import pytest
import torch

from latentgen.quantize.vector_quantizer import VectorQuantizer, codebook_usage, kmeans


def test_indices_to_vectors_round_trip_in_eval():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=16, dim=8).eval()
    z = torch.randn(4, 8, 5, 6)
    z_q, idx, loss = vq.quantize(z)
    assert idx.shape == (4, 5, 6) and idx.dtype == torch.long
    assert torch.allclose(vq.indices_to_vectors(idx), z_q, atol=1e-6)
    # every output vector is the nearest codebook entry
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(torch.cdist(flat, vq.codebook).argmin(1), idx.reshape(-1))
    assert loss.item() > 0


def test_straight_through_gradient_reaches_encoder_output():
    vq = VectorQuantizer(num_codes=8, dim=4, ema=False)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, _, loss = vq(z)
    (z_q.sum() + loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_ema_moves_codes_towards_assigned_encodings():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=4, dim=2, decay=0.5, dead_code_threshold=0).train()
    z = torch.tensor([3.0, -3.0]).view(1, 2, 1, 1).repeat(8, 1, 1, 1)
    for _ in range(30):
        _, idx, _ = vq(z)
    assert torch.allclose(vq.codebook[idx[0, 0, 0]], torch.tensor([3.0, -3.0]), atol=1e-2)


def _clustered_data(n_clusters=64, dim=8, per=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 3 + 6.0  # far from the codebook init
    x = centres.repeat_interleave(per, 0) + 0.05 * torch.randn(n_clusters * per, dim, generator=g)
    return x.view(-1, dim, 1, 1)


def _train_usage(dead_code_threshold: float) -> float:
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=64, dim=8, decay=0.9, dead_code_threshold=dead_code_threshold).train()
    data = _clustered_data()
    for _ in range(100):
        vq(data[torch.randperm(len(data))[:256]])
    _, idx, _ = vq.eval()(data)
    return codebook_usage(idx, 64)[1].item()


def test_dead_code_restart_keeps_usage_where_plain_vq_collapses():
    plain = _train_usage(dead_code_threshold=0.0)
    restarted = _train_usage(dead_code_threshold=1.0)
    assert plain < 0.25, f"plain VQ unexpectedly used {plain:.0%} of codes"
    assert restarted > 0.8, f"with restarts only {restarted:.0%} of codes in use"


def test_kmeans_init_places_codes_on_clusters():
    torch.manual_seed(0)
    data = _clustered_data(n_clusters=8, per=32)
    vq = VectorQuantizer(num_codes=8, dim=8, kmeans_init=True, dead_code_threshold=0).train()
    assert not bool(vq.initialized)
    vq(data)
    assert bool(vq.initialized)
    _, idx, _ = vq.eval()(data)
    assert codebook_usage(idx, 8)[1].item() >= 0.75
    centroids = kmeans(data.view(-1, 8), 4, iters=5)
    assert centroids.shape == (4, 8)


def test_bad_inputs_give_clear_errors():
    vq = VectorQuantizer(num_codes=8, dim=4)
    with pytest.raises(ValueError, match="quantiser dim"):
        vq(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="codebook has 8 codes"):
        vq.indices_to_vectors(torch.full((1, 2, 2), 8))
    with pytest.raises(ValueError, match="at least 2"):
        VectorQuantizer(num_codes=1, dim=4)
