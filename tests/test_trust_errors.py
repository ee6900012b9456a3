"""Clear errors: bad trainer values, a read-only log dir, a damaged IDX header, a missing optimized_metric."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from latentgen.data import DatasetError, read_idx
from latentgen.utils.resolvers import CONF_DIR
from latentgen.utils.run import get_metric_value

from .conftest import TINY

# a process that keeps uid 0 but not the capabilities that let root ignore file permissions
WITHOUT_ROOT_PERMISSION_BYPASS = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "--"]


def _run_cli(args: list[str], cwd: Path, data_dir: Path, log_dir: Path,
             prefix: list[str] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(data_dir), "LATENTGEN_LOG_DIR": str(log_dir),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([*prefix, sys.executable, "-m", "latentgen.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# -- trainer values -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_bad_max_epochs_is_one_clear_error_on_the_cli_even_under_fast_dev_run(tmp_path, mnist_dir):
    res = _run_cli(["+experiment=vqvae_mnist", "debug=fdr", "trainer.max_epochs=abc"], tmp_path, mnist_dir,
                   tmp_path / "logs")
    assert res.returncode == 1, res.stdout[-2000:]
    assert "trainer.max_epochs='abc' is invalid" in res.stderr and "e.g. trainer.max_epochs=10" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


@pytest.mark.parametrize(("debug", "override"), [
    ("fdr", "trainer.max_epochs=abc"), ("limit", "trainer.max_steps=abc"), ("limit", "trainer.limit_val_batches=half"),
    ("limit", "trainer.log_every_n_steps=-1"), ("fdr", "trainer.devices=abc"), ("fdr", "trainer.precision=bf17"),
])
def test_bad_trainer_values_fail_before_anything_is_built(compose_cfg, debug, override):
    from latentgen.train import train
    from latentgen.utils.validate import ConfigError

    key, value = override.split("=")
    cfg = compose_cfg("+experiment=vqvae_mnist", f"debug={debug}", override)
    with pytest.raises(ConfigError, match=rf"{key}=.*{value}.* is invalid: give .*, e\.g\. {key}=") as info:
        train(cfg)
    assert len(str(info.value).splitlines()) == 2, "one line per bad key"
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_every_trainer_setting_in_conf_passes_the_checks(compose_cfg):
    from latentgen.utils.validate import trainer_config_problems

    assert trainer_config_problems(compose_cfg("+experiment=vqvae_mnist").trainer) == []
    for path in sorted(CONF_DIR.rglob("*.yaml")):  # presets, experiments, debug modes
        node = OmegaConf.load(path)
        trainer = node if path.parent.name == "trainer" else node.get("trainer")
        if trainer is not None:
            literal = {k: v for k, v in trainer.items_ex(resolve=False) if not str(v).startswith("${")}
            assert trainer_config_problems(OmegaConf.create(literal)) == [], path


# -- read-only log dir ------------------------------------------------------------------------------
def _permissions_apply(tmp_path: Path, prefix: list[str]) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    denied = subprocess.run([*prefix, "mkdir", str(probe / "x")], capture_output=True).returncode != 0
    probe.rmdir()
    return denied


@pytest.mark.parametrize("multirun", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_read_only_log_dir_is_one_clear_error(tmp_path, mnist_dir, multirun):
    prefix = WITHOUT_ROOT_PERMISSION_BYPASS if os.geteuid() == 0 else []
    if (prefix and not shutil.which("setpriv")) or not _permissions_apply(tmp_path, prefix):
        pytest.skip("cannot run a process that file permissions apply to")
    log_dir = tmp_path / "read_only_logs"
    log_dir.mkdir(mode=0o555)
    res = _run_cli([*(["-m"] if multirun else []), "+experiment=vqvae_mnist", "debug=fdr"], tmp_path, mnist_dir,
                   log_dir, prefix)
    assert res.returncode == 1
    assert f"{log_dir} is not writable" in res.stderr
    assert "paths.log_dir=" in res.stderr and "LATENTGEN_LOG_DIR" in res.stderr
    assert "Traceback" not in res.stderr and "PermissionError" not in res.stderr
    assert not any(log_dir.iterdir())


# -- IDX header -------------------------------------------------------------------------------------
def _labels_with_header_bytes(tmp_path: Path, mnist_dir: Path, type_byte: int, ndim_byte: int) -> Path:
    raw = bytearray(gzip.decompress((mnist_dir / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes()))
    raw[2], raw[3] = type_byte, ndim_byte
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(bytes(raw))
    return path


def test_idx_type_byte_that_does_not_fit_the_payload_is_named(tmp_path, mnist_dir):
    path = _labels_with_header_bytes(tmp_path, mnist_dir, 0x0C, 1)  # int32 instead of uint8
    with pytest.raises(DatasetError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and "type byte 0x0c (int32)" in message and "fits type 0x08 (uint8)" in message
    assert "0x0e (float64)" in message and "downloaded again" in message
    assert "truncated" not in message


def test_damaged_idx_header_gives_no_overflowed_byte_count(tmp_path, mnist_dir):
    path = _labels_with_header_bytes(tmp_path, mnist_dir, 0x0C, 7)  # the header of the reported file
    with pytest.raises(DatasetError) as info:
        read_idx(path)
    message = str(info.value)
    assert "34878097973638215880" not in message
    assert str(path) in message and "header is damaged" in message and "type byte 0x0c (int32)" in message
    assert "accepted type bytes: 0x08 (uint8)" in message and "paths.data_dir" in message


# -- optimized_metric -------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_ending_before_its_first_validation_exits_0_with_a_warning(tmp_path, mnist_dir):
    res = _run_cli(["+experiment=vqvae_mnist", "debug=limit", "logger=csv", "trainer.max_steps=2", "test=false",
                    "extras.print_config=false", *TINY], tmp_path, mnist_dir, tmp_path / "logs")
    assert res.returncode == 0, res.stderr[-3000:]
    output = res.stdout + res.stderr
    assert "optimized_metric=val/recon_loss has no value: this run logged no val/ metric" in output
    assert "NaN" in output


def _metrics_of_run(compose_cfg, tmp_path: Path, *overrides: str) -> dict:
    from latentgen.train import train

    cfg = compose_cfg("+experiment=vqvae_mnist", "debug=limit", "logger=csv", "test=false", *TINY, *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "_".join(overrides))
    metrics, _ = train(cfg)
    return metrics


def test_metric_of_a_run_without_validation_is_nan_with_a_warning(compose_cfg, tmp_path, mnist_dir, caplog):
    for ends_early in ("trainer.max_steps=2", "trainer.limit_val_batches=0"):
        metrics = _metrics_of_run(compose_cfg, tmp_path, ends_early)
        assert "train/loss" in metrics and not any(k.startswith("val/") for k in metrics)
        caplog.clear()
        assert math.isnan(get_metric_value(metrics, "val/recon_loss"))
        assert "optimized_metric=val/recon_loss has no value: this run logged no val/ metric" in caplog.text


def test_misspelt_metric_after_validation_is_a_clear_error(compose_cfg, tmp_path, mnist_dir):
    from latentgen.utils.validate import ConfigError

    metrics = _metrics_of_run(compose_cfg, tmp_path, "trainer.max_steps=4")  # one epoch of 4 batches, then validation
    assert get_metric_value(metrics, "val/recon_loss") == pytest.approx(float(metrics["val/recon_loss"]))
    for typo in ("val/recon_los", "vall/recon_loss"):
        with pytest.raises(ConfigError, match=rf"optimized_metric={typo} was not logged.*val/recon_loss"):
            get_metric_value(metrics, typo)
    assert math.isnan(get_metric_value(metrics, "test/psnr"))  # testing was off
