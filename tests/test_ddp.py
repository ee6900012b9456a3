"""DDP on CPU (trainer=ddp_sim: 2 processes, gloo) keeps one codebook; bf16-mixed runs every stage."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from latentgen.train import train
from latentgen.utils.resolvers import CONF_DIR

from .conftest import REPO, TINY

# one experiment per stage (the Fashion-MNIST twins run the same code); the classifier is no stage
STAGES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*_mnist.yaml")
                if not p.stem.startswith("classifier") and "fashion" not in p.stem)


@pytest.mark.slow
def test_ddp_sim_two_processes_end_with_the_same_codebook(tmp_path, mnist_dir):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "latentgen.train", "+experiment=vqvae_mnist", "debug=limit", "trainer=ddp_sim",
           "logger=csv", "test=false", "trainer.max_steps=-1", "trainer.max_epochs=1", "callbacks=[default,codebook_snapshot]",
           "callbacks.codebook_snapshot.check=false",  # compare here, from the files each rank wrote
           # no buffer broadcast by DDP: the quantiser itself must keep the ranks' codebooks equal
           "trainer.strategy={_target_:pytorch_lightning.strategies.DDPStrategy,broadcast_buffers:false}",
           f"hydra.run.dir={run_dir}", "extras.print_config=false", *TINY]
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(mnist_dir), "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    snaps = [torch.load(run_dir / f"codebook_rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [(s["rank"], s["world_size"]) for s in snaps] == [(0, 2), (1, 2)]
    assert all(s["batches"] == 4 for s in snaps), "each rank runs its own share of the batches"
    (name, q0), = snaps[0]["quantizers"].items()
    q1 = snaps[1]["quantizers"][name]
    assert not torch.equal(q0["ema_count"], torch.ones_like(q0["ema_count"])), "the codebook never trained"
    for buf in ("codebook", "ema_count", "ema_sum"):
        assert torch.equal(q0[buf], q1[buf]), f"{name}.{buf} differs between the two ranks"


def test_ddp_trainer_presets_match_slurm_task_layout(compose_cfg):
    ddp = compose_cfg("+experiment=vqvae_mnist", "trainer=ddp", "hydra/launcher=slurm")
    assert ddp.trainer.strategy == "ddp" and ddp.trainer.precision == "bf16-mixed"
    assert ddp.hydra.launcher.tasks_per_node == ddp.trainer.devices == ddp.hydra.launcher.gpus_per_node == 4
    sim = compose_cfg("+experiment=vqvae_mnist", "trainer=ddp_sim", "hydra/launcher=slurm_local_test")
    assert (sim.trainer.accelerator, sim.trainer.devices) == ("cpu", 2)
    assert sim.hydra.launcher.tasks_per_node == 2 and sim.hydra.launcher.gpus_per_node is None


@pytest.mark.slow
@pytest.mark.parametrize("experiment", STAGES)
def test_bf16_mixed_fast_dev_run_of_every_stage(experiment, compose_cfg, mnist_dir, shared_log_dir):
    small = TINY if experiment.startswith("vqvae") else []  # bf16 on CPU is slow; the size is beside the point
    cfg = compose_cfg(f"+experiment={experiment}", "debug=fdr", "trainer.precision=bf16-mixed", *small)
    cfg.paths.log_dir = str(shared_log_dir)
    metrics, objects = train(cfg)
    assert objects["trainer"].precision == "bf16-mixed"
    losses = {k: float(v) for k, v in metrics.items() if k.endswith("loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), metrics
