"""Launcher presets, sweep configs and pipeline scripts (no cluster needed); local and Optuna multiruns."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from latentgen.launch.pipeline import main as launch_main
from latentgen.stages.artifacts import ArtifactStore
from latentgen.stages.resolver import stage1_dependency
from latentgen.stages.run_export import EXPORT_OVERRIDE
from latentgen.utils.compose import compose_config

from .conftest import REPO, TINY


def launcher(cfg) -> dict:
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.mark.parametrize("preset", ["slurm", "bigred200", "slurm_local_test"])
def test_slurm_presets_use_one_requeue_mechanism_and_one_task_per_device(preset, compose_cfg, monkeypatch):
    monkeypatch.setenv("BIGRED200_ACCOUNT", "r00042")
    cfg = compose_cfg("+experiment=vqvae_mnist", f"hydra/launcher={preset}")
    lc = launcher(cfg)
    assert "SlurmLauncher" in lc["_target_"]
    assert lc["additional_parameters"]["signal"] == f"USR1@{lc['signal_delay_s']}"  # SlurmRequeue's signal
    assert lc["max_num_timeout"] == 0  # submitit never requeues on its own
    assert lc["tasks_per_node"] == cfg.trainer.devices


def test_bigred200_layout_and_account(compose_cfg, monkeypatch):
    monkeypatch.delenv("BIGRED200_ACCOUNT", raising=False)
    monkeypatch.delenv("SLURM_ACCOUNT", raising=False)
    cfg = compose_cfg("+experiment=vqvae_mnist", "hydra/launcher=bigred200", "trainer=ddp", "trainer.num_nodes=2")
    with pytest.raises(InterpolationResolutionError, match="export BIGRED200_ACCOUNT=<your account>"):
        launcher(cfg)
    monkeypatch.setenv("SLURM_ACCOUNT", "r00099")
    lc = launcher(cfg)
    assert (lc["partition"], lc["account"], lc["nodes"]) == ("gpu", "r00099", 2)
    assert lc["gpus_per_node"] == lc["tasks_per_node"] == 4
    explicit = compose_cfg("+experiment=vqvae_mnist", "hydra/launcher=bigred200", "hydra.launcher.account=r1")
    assert launcher(explicit)["account"] == "r1"


def test_local_launcher_runs_one_process_per_job(compose_cfg):
    lc = launcher(compose_cfg("+experiment=vqvae_mnist", "hydra/launcher=local", "trainer=ddp_sim"))
    assert "LocalLauncher" in lc["_target_"] and lc["tasks_per_node"] == 1  # Lightning starts the ranks


@pytest.mark.parametrize(("search", "experiment", "metric"), [
    ("vqvae_optuna", "vqvae_mnist", "val/recon_loss"),
    ("prior_optuna", "transformer_mnist", "val/bits_per_token"),
    ("prior_optuna", "ldm_mnist", "val/loss"),
])
def test_optuna_search_configs(search, experiment, metric, compose_cfg):
    cfg = compose_cfg(f"+experiment={experiment}", f"hparams_search={search}")
    assert cfg.optimized_metric == metric
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_ and cfg.hydra.sweeper.direction == "minimize"
    assert cfg.hydra.sweeper.params
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"  # a dir per trial


def _srun_and_after(text: str) -> tuple[list[str], list[list[str]]]:
    """The srun command of a batch script and the commands after it, as bash splits them."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    return shlex.split(lines[start]), [shlex.split(line) for line in lines[start + 1:] if line.strip()]


def _job_key(argv: list[str]) -> str:
    """The stage-1 key a stage-2 job's command line resolves (composed as the job composes it)."""
    overrides = [a for a in argv[4:] if not a.startswith("hydra.run.dir=")]
    cfg = compose_config(overrides)
    return stage1_dependency(cfg.stage1, cfg.paths).key


def test_pipeline_dry_run_writes_chained_bigred200_scripts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATENTGEN_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("BIGRED200_ACCOUNT", "r00042")
    rc = launch_main(["--stage2", "transformer_mnist", "--sweep", "seed=1,2", "--launcher", "bigred200",
                      "--dry-run", "trainer=ddp"])
    out = capsys.readouterr().out
    assert rc == 0, out
    root = tmp_path / "logs" / "pipelines" / "vqvae_mnist-transformer_mnist"  # stage 1 from the stage-2 config
    scripts = sorted((root / "scripts").glob("*.sbatch"))
    assert [p.stem for p in scripts] == ["stage1-vqvae_mnist", "stage2-transformer_mnist-seed-1",
                                         "stage2-transformer_mnist-seed-2"]
    s1, s2 = scripts[0].read_text(), scripts[1].read_text()
    for text in (s1, s2):
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)
        for line in ("--partition=gpu", "--account=r00042", "--ntasks-per-node=4", "--gpus-per-node=4",
                     "--signal=USR1@180", "--requeue", "module load python/gpu"):
            assert line in text, line
    (argv1, after1), (argv2, after2) = _srun_and_after(s1), _srun_and_after(s2)
    # stage 1: the resolver's training command (the pipeline's overrides, its store), then its registration
    assert argv1[:5] == ["srun", sys.executable, "-m", "latentgen.train", "+experiment=vqvae_mnist"]
    assert "trainer=ddp" in argv1 and f"hydra.run.dir='{root}/stage1-vqvae_mnist'" in argv1
    assert f"paths.artifact_dir='{tmp_path}/logs/artifacts'" in argv1 and EXPORT_OVERRIDE in argv1
    ((*register, key),) = after1
    assert register == [sys.executable, "-m", "latentgen.stages.artifact_cli", "register", f"{root}/stage1-vqvae_mnist",
                        "--artifact-dir", f"{tmp_path}/logs/artifacts", "--key"]
    # stage 2: no checkpoint path; it composes the same stage 1 and so looks up the key stage 1 is stored under
    assert not any(a.startswith("stage1.ckpt_path") for a in argv2) and after2 == []
    assert "stage1.overrides=['trainer=ddp']" in argv2 and "seed=1" in argv2
    assert "logger.wandb.group='vqvae_mnist-transformer_mnist'" in argv2
    assert _job_key(argv2) == key
    assert "sbatch --dependency=afterok:<stage-1 job id>" in out and "W&B group: vqvae_mnist-transformer_mnist" in out


def test_pipeline_submits_no_stage1_job_when_the_store_holds_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATENTGEN_LOG_DIR", str(tmp_path / "logs"))
    args = ["--stage2", "transformer_mnist", "--launcher", "slurm", "--dry-run", "debug=fdr"]
    assert launch_main(args) == 0
    (stage1,) = (tmp_path / "logs" / "pipelines").glob("*/scripts/stage1-*.sbatch")
    key = _srun_and_after(stage1.read_text())[1][0][-1]
    store = ArtifactStore(tmp_path / "logs" / "artifacts")  # a stage 1 stored under that key
    staging = store.staging_dir("stage1", key)
    torch.save({"state_dict": {"w": torch.ones(2)}}, staging / "model.ckpt")
    store.publish("stage1", key, staging, {"note": "trained by another pipeline"})
    shutil.rmtree(tmp_path / "logs" / "pipelines")
    capsys.readouterr()

    assert launch_main(args) == 0
    out = capsys.readouterr().out
    assert f"stage 1 {key} (vqvae_mnist) is in the artefact store: no stage-1 job" in out
    scripts = sorted(p.stem for p in (tmp_path / "logs" / "pipelines").glob("*/scripts/*.sbatch"))
    assert scripts == ["stage2-transformer_mnist"] and "--dependency" not in out


def test_pipeline_errors_name_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATENTGEN_LOG_DIR", str(tmp_path / "logs"))
    assert launch_main(["--stage1", "vqvae_mnist", "--launcher", "local", "--dry-run"]) == 2
    assert "--launcher slurm" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="builds on stage1.experiment=vqvae_mnist"):
        launch_main(["--stage1", "vqvae_fashion_mnist", "--stage2", "transformer_mnist", "--dry-run"])


# -- real multiruns on this machine -------------------------------------------------------------------
def _run(args: list[str], mnist_dir: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(mnist_dir), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true"}
    res = subprocess.run([sys.executable, "-m", "latentgen.train", "-m", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_grid_multirun_with_the_local_submitit_launcher(tmp_path, mnist_dir):
    sweep = tmp_path / "sweep"
    _run(["hydra/launcher=local", "+experiment=vqvae_mnist", "debug=fdr", "extras.print_config=false", *TINY,
          "model.num_codes=8,16", f"hydra.sweep.dir={sweep}"], mnist_dir)
    for num, codes in ((0, 8), (1, 16)):
        overrides = yaml.safe_load((sweep / str(num) / ".hydra" / "overrides.yaml").read_text())
        assert f"model.num_codes={codes}" in overrides
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2


@pytest.mark.slow
def test_optuna_trials_get_own_dirs_and_share_a_wandb_group(tmp_path, mnist_dir):
    sweep = tmp_path / "sweep"
    _run(["+experiment=vqvae_mnist", "hparams_search=vqvae_optuna", "hydra.sweeper.n_trials=2",
          "hydra.sweeper.sampler.n_startup_trials=2", "debug=limit", "logger=many_loggers", "test=false",
          "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
          "extras.print_config=false", *TINY, f"hydra.sweep.dir={sweep}"], mnist_dir)
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()
    group = f"debug-{sweep.name}"  # task_name of the debug preset
    for trial in (0, 1):
        # the resolved config every logger received, W&B's included
        logged = yaml.safe_load((sweep / str(trial) / "csv" / "hparams.yaml").read_text())
        assert logged["logger"]["wandb"]["group"] == group
        assert logged["paths"]["output_dir"] == str(sweep / str(trial))
        (run,) = (sweep / str(trial) / "wandb").glob("offline-run-*/*.wandb")
        assert group.encode() in run.read_bytes()  # the offline W&B run that `wandb sync` uploads
