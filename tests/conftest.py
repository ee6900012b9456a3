"""Shared fixtures: real Hydra configs composed with ``compose()``, a temp output dir, MNIST location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from latentgen.utils.compose import compose_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets"
# overrides for a VQ-VAE small enough for a few dozen CPU steps in seconds
TINY = ["model.hidden_channels=16", "model.res_channels=8", "model.num_res_blocks=1", "model.latent_dim=8",
        "model.num_codes=16", "data.batch_size=32"]


@pytest.fixture
def one_thread():
    """Tiny CPU models run faster with one intra-op thread on a busy shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data_dir() -> Path:
    return Path(os.environ.get("LATENTGEN_DATA_DIR", SHARED_DATA))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    d = data_dir()
    if not (d / "mnist").is_dir():
        pytest.skip(f"real MNIST not found under {d}: set LATENTGEN_DATA_DIR")
    return d


def compose_train(overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` like the CLI does, with outputs under ``tmp_path``."""
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.data_dir = str(data_dir())
        cfg.extras.print_config = False
        cfg.data.num_workers = 0
    return cfg


@pytest.fixture(scope="session")
def shared_log_dir(tmp_path_factory) -> Path:
    """One artefact store for tests that may share stage-1 models and latent caches."""
    return tmp_path_factory.mktemp("shared_logs")


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(*overrides: str) -> DictConfig:
        return compose_train(list(overrides), tmp_path)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shared_log_dir):
    """Train a tiny run of an experiment once per session (``debug=limit``, CSV logger); returns its run dir."""
    runs: dict[tuple[str, ...], Path] = {}

    def _get(experiment: str, *overrides: str) -> Path:
        key = (experiment, *overrides)
        if key not in runs:
            from latentgen.train import train

            tmp = tmp_path_factory.mktemp(experiment)
            cfg = compose_train([f"+experiment={experiment}", "debug=limit", "logger=csv", "test=false",
                                 *overrides], tmp)
            with open_dict(cfg):
                cfg.paths.log_dir = str(shared_log_dir)
            train(cfg)
            GlobalHydra.instance().clear()
            runs[key] = Path(cfg.paths.output_dir)
        return runs[key]

    return _get
