"""Which config wins: a debug preset and a machine's ``local`` config over the experiment, and the
command line over everything, for ``+experiment=NAME`` as the README writes it."""

from __future__ import annotations

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from latentgen.stages.stage1 import compose_stage1
from latentgen.utils.compose import compose_config


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_fdr_preset_wins_over_the_experiment():
    cfg = compose_config(["+experiment=vqvae_mnist", "debug=fdr"])
    assert cfg.task_name == "debug"
    assert cfg.trainer.fast_dev_run is True
    assert cfg.trainer.max_epochs == 1  # vqvae_mnist trains 2 epochs
    assert cfg.data.batch_size == 128 and cfg.stage == "vqvae"  # the rest of the experiment stays
    assert cfg.hydra.runtime.choices.experiment == "vqvae_mnist"


def test_limit_preset_sets_the_epochs_and_the_command_line_wins_over_it():
    cfg = compose_config(["+experiment=classifier_mnist", "debug=limit"])  # the experiment: 3 epochs
    assert (cfg.task_name, cfg.trainer.max_epochs, cfg.trainer.max_steps) == ("debug", 2, -1)
    cfg = compose_config(["+experiment=vqvae_mnist", "debug=limit", "trainer.max_steps=20", "trainer.max_epochs=5"])
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == (20, 5, 4)


def test_overfit_preset_wins_over_the_experiment_budget():
    cfg = compose_config(["+experiment=ldm_mnist", "debug=overfit"])  # the experiment: 3 epochs
    assert (cfg.task_name, cfg.trainer.max_epochs, cfg.trainer.overfit_batches) == ("debug", 20, 3)


def test_local_config_wins_over_the_experiment_and_debug_over_local(tmp_path, monkeypatch):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text(
        "# @package _global_\ntask_name: on_my_machine\nseed: 7\ntrainer:\n  max_epochs: 5\n")
    monkeypatch.setenv("LATENTGEN_CONFIG_DIR", str(tmp_path))
    cfg = compose_config(["+experiment=vqvae_mnist"])
    assert (cfg.task_name, cfg.seed, cfg.trainer.max_epochs) == ("on_my_machine", 7, 5)
    cfg = compose_config(["+experiment=vqvae_mnist", "debug=limit"])
    assert (cfg.task_name, cfg.seed, cfg.trainer.max_epochs) == ("debug", 7, 2)
    cfg = compose_config(["+experiment=vqvae_mnist", "debug=limit", "seed=3", "task_name=mine"])
    assert (cfg.task_name, cfg.seed) == ("mine", 3)


def test_experiment_wins_over_a_hyperparameter_search():
    cfg = compose_config(["+experiment=ldm_mnist", "hparams_search=prior_optuna"])  # the search: bits per token
    assert cfg.optimized_metric == "val/loss"
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")


def test_plus_experiment_and_experiment_compose_the_same_config():
    def job(*overrides: str) -> dict:
        cfg = compose_config(list(overrides))
        return OmegaConf.to_container(cfg, resolve=False) | {"hydra": None}

    assert job("+experiment=ldm_mnist", "debug=limit") == job("experiment=ldm_mnist", "debug=limit")


def test_debug_preset_applies_without_an_experiment():
    cfg = compose_config(["debug=fdr"])
    assert (cfg.task_name, cfg.trainer.fast_dev_run, cfg.stage) == ("debug", True, "vqvae")


def test_stage1_hand_off_composes_its_experiment_under_the_same_debug_preset():
    cfg = compose_config(["+experiment=pixelcnn_mnist", "debug=fdr"])
    s1 = compose_stage1(cfg)
    assert (s1.stage, s1.task_name, s1.trainer.fast_dev_run, s1.trainer.max_epochs) == ("vqvae", "debug", True, 1)
