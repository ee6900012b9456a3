"""`latentgen.evaluate` and `latentgen.compare` on tiny trained checkpoints with a tiny classifier."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from latentgen.compare import compare
from latentgen.data.datamodules import load_split
from latentgen.evaluate import evaluate
from latentgen.metrics.classifier_lookup import default_experiment, resolve_classifier
from latentgen.sampling.from_checkpoint import load_prior
from latentgen.stages.artifacts import sha256_file
from latentgen.stages.checkpoints import load_model
from latentgen.utils.compose import compose_config

from .conftest import data_dir

# small N and few KID subsets keep every evaluation to a few seconds on a CPU
SMALL = ("num_samples=50", "batch_size=50", "nll.max_items=100", "recon.max_items=200", "metrics.kid_subsets=10")
SAMPLE_METRICS = {"fid_lenet", "kid_lenet_mean", "kid_lenet_std", "classifier_score", "class_coverage"}


def _cfg(tmp_path: Path, config: str, *overrides: str):
    """Compose ``conf/<config>`` like the CLI (Hydra config set), outputs and artefacts under ``tmp_path``."""
    cfg = compose_config(["show_progress=false", "wandb.enabled=false", *overrides], config_name=config)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.data_dir = str(data_dir())
    return cfg


@pytest.fixture
def classifier_ckpt(trained_run) -> Path:
    return trained_run("classifier_mnist") / "checkpoints" / "last.ckpt"


def _report(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    for key, value in report["metrics"].items():
        assert isinstance(value, float) and math.isfinite(value), (key, value)
    return report


def test_evaluate_prior_writes_every_metric(tmp_path, trained_run, classifier_ckpt, mnist_dir, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    ckpt = trained_run("pixelcnn_mnist") / "checkpoints" / "last.ckpt"
    cfg = _cfg(tmp_path, "evaluate.yaml", f"ckpt={ckpt}", f"classifier.ckpt_path={classifier_ckpt}",
               *SMALL, "wandb.enabled=true")
    result = evaluate(cfg)
    out = Path(cfg.paths.output_dir)
    report = _report(out)
    m = report["metrics"]
    assert SAMPLE_METRICS | {"nll_nats_per_grid", "bits_per_token", "sampling_time_s"} <= set(m)
    assert m["fid_lenet"] >= 0 and 1.0 <= m["classifier_score"] <= 10.0 and 0.0 < m["class_coverage"] <= 1.0
    assert 0 < m["bits_per_token"] < 2 * math.log2(128)  # a barely trained prior, but a real likelihood
    assert m["nll_nats_per_grid"] == pytest.approx(m["bits_per_token"] * 49 * math.log(2))
    assert m["sampling_time_s"] > 0
    prov = report["provenance"]
    assert prov["ckpt"] == str(ckpt) and prov["num_samples"] == 50 and prov["seed"] == 0
    assert prov["stage1_sha256"] == load_prior(str(ckpt)).hparams.stage1_info["sha256"]
    assert prov["classifier"]["ckpt_path"] == str(classifier_ckpt)
    assert prov["classifier"]["sha256"] == sha256_file(classifier_ckpt)
    assert report["labels"]["fid_lenet"] == "FID-LeNet" and report["labels"]["kid_lenet_mean"].startswith("KID-LeNet")
    md = (out / "report.md").read_text()
    for label in ("FID-LeNet", "KID-LeNet (mean)", "Classifier score", "bits / token", str(classifier_ckpt)):
        assert label in md, label
    assert Image.open(out / "samples.png").size[0] > 28
    logs = list(result["wandb_dir"].glob("*.wandb"))  # offline W&B: the binary log `wandb sync` uploads
    assert len(logs) == 1
    data = logs[0].read_bytes()
    assert b"eval/fid_lenet" in data and json.dumps(m["fid_lenet"]).encode() in data


def test_evaluate_vqvae_gives_psnr_ssim(tmp_path, trained_run, classifier_ckpt, mnist_dir):
    ckpt = trained_run("vqvae_mnist") / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="data=mnist"):
        evaluate(_cfg(tmp_path, "evaluate.yaml", f"ckpt={ckpt}", f"classifier.ckpt_path={classifier_ckpt}"))
    with pytest.raises(ValueError, match=r"sampling options \['num_inference_steps'\] do not apply"):
        evaluate(_cfg(tmp_path, "evaluate.yaml", f"ckpt={ckpt}", "data=mnist", "sampling.num_inference_steps=4"))
    cfg = _cfg(tmp_path, "evaluate.yaml", f"ckpt={ckpt}", "data=mnist", f"classifier.ckpt_path={classifier_ckpt}",
               *SMALL)
    evaluate(cfg)
    report = _report(Path(cfg.paths.output_dir))
    m = report["metrics"]
    assert {"psnr", "ssim", "code_usage"} | SAMPLE_METRICS <= set(m)
    assert -1.0 < m["ssim"] <= 1.0 and 0.0 < m["code_usage"] <= 1.0
    vqvae = load_model(ckpt)  # PSNR of the mean squared error over the first 200 test images
    x = torch.from_numpy(load_split(data_dir(), "mnist", "test")[0][:200]).float() / 255
    with torch.no_grad():
        mse = float(((vqvae.decode(vqvae.quantize(vqvae.encode(x))[0]) - x) ** 2).mean())
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    assert report["provenance"]["stage1_sha256"] == sha256_file(ckpt)
    assert report["provenance"]["data"]["dataset"] == "mnist"
    assert "PSNR (dB)" in (Path(cfg.paths.output_dir) / "report.md").read_text()


def test_compare_priors_of_one_stage1(tmp_path, trained_run, classifier_ckpt, mnist_dir):
    logs = tmp_path / "scanned"
    for exp in ("pixelcnn_mnist", "maskgit_mnist", "vqvae_mnist"):  # the VQ-VAE is no prior: skipped
        dst = logs / exp / "runs" / "2026-01-01_00-00-00" / "checkpoints" / "last.ckpt"
        dst.parent.mkdir(parents=True)
        shutil.copyfile(trained_run(exp) / "checkpoints" / "last.ckpt", dst)
    # an older run of the same experiment: left out by the default runs=latest
    old = logs / "pixelcnn_mnist" / "runs" / "2025-12-31_00-00-00" / "checkpoints" / "last.ckpt"
    old.parent.mkdir(parents=True)
    shutil.copyfile(trained_run("pixelcnn_mnist") / "checkpoints" / "last.ckpt", old)
    os.utime(old, (1e9, 1e9))
    args = (f"logs_dir={logs}", f"classifier.ckpt_path={classifier_ckpt}", *SMALL, "steps.maskgit=[2,4]")
    with pytest.raises(ValueError, match="stage1_sha=ffff matches 0"):
        compare(_cfg(tmp_path, "compare.yaml", *args, "stage1_sha=ffff"))
    with pytest.raises(ValueError, match="runs='newest': use runs=latest"):
        compare(_cfg(tmp_path, "compare.yaml", *args, "runs=newest"))

    cfg = _cfg(tmp_path, "compare.yaml", *args)
    result = compare(cfg)
    sha = load_prior(str(logs / "pixelcnn_mnist/runs/2026-01-01_00-00-00/checkpoints/last.ckpt")).hparams.stage1_info["sha256"]
    assert result["header"]["stage1_sha"] == sha
    rows = {(r["model"], r["sampler"]): r["metrics"] for r in result["rows"]}
    # floor, ceiling, PixelCNN, MaskGIT at 2 and 4 steps and at its own 8
    assert set(rows) == {("Real data (train vs test)", "–"), ("Stage-1 reconstructions", "–"),
                         ("PixelCNN", "ancestral, 49 steps"), ("MaskGIT", "maskgit, 2 steps"),
                         ("MaskGIT", "maskgit, 4 steps"), ("MaskGIT", "maskgit, 8 steps")}
    assert "bits_per_token" in rows[("PixelCNN", "ancestral, 49 steps")]
    assert "bits_per_token" not in rows[("MaskGIT", "maskgit, 4 steps")]
    for metrics in rows.values():
        assert SAMPLE_METRICS <= set(metrics) and all(math.isfinite(v) for v in metrics.values())

    md = result["paths"]["md"].read_text()
    assert "| Model | Run | Sampler / steps | FID-LeNet |" in md
    assert "pixelcnn_mnist/runs/2026-01-01_00-00-00" in md and "maskgit, 2 steps" in md and "vqvae" not in md
    assert "2025-12-31_00-00-00" not in md
    assert sum(line.startswith("| ") for line in md.splitlines()) == 2 + 6  # header, rule, six rows
    assert rows[("Real data (train vs test)", "–")]["fid_lenet"] < rows[("Stage-1 reconstructions", "–")]["fid_lenet"]
    with Image.open(result["paths"]["png"]) as png:
        assert png.format == "PNG" and png.size[0] > 300


def test_missing_classifier_with_auto_train_off_names_the_command(tmp_path, trained_run, mnist_dir):
    ckpt = trained_run("pixelcnn_mnist") / "checkpoints" / "last.ckpt"
    cfg = _cfg(tmp_path, "evaluate.yaml", f"ckpt={ckpt}", "classifier.auto_train=false")
    with pytest.raises(RuntimeError, match=r"python -m latentgen.train \+experiment=classifier_mnist\n"):
        evaluate(cfg)
    assert not (Path(cfg.paths.output_dir) / "report.json").exists()


def test_classifier_is_trained_once_then_reused(tmp_path, mnist_dir, caplog):
    caplog.set_level(logging.INFO)
    cfg = _cfg(tmp_path, "evaluate.yaml", "ckpt=unused", "classifier.debug=limit")
    first = resolve_classifier(cfg.classifier, cfg.paths, "mnist")
    second = resolve_classifier(cfg.classifier, cfg.paths, "mnist")
    assert first.ckpt_path == second.ckpt_path and first.sha256 == second.sha256
    assert first.ckpt_path.parent.parent == Path(cfg.paths.artifact_dir) / "classifier"
    assert caplog.text.count("Training classifier (classifier_mnist)") == 1
    assert "Reusing classifier artefact" in caplog.text
    assert first.extractor.num_classes == 10


def test_default_classifier_follows_the_dataset():
    assert default_experiment("mnist") == "classifier_mnist"
    assert default_experiment("fashion-mnist") == "classifier_fashion_mnist"
    with pytest.raises(ValueError, match="classifier.ckpt_path"):
        default_experiment("cifar-10")
