"""Restarts lose nothing: metrics.csv keeps its rows, W&B segments continue the step count and sync
in order, a mid-epoch resume sees the uninterrupted run's batches, and concurrent runs get their own
run dirs."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from pytorch_lightning.callbacks import Callback
from torch.utils.data import TensorDataset

from latentgen.data.sampler import ResumableDataLoader, ResumableSampler, resumable_loader
from latentgen.train import train
from latentgen.utils.wandb_sync import (
    SyncError,
    check_wandb_version,
    logged_steps,
    offline_segments,
)

from .conftest import REPO, TINY
from .test_resume import ckpt_step, run_env


# -- the resumable sampler ----------------------------------------------------------------------------
def epoch_indices(sampler: ResumableSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_permutes_by_seed_and_epoch_and_ranks_partition_it():
    data = TensorDataset(torch.arange(10))
    one = ResumableSampler(data, seed=3)
    e0, e1 = epoch_indices(one, 0), epoch_indices(one, 1)
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    assert epoch_indices(ResumableSampler(data, seed=3), 1) == e1, "the order is a function of (seed, epoch)"
    assert epoch_indices(ResumableSampler(data, seed=4), 1) != e1
    ranks = [epoch_indices(ResumableSampler(data, num_replicas=3, rank=r, seed=3), 1) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]  # padded to equal shares, as DistributedSampler does
    interleaved = [ranks[i % 3][i // 3] for i in range(10)]
    assert interleaved == e1, "rank r takes positions r, r+3, ... of the one-rank permutation"


def test_sampler_state_round_trip_skips_what_was_trained_on_this_epoch_only():
    data = TensorDataset(torch.arange(10))
    sampler = ResumableSampler(data, seed=0)
    sampler.set_epoch(2)
    sampler.advance(4)
    state = sampler.state_dict()
    assert state == {"seed": 0, "epoch": 2, "consumed": 4}
    restored = ResumableSampler(data, seed=99)  # the checkpoint's seed wins
    restored.load_state_dict(state)
    restored.set_epoch(2)  # Lightning sets the epoch after restoring: the position stays
    full = epoch_indices(ResumableSampler(data, seed=0), 2)
    assert list(restored) == full[4:]
    assert list(restored) == full, "a second pass over the same epoch starts from its beginning"
    restored.load_state_dict(state)
    assert epoch_indices(restored, 3) == epoch_indices(ResumableSampler(data, seed=0), 3)
    assert len(restored) == 10, "len stays the whole epoch: Lightning counts the skipped batches itself"
    two = ResumableSampler(data, num_replicas=2, rank=1, seed=0)
    two.load_state_dict(state)  # 4 positions of the permutation = 2 per rank
    assert list(two) == full[5::2]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_mid_epoch_with_the_same_batches(num_workers):
    data = TensorDataset(torch.arange(50))

    def loader():
        return resumable_loader(data, 8, seed=7, num_workers=num_workers)

    full = loader()
    full.sampler.set_epoch(1)
    uninterrupted = [b[0].tolist() for b in full]
    assert len(uninterrupted) == len(full) == 6  # drop_last: 50 // 8

    killed = loader()
    killed.sampler.set_epoch(1)
    it = iter(killed)
    seen = [next(it)[0].tolist() for _ in range(2)]  # workers have prefetched further than this
    state = killed.state_dict()
    assert state["consumed"] == 16
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    rest = [b[0].tolist() for b in resumed]
    assert seen + rest == uninterrupted
    assert isinstance(resumed, ResumableDataLoader)


def test_prior_latent_loader_resumes_mid_epoch_with_the_same_batches(tmp_path):
    import numpy as np

    from latentgen.stages.latent_data import LatentDataModule

    for split, n in (("train", 40), ("val", 8), ("test", 8)):
        np.save(tmp_path / f"{split}_tokens.npy", np.arange(n * 4, dtype=np.int16).reshape(n, 2, 2))
        np.save(tmp_path / f"{split}_latents.npy", np.zeros((n, 1, 2, 2), np.float32))
        np.save(tmp_path / f"{split}_labels.npy", np.arange(n, dtype=np.int64) % 10)

    def loader(state=None):
        dm = LatentDataModule(batch_size=6, cache_dir=str(tmp_path))
        if state is not None:
            dm.load_state_dict(state)
        train = dm.train_dataloader()
        train.sampler.set_epoch(3)
        return dm, train

    _, full = loader()
    uninterrupted = [b[1].tolist() for b in full]
    assert len(uninterrupted) == 6  # drop_last: 40 // 6
    dm, killed = loader()
    it = iter(killed)
    seen = [next(it)[1].tolist() for _ in range(2)]
    _, resumed = loader(dm.state_dict())
    assert seen + [b[1].tolist() for b in resumed] == uninterrupted


def test_loader_never_draws_from_the_global_rng():
    data = TensorDataset(torch.arange(20))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for epoch in range(2):
        loader = resumable_loader(data, 4)
        loader.sampler.set_epoch(epoch)
        list(loader)
    assert torch.equal(torch.get_rng_state(), before)


# -- metrics.csv across a restart -----------------------------------------------------------------------
def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a metrics.csv as ``{column: value}`` without the empty cells (the header may grow)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


def test_configured_csv_logger_keeps_rows_before_the_resume_and_replaces_redone_steps(compose_cfg):
    def logger():
        return instantiate(compose_cfg("+experiment=vqvae_mnist", "logger=csv").logger.csv)

    killed = logger()
    for step in range(6):
        killed.log_metrics({"train/loss": float(step)}, step=step)
    killed.log_metrics({"val/loss": 0.5}, step=3)  # no finalize: the process is killed here
    resumed = logger()  # resumed from a checkpoint at step 4: steps 4 and 5 are trained again
    for step in range(4, 7):
        resumed.log_metrics({"train/loss": 10.0 + step, "lr": 0.1}, step=step)
    resumed.finalize("success")

    path = Path(killed.log_dir) / "metrics.csv"
    assert read_csv_rows(path) == [
        {"step": "0", "train/loss": "0.0"}, {"step": "1", "train/loss": "1.0"}, {"step": "2", "train/loss": "2.0"},
        {"step": "3", "train/loss": "3.0"}, {"step": "3", "val/loss": "0.5"},
        {"step": "4", "train/loss": "14.0", "lr": "0.1"}, {"step": "5", "train/loss": "15.0", "lr": "0.1"},
        {"step": "6", "train/loss": "16.0", "lr": "0.1"}]
    assert path.read_text().splitlines()[0] == "lr,step,train/loss,val/loss", "the header grew by the new key"


# -- exact mid-epoch resume ---------------------------------------------------------------------------
class BatchRecorder(Callback):
    """Appends ``[global step, hash of the batch images, hash of the torch RNG state]`` per train batch."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        def digest(t: torch.Tensor) -> str:
            return hashlib.sha1(t.cpu().contiguous().numpy().tobytes()).hexdigest()[:12]

        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.global_step, digest(batch[0]), digest(torch.get_rng_state())]) + "\n")


def recorder(path: Path) -> list[str]:
    return [f"+callbacks.batch_record._target_={__name__}.BatchRecorder", f"+callbacks.batch_record.path={path}"]


def recorded(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"resumed run differs from the uninterrupted one in {differing[:5]}"


def test_mid_epoch_resume_sees_the_same_batches_and_ends_bit_identical(compose_cfg, tmp_path, mnist_dir):
    """The uninterrupted run leaves its periodic.ckpt of step 5 (epoch 1, 2 of 3 batches done) and a
    metrics.csv up to step 8: a run dir holding just these is what a kill -9 after step 8 leaves."""
    def fit(name: str):
        cfg = compose_cfg("+experiment=vqvae_mnist", "debug=limit", "test=false", "logger=csv",
                          "model.scheduler.decay=constant", "model.scheduler.warmup_steps=0", "trainer.max_steps=-1",
                          "trainer.max_epochs=3", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                          "callbacks.periodic_checkpoint.every_n_train_steps=5",
                          *recorder(tmp_path / f"{name}.jsonl"), *TINY)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
        return train(cfg)[1]["trainer"]

    full = fit("full")
    for name in ("checkpoints/periodic.ckpt", "csv/metrics.csv"):
        (tmp_path / "cut" / name).parent.mkdir(parents=True)
        shutil.copy(tmp_path / "full" / name, tmp_path / "cut" / name)
    resumed = fit("cut")

    assert json.loads((tmp_path / "cut" / "restarts.jsonl").read_text())["global_step"] == 5
    batches = recorded(tmp_path / "full.jsonl")
    assert [b[0] for b in batches] == list(range(9))
    assert recorded(tmp_path / "cut.jsonl") == batches[5:], "after the resume: other batches, order or RNG state"
    assert_same_weights(full.lightning_module.state_dict(), resumed.lightning_module.state_dict())

    before, after = (read_csv_rows(tmp_path / run / "csv" / "metrics.csv") for run in ("full", "cut"))
    assert [r for r in after if int(r["step"]) < 5] == [r for r in before if int(r["step"]) < 5], \
        "rows logged before the checkpoint were lost"
    assert [int(r["step"]) for r in after if "train/loss" in r] == list(range(9)), \
        "each trained step appears once in metrics.csv"


@pytest.mark.slow
def test_kill_9_mid_epoch_then_same_command_matches_the_uninterrupted_run(tmp_path, mnist_dir):
    """Real processes, two loader workers, CSV and W&B loggers: the uninterrupted run and a run killed
    (SIGKILL) after a mid-epoch periodic checkpoint, then started again with the same command."""
    epochs, batches = 3, 10

    def command(name: str) -> list[str]:
        return [sys.executable, "-m", "latentgen.train", "+experiment=vqvae_mnist", "debug=limit",
                "logger=many_loggers", "test=false", f"hydra.run.dir={tmp_path / name}", "trainer.max_steps=-1",
                f"trainer.max_epochs={epochs}", f"trainer.limit_train_batches={batches}", "data.num_workers=2",
                "callbacks.periodic_checkpoint.every_n_train_steps=3", "extras.print_config=false",
                *recorder(tmp_path / f"{name}.jsonl"), *TINY]

    def run(name: str) -> None:
        res = subprocess.run(command(name), cwd=REPO, env=run_env(mnist_dir), capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    run("full")
    cut = tmp_path / "cut"
    periodic = cut / "checkpoints" / "periodic.ckpt"
    with open(tmp_path / "killed.log", "w") as out:
        first = subprocess.Popen(command("cut"), cwd=REPO, env=run_env(mnist_dir), stdout=out,
                                 stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not periodic.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # let it train (and log) past the checkpoint: those steps are redone
        first.kill()  # SIGKILL: no handler, no exception checkpoint
        first.wait()
    assert periodic.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    killed_at = ckpt_step(periodic)
    assert 0 < killed_at < epochs * batches and killed_at % batches, f"step {killed_at} is no mid-epoch step"
    killed_rows = read_csv_rows(cut / "csv" / "metrics.csv")
    killed_batches = recorded(tmp_path / "cut.jsonl")
    run("cut")

    assert json.loads((cut / "restarts.jsonl").read_text())["global_step"] == killed_at
    full_batches = recorded(tmp_path / "full.jsonl")
    assert [b[0] for b in full_batches] == list(range(epochs * batches))
    assert killed_batches == full_batches[:len(killed_batches)]
    resumed = recorded(tmp_path / "cut.jsonl")[len(killed_batches):]
    assert resumed == full_batches[killed_at:], "after the resume: other batches, order or RNG state"
    weights = [torch.load(tmp_path / r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
               for r in ("full", "cut")]
    assert_same_weights(weights[0]["state_dict"], weights[1]["state_dict"])

    rows = read_csv_rows(cut / "csv" / "metrics.csv")
    assert killed_rows and [r for r in rows if int(r["step"]) < killed_at] == \
        [r for r in killed_rows if int(r["step"]) < killed_at], "rows from before the kill were lost"
    assert [int(r["step"]) for r in rows if "train/loss" in r] == list(range(epochs * batches))

    # W&B writes its offline log in batches (every 15 s by default): the killed segment may hold
    # fewer rows than were logged, or none; the resumed one starts at the checkpoint's step
    segments = sorted((cut / "wandb").glob("offline-run-*"))
    assert len(segments) == 2, segments
    killed_steps, resumed_steps = (logged_steps(s) for s in segments)
    assert killed_steps[:1] in ([], [0])
    assert resumed_steps[0] == killed_at and max(resumed_steps) >= epochs * batches - 1, \
        "the resumed W&B segment does not continue the step count"


# -- W&B: offline segments of one run ------------------------------------------------------------------
SEGMENTS_SCRIPT = """
import sys, time, wandb
for run_id, start in [("aaaa1111", 0), ("bbbb2222", 10), ("aaaa1111", 3)]:
    run = wandb.init(mode="offline", dir=sys.argv[1], project="p", id=run_id, resume="allow")
    for step in range(start, start + 3 if start == 0 else start + 2):
        run.log({"x": step, "trainer/global_step": step})
    run.finish()
    time.sleep(1.1)  # segment folders are named by the second they start in
"""


@pytest.fixture(scope="module")
def wandb_segments(tmp_path_factory) -> Path:
    """A run dir whose wandb/ holds run aaaa1111 (two segments, steps 0-2 then 3-4) and bbbb2222."""
    run_dir = tmp_path_factory.mktemp("wandb_run")
    subprocess.run([sys.executable, "-c", SEGMENTS_SCRIPT, str(run_dir)], check=True, timeout=120,
                   env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    return run_dir


def sync_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentgen.utils.wandb_sync", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


def test_wandb_sync_dry_run_prints_one_ordered_command_per_run_id(wandb_segments):
    segs = {}
    for seg in sorted((wandb_segments / "wandb").glob("offline-run-*")):
        segs.setdefault(seg.name.rsplit("-", 1)[1], []).append(str(seg))
    assert [len(v) for v in segs.values()] == [2, 1]
    found = offline_segments(wandb_segments / "wandb")  # the wandb/ folder works as well as the run dir
    assert {run_id: list(map(str, s)) for run_id, s in found.items()} == segs

    res = sync_cli(str(wandb_segments), "--dry-run", "--project", "proj")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        f"wandb sync --id aaaa1111 --project proj {segs['aaaa1111'][0]} {segs['aaaa1111'][1]}",
        f"wandb sync --id bbbb2222 --project proj {segs['bbbb2222'][0]}",
    ]
    assert "trainer/global_step 0..2" in lines[0] and "trainer/global_step 3..4" in lines[1]


def test_wandb_sync_stops_at_the_first_failing_command_with_a_clear_error(wandb_segments, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"HOME": str(tmp_path), "TMPDIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
            "WANDB_BASE_URL": "http://127.0.0.1:9"}
    res = sync_cli(str(wandb_segments), env=env)  # no API key anywhere: wandb sync itself fails
    assert res.returncode == 1
    assert "$ wandb sync --id aaaa1111" in res.stdout and "bbbb2222" not in res.stdout, res.stdout
    error = res.stderr.strip().splitlines()[-1]
    assert error.startswith("latentgen-wandb-sync: error: `wandb sync` failed (exit 1) for run aaaa1111"), res.stderr
    assert "wandb login" in error


def test_wandb_sync_refuses_a_folder_without_segments_and_old_wandb(tmp_path):
    (tmp_path / "wandb").mkdir()
    res = sync_cli(str(tmp_path), "--dry-run")
    assert res.returncode == 1 and "no offline W&B runs (offline-run-*)" in res.stderr
    with pytest.raises(SyncError, match="needs wandb >= 0.31"):
        check_wandb_version("0.16.6")
    check_wandb_version("0.31.0")


# -- run dirs of runs started in the same second -----------------------------------------------------
START_ON_SIGNAL = """
import pathlib, sys, time
import latentgen.train
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.005)
sys.argv = ["latentgen-train", *sys.argv[3:]]
latentgen.train.main()
"""


def test_two_runs_started_in_the_same_second_get_two_run_dirs(tmp_path, mnist_dir):
    logs, go = tmp_path / "logs", tmp_path / "go"
    overrides = ["+experiment=vqvae_mnist", "train=false", "test=false", "optimized_metric=null", "logger=csv",
                 f"paths.log_dir={logs}", "extras.print_config=false"]
    procs = [subprocess.Popen([sys.executable, "-c", START_ON_SIGNAL, str(tmp_path / f"ready{i}"), str(go),
                               *overrides], cwd=REPO, env=run_env(mnist_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.02 - time.time() % 1)  # both start right after a second begins (Hydra startup < 1 s)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]

    run_dirs = sorted((logs / "vqvae_mnist" / "runs").iterdir())
    assert len(run_dirs) == 2, f"two runs share {run_dirs}"
    stamps = {d.name.rsplit("_", 1)[0] for d in run_dirs}
    assert len(stamps) == 1, f"the runs did not start in the same second ({run_dirs}): machine too busy?"
    assert all((d / ".hydra" / "config.yaml").is_file() for d in run_dirs)
