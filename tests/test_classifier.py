"""LeNet classifier: network shapes and errors, augmentation, a short Hydra fit, loading its checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from latentgen.metrics.features import LeNetFeatureExtractor, load_classifier
from latentgen.models.classifier import Classifier
from latentgen.nets.lenet import LeNet, random_shift
from latentgen.train import train


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_lenet_shapes(channels, size):
    net = LeNet(in_channels=channels, image_size=size, feature_dim=64, num_classes=7)
    x = torch.rand(5, channels, size, size)
    assert net.features(x).shape == (5, 64)
    assert net(x).shape == (5, 7)
    assert (net.features(x) >= 0).all()  # post-ReLU penultimate layer


def test_lenet_rejects_wrong_input_with_a_fix():
    net = LeNet()
    with pytest.raises(ValueError, match=r"in_channels/image_size"):
        net(torch.rand(2, 3, 32, 32))
    with pytest.raises(TypeError, match="divide uint8 images by 255"):
        net(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of 4"):
        LeNet(image_size=30)
    with pytest.raises(ValueError, match="two positive conv widths"):
        LeNet(channels=(8,))


def test_random_shift_translates_each_image_within_bounds():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    g = torch.Generator().manual_seed(0)
    y = random_shift(x, 2, generator=g)
    assert y.shape == x.shape
    assert torch.equal(y.sum((1, 2, 3)), torch.ones(64))  # pixel moved, not lost
    pos = y[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 28, pos % 28
    assert ((rows - 14).abs() <= 2).all() and ((cols - 14).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 5  # offsets differ per image
    assert random_shift(x, 0) is x


def test_classifier_validates_hyperparameters():
    with pytest.raises(ValueError, match="model.shift"):
        Classifier(shift=20)
    with pytest.raises(ValueError, match="learning rate"):
        Classifier(lr=0.0)


def test_short_fit_logs_accuracy_and_checkpoint_loads_as_feature_extractor(compose_cfg, mnist_dir):
    cfg = compose_cfg("+experiment=classifier_mnist", "debug=limit", "logger=csv")
    assert cfg.stage == "classifier" and cfg.optimized_metric == "val/loss"
    metrics, objects = train(cfg)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert key in metrics, key
    assert 0.0 <= float(metrics["val/acc"]) <= 1.0
    assert float(metrics["val/acc"]) > 0.2  # a dozen AdamW steps already beat chance (0.1)
    assert objects["trainer"].global_step == cfg.trainer.max_epochs * cfg.trainer.limit_train_batches

    out = Path(cfg.paths.output_dir)
    with open(out / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["val/acc"] for r in rows if r.get("val/acc")], "val/acc missing from metrics.csv"

    ckpt = out / "checkpoints" / "last.ckpt"
    extractor = LeNetFeatureExtractor(ckpt)
    assert extractor.feature_name == "LeNet"
    assert extractor.num_features == cfg.model.feature_dim == 128
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training and not extractor.net.training

    x = torch.rand(6, 1, 28, 28)
    feats = extractor(x)
    assert feats.shape == (6, 128) and feats.dtype == torch.float32
    reference = Classifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(feats, reference.features(x))
        torch.testing.assert_close(extractor.logits(x), reference(x))
    # uint8 input in [0, 255] gives the same features as the float image
    x8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(extractor(x8), extractor(x8.float() / 255))


def test_feature_extractor_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\+experiment=classifier_mnist"):
        load_classifier(tmp_path / "missing.ckpt")
    bogus = tmp_path / "bogus.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, bogus)
    with pytest.raises(ValueError, match="not a latentgen Classifier checkpoint"):
        load_classifier(bogus)
    with pytest.raises(TypeError, match="checkpoint path, Classifier or LeNet"):
        LeNetFeatureExtractor(torch.nn.Linear(2, 2))

    extractor = LeNetFeatureExtractor(Classifier())
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        extractor(torch.rand(2, 1, 28, 28) * 2 - 1)
    with pytest.raises(ValueError, match="NaN or inf"):
        extractor(torch.full((2, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="same dataset"):
        extractor(torch.rand(2, 3, 32, 32))
