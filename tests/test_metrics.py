"""FID/KID-LeNet, the classifier score and the offline Inception check, on real MNIST features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torchmetrics.image.fid import FrechetInceptionDistance

from latentgen.data.datamodules import load_split
from latentgen.metrics import generative
from latentgen.metrics.features import LeNetFeatureExtractor
from latentgen.metrics.generative import (
    class_coverage,
    classifier_score,
    display_name,
    fid_kid,
    inception_available,
    inception_unavailable_reason,
)
from latentgen.models.classifier import Classifier

KEYS = {"fid_lenet", "kid_lenet_mean", "kid_lenet_std"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small CPU models run several times faster single-threaded on a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist_test(mnist_dir) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split(mnist_dir, "mnist", "test")
    return torch.from_numpy(images).float() / 255.0, torch.from_numpy(labels)


@pytest.fixture(scope="session")
def trained(mnist_dir, mnist_test) -> Classifier:
    """A small LeNet after 250 Adam steps on MNIST train (about 96% test accuracy, ~8 s)."""
    images, labels = load_split(mnist_dir, "mnist", "train")
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    torch.manual_seed(0)
    model = Classifier(channels=(8, 16), dropout=0.0, shift=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures are set up before the module's one_thread
    try:
        for _ in range(250):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(x[idx].float() / 255.0), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    test_x, test_y = mnist_test
    with torch.no_grad():
        acc = (model(test_x[:2000]).argmax(1) == test_y[:2000]).float().mean().item()
    assert acc > 0.93, f"fixture classifier only reached {acc:.3f}"
    return model


@pytest.fixture(scope="session")
def extractor(trained) -> LeNetFeatureExtractor:
    return LeNetFeatureExtractor(trained)


@pytest.fixture(scope="session")
def real_pair(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    x = mnist_test[0]
    return x[:1000], x[1000:2000]


def noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0.0, 1.0)


def test_fid_small_for_held_out_real_and_large_for_noise(extractor, real_pair):
    real, held_out = real_pair
    same = fid_kid(real, held_out, extractor, kid_subsets=5)
    noise = fid_kid(real, torch.rand(held_out.shape, generator=torch.Generator().manual_seed(0)),
                    extractor, kid_subsets=5)
    assert set(same) == set(noise) == KEYS
    assert 0.0 <= same["fid_lenet"] < 0.05 * noise["fid_lenet"], (same, noise)
    assert abs(same["kid_lenet_mean"]) < 0.05 * noise["kid_lenet_mean"], (same, noise)
    assert fid_kid(real, real, extractor, kid_subsets=1)["fid_lenet"] < 1e-6 * noise["fid_lenet"]


def test_fid_grows_monotonically_with_noise(extractor, real_pair):
    real, held_out = real_pair
    fids = [fid_kid(real, noisy(held_out, s), extractor, kid_subsets=1)["fid_lenet"]
            for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids
    assert fids[-1] > 20 * fids[0], fids


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU units: singular cov
def test_fid_matches_float64_reference_formula(extractor, real_pair):
    real, held_out = real_pair[0][:300], noisy(real_pair[1][:300], 0.2)
    f1, f2 = (extractor(x).double().numpy() for x in (real, held_out))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    got = fid_kid(real, held_out, extractor, kid_subsets=1)["fid_lenet"]
    assert got == pytest.approx(expected, rel=1e-4)
    # the extractor also plugs straight into torchmetrics as a custom feature module
    metric = FrechetInceptionDistance(feature=extractor, normalize=True)
    metric.update(real, real=True)
    metric.update(held_out, real=False)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-3)


def test_kid_works_for_50_samples(extractor, real_pair):
    real, held_out = real_pair[0][:50], real_pair[1][:50]
    same = fid_kid(real, held_out, extractor)
    noise = fid_kid(real, noisy(held_out, 0.8), extractor)
    assert all(np.isfinite(v) for v in (*same.values(), *noise.values()))
    assert noise["kid_lenet_mean"] > 0
    assert abs(same["kid_lenet_mean"]) < 0.25 * noise["kid_lenet_mean"], (same, noise)
    assert same["kid_lenet_std"] == 0.0  # subset size 50 of 50: a single subset
    sub = fid_kid(real, noisy(held_out, 0.8), extractor, kid_subset_size=20, kid_subsets=10)
    assert sub["kid_lenet_std"] > 0
    assert sub == fid_kid(real, noisy(held_out, 0.8), extractor, kid_subset_size=20, kid_subsets=10)


def test_fid_kid_input_errors(extractor, real_pair):
    real = real_pair[0][:50]
    with pytest.raises(ValueError, match=r"kid_subset_size=100 must be in \[2, 50\]"):
        fid_kid(real, real, extractor, kid_subset_size=100)
    with pytest.raises(ValueError, match="at least 2"):
        fid_kid(real, real[:1], extractor)
    with pytest.raises(ValueError, match="differ in shape"):
        fid_kid(real, torch.rand(50, 1, 32, 32), extractor)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        fid_kid(real, real * 2 - 1, extractor)


def test_classifier_score_and_coverage(extractor, trained, mnist_test):
    x = mnist_test[0][:2000]
    score = classifier_score(x, extractor)
    assert 8.5 < score["classifier_score"] <= 10.0, score
    assert score["class_coverage"] == 1.0
    assert score["class_entropy_normalized"] > 0.98
    # a bare module returning logits gives the same numbers, and its train/eval mode is restored
    trained.train()
    assert classifier_score(x, trained)["classifier_score"] == pytest.approx(score["classifier_score"], rel=1e-5)
    assert trained.training
    trained.eval()

    repeated = classifier_score(x[:1].expand(200, -1, -1, -1), extractor)
    assert repeated["classifier_score"] == pytest.approx(1.0, abs=1e-9)
    assert repeated["class_coverage"] == pytest.approx(0.1)
    assert repeated["class_entropy"] == 0.0

    split = classifier_score(x, extractor, splits=4)
    assert split["classifier_score_std"] > 0 and split["classifier_score"] < score["classifier_score"] + 0.2
    assert class_coverage(x[:500], extractor)["class_coverage"] == 1.0
    with pytest.raises(ValueError, match="splits=0"):
        classifier_score(x, extractor, splits=0)


def test_display_names_use_lenet_label():
    assert display_name("fid_lenet") == "FID-LeNet"
    assert display_name("kid_lenet_mean").startswith("KID-LeNet")
    assert display_name("unknown_key") == "unknown_key"


def test_inception_available_never_downloads(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    assert inception_available(missing) is False
    reason = inception_unavailable_reason(missing)
    assert "torch-fidelity" in reason or "no Inception weights" in reason

    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"\0" * 16)
    real_find_spec = generative.importlib.util.find_spec

    def find_spec(name, *args):
        return object() if name == "torch_fidelity" else real_find_spec(name, *args)

    monkeypatch.setattr(generative.importlib.util, "find_spec", find_spec)
    assert inception_available(weights) is True
    assert "no Inception weights" in inception_unavailable_reason(missing)
    empty = tmp_path / "empty.pth"
    empty.touch()
    assert "is empty" in inception_unavailable_reason(empty)
    monkeypatch.setenv(generative.INCEPTION_WEIGHTS_ENV, str(weights))
    assert inception_available() is True

    monkeypatch.setattr(generative.importlib.util, "find_spec", lambda name, *a: None)
    assert inception_available(weights) is False
    assert "torch-fidelity is not installed" in inception_unavailable_reason(weights)
