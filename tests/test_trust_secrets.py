"""Secrets are never written: which keys count as secrets, and real CLI runs grepped for their values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from latentgen.utils.config_tree import print_config_tree, scrub_secrets
from latentgen.utils.resolvers import CONF_DIR

from .conftest import TINY

SECRET_KEYS = ["password", "db_password", "DB_PASSWORD", "passwd", "client_secret", "secret", "api_key",
               "apikey", "wandb_api_key", "apiKey", "my-api-key", "token", "auth_token", "access_token",
               "hf_token", "github-token", "refreshToken"]
MODEL_KEYS = ["num_tokens", "max_tokens", "tokens", "tokenizer", "mask_token", "pad_token", "bos_token",
              "eos_token", "use_mask_token", "mask_token_id", "bits_per_token", "token_dtype", "key", "monkey"]


def _conf_keys() -> set[str]:
    """Every key of every YAML file under conf/."""
    keys: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                keys.add(str(key))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in CONF_DIR.rglob("*.yaml"):
        walk(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    return keys


def test_secret_rule_on_key_names():
    from latentgen.utils.secrets import is_secret_key

    assert [k for k in SECRET_KEYS if not is_secret_key(k)] == []
    assert [k for k in MODEL_KEYS if is_secret_key(k)] == []
    conf_keys = _conf_keys()
    assert "num_tokens" in conf_keys
    # the only secret-looking key in conf/ is the placeholder that lets a W&B key reach its refusal
    assert sorted(k for k in conf_keys if is_secret_key(k)) == ["api_key"]


def test_config_tree_masks_top_level_and_nested_secrets_but_not_num_tokens(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg("+experiment=maskgit_mnist", "+db_password=hunter2-top", "+nested.hf_token=tok-nested",
                      "+nested.vocab.pad_token=7")
    print_config_tree(cfg, save_to=tmp_path / "config_tree.log")
    for text in ((tmp_path / "config_tree.log").read_text(), capsys.readouterr().out):
        assert "hunter2-top" not in text and "tok-nested" not in text
        assert "num_tokens: 256" in text and "pad_token: 7" in text
    scrubbed = scrub_secrets({"db_password": "x", "model": {"num_tokens": 256}, "a": [{"api_key": {"k": 1}}]})
    assert scrubbed == {"db_password": "***", "model": {"num_tokens": 256}, "a": [{"api_key": "***"}]}


def _run_cli(args: list[str], tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(data_dir), "LATENTGEN_LOG_DIR": str(tmp_path / "logs"),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "latentgen.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def _files_holding(root: Path, values: list[str]) -> list[str]:
    """``file: value`` for each file under ``root`` (binary W&B logs included) holding a value."""
    return [f"{path}: {value}" for path in sorted(root.rglob("*")) if path.is_file()
            for value in values if value.encode() in path.read_bytes()]


def test_cli_sweep_never_writes_secret_values(tmp_path, mnist_dir):
    secrets = ["hunter2-pw-7f3a", "sk-apikey-91bd", "tok-auth-55e0", "ghp-inline-c4d2", "env-key-0b6e"]
    res = _run_cli(["-m", "+experiment=vqvae_mnist", "debug=limit", "logger=wandb", "trainer.max_steps=4",
                    "test=false", *TINY, f"+db_password={secrets[0]}", f"+nested.my_api_key={secrets[1]}",
                    f"+nested.auth_token={secrets[2]}", f"+creds={{github_token: {secrets[3]}}}",
                    f"+hydra.job.env_set.WANDB_API_KEY={secrets[4]}"], tmp_path, mnist_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = tmp_path / "logs"
    job = next(logs.glob("*/multiruns/*/0"))
    wandb_logs = list(job.glob("wandb/offline-run-*/run-*.wandb"))
    assert (job / ".hydra" / "hydra.yaml").is_file() and (job / "config_tree.log").is_file() and wandb_logs
    assert _files_holding(logs, secrets) == []
    # masked, not dropped: the keys are there, and W&B still records the other arguments
    assert "db_password: '***'" in (job / ".hydra" / "config.yaml").read_text()
    assert "+nested.my_api_key=***" in (job.parent / "multirun.yaml").read_text()
    assert b"+nested.auth_token=***" in wandb_logs[0].read_bytes()
    assert b"trainer.max_steps=4" in wandb_logs[0].read_bytes()


def test_wandb_api_key_on_the_command_line_is_refused_without_echo(tmp_path, mnist_dir):
    key = "wandb-key-3c9e7d1a"
    res = _run_cli(["+experiment=vqvae_mnist", "debug=limit", "logger=wandb", f"logger.wandb.api_key={key}"],
                   tmp_path, mnist_dir)
    assert res.returncode == 1
    assert "logger.wandb.api_key is refused" in res.stderr and "WANDB_API_KEY" in res.stderr
    assert "wandb login" in res.stderr and "Traceback" not in res.stderr
    assert key not in res.stdout + res.stderr
    assert _files_holding(tmp_path / "logs", [key]) == []
    assert not list((tmp_path / "logs").rglob("*.ckpt")), "refused before training"


@pytest.mark.parametrize("override", ["+logger.wandb.settings.api_key=x", "+logger.wandb.password=x"])
def test_any_secret_in_the_logger_config_is_refused(compose_cfg, override):
    from latentgen.train import train
    from latentgen.utils.validate import ConfigError

    cfg = compose_cfg("+experiment=vqvae_mnist", "debug=fdr", "logger=wandb", override)
    with pytest.raises(ConfigError, match="WANDB_API_KEY"):
        train(cfg)
