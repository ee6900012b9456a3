"""The config tree travels with the package (a wheel has it as latentgen/conf), launch/ installs as
latentgen.launch, and ``LATENTGEN_CONFIG_DIR`` adds the user's own experiments."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra

from latentgen.utils.compose import compose_config
from latentgen.utils.resolvers import CONF_DIR

from .conftest import REPO, TINY

MY_EXP = """\
# @package _global_
defaults:
  - vqvae_mnist
task_name: my_exp
tags: ["mine"]
model:
  num_codes: 24
"""


@pytest.fixture
def user_conf(tmp_path, monkeypatch) -> Path:
    """A user's config dir with experiment/my_exp.yaml, named by LATENTGEN_CONFIG_DIR."""
    conf = tmp_path / "my_conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "my_exp.yaml").write_text(MY_EXP)
    monkeypatch.setenv("LATENTGEN_CONFIG_DIR", str(conf))
    yield conf
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of the files git would ship from this working tree (built offline, without isolation)."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (tmp / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "src" / name).write_bytes((REPO / name).read_bytes())
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp / "dist"), str(tmp / "src")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return next((tmp / "dist").glob("latentgen-*.whl"))


def test_a_source_checkout_reads_the_repository_conf():
    assert CONF_DIR == REPO / "conf"


def test_wheel_holds_the_config_tree_and_launch_inside_latentgen(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("latentgen/conf/") for n in names if n.startswith("latentgen/conf/")}
    assert shipped >= {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert {"train.yaml", "experiment/vqvae_mnist.yaml", "debug/fdr.yaml"} <= shipped
    assert {"latentgen/launch/pipeline.py", "latentgen/launch/slurm.py"} <= set(names)
    packages = {p.relative_to(REPO).as_posix() for p in (REPO / "latentgen").rglob("__init__.py")}
    assert packages <= set(names), f"not in the wheel (list them in pyproject.toml): {packages - set(names)}"
    assert {n.split("/")[0] for n in names if not n.startswith("latentgen-")} == {"latentgen"}  # no top-level launch
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "latentgen-launch = latentgen.launch.pipeline:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_composes_from_its_own_config_tree(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    code = ("from latentgen.utils.resolvers import CONF_DIR; from latentgen.utils.compose import compose_config; "
            "import latentgen.launch.pipeline; "
            "cfg = compose_config(['+experiment=vqvae_mnist', 'debug=fdr']); print(CONF_DIR); print(cfg.task_name)")
    res = subprocess.run([sys.executable, "-c", code], cwd=empty, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == [str(site / "latentgen" / "conf"), "debug"]


def test_user_config_dir_adds_an_experiment_to_compose_config(user_conf):
    cfg = compose_config(["+experiment=my_exp", "debug=limit"])
    assert (cfg.stage, cfg.model.num_codes, list(cfg.tags), cfg.task_name) == ("vqvae", 24, ["mine"], "debug")
    assert compose_config(["+experiment=vqvae_mnist"]).model.num_codes == 256  # latentgen's own ones stay


def test_user_config_dir_that_does_not_exist_is_one_clear_error(user_conf, monkeypatch):
    monkeypatch.setenv("LATENTGEN_CONFIG_DIR", str(user_conf / "typo"))
    with pytest.raises(NotADirectoryError, match=r"LATENTGEN_CONFIG_DIR names .*typo, which is not a directory"):
        compose_config(["+experiment=vqvae_mnist"])


def test_cli_trains_a_user_experiment_from_an_empty_directory(user_conf, tmp_path, mnist_dir):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "latentgen.train", "+experiment=my_exp", "debug=fdr", "extras.print_config=false",
           *[o for o in TINY if not o.startswith("model.num_codes")]]
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(mnist_dir), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run_dir,) = (cwd / "logs" / "debug" / "runs").iterdir()  # debug runs go to logs/debug
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert (cfg["model"]["num_codes"], cfg["tags"], cfg["trainer"]["fast_dev_run"]) == (24, ["mine"], True)
