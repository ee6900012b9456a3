"""The artefact store for real users: stored artefacts that fail their checks are refused and rebuilt,
interrupted builds are cleaned up, a read-only store serves runs, and ``stage1.auto_train=false``
prints commands that really put stage 1 into the store."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from latentgen.metrics.classifier_lookup import resolve_classifier
from latentgen.stages.artifact_cli import main as artifacts_cli
from latentgen.stages.artifacts import ArtifactCheckError, ArtifactStore, sha256_file
from latentgen.train import train
from latentgen.utils.compose import compose_config

from .conftest import TINY, compose_train, data_dir

NAN = float("nan")


def write_unchecked(store: ArtifactStore, kind: str, key: str, files: dict[str, object], meta: dict) -> Path:
    """An artefact as a latentgen without content checks published it: files, checksums, meta.json."""
    d = store.path(kind, key)
    d.mkdir(parents=True)
    for name, content in files.items():
        if name.endswith(".npy"):
            np.save(d / name, content)
        else:
            torch.save(content, d / name)
    meta = {**meta, "files": {p.name: sha256_file(p) for p in sorted(d.iterdir())}}
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def finite_latents(staging: Path) -> dict:
    np.save(staging / "train_latents.npy", np.ones((4, 2, 3, 3), np.float32))
    return {"note": "rebuilt"}


BAD_ARTEFACTS = {
    "nan weights": ({"model.ckpt": {"state_dict": {"enc.weight": torch.tensor([1.0, NAN])}}}, {},
                    r"model.ckpt has non-finite weights: enc.weight"),
    "nan metric": ({"model.ckpt": {"state_dict": {"enc.weight": torch.ones(2)}}}, {"metrics": {"val/loss": NAN}},
                   r"its metadata has non-finite values: metrics/val/loss"),
    "inf latents": ({"train_latents.npy": np.array([[1.0, 2.0], [np.inf, 0.0]], np.float32)}, {},
                    r"train_latents.npy holds non-finite values \(first in item 1\)"),
}


@pytest.mark.parametrize("case", BAD_ARTEFACTS)
def test_stored_artefact_failing_its_checks_is_refused_kept_aside_and_rebuilt(tmp_path, case, caplog):
    files, meta, why = BAD_ARTEFACTS[case]
    store = ArtifactStore(tmp_path)
    write_unchecked(store, "latents", "k1", files, meta)
    caplog.set_level(logging.WARNING)
    assert store.meta("latents", "k1") is None  # checksums match, but it is not reused
    assert re.search(why, caplog.text)

    folder, built = store.fetch_or_build("latents", "k1", "test artefact", finite_latents)
    assert built and store.meta("latents", "k1")["note"] == "rebuilt"
    rejected = list(tmp_path.glob("latents/k1.rejected-*"))
    assert len(rejected) == 1 and sorted(p.name for p in rejected[0].iterdir()) == sorted([*files, "meta.json"])
    assert re.search(rf"Refusing stored artefact {folder}: .*{why}.* Moved it to {rejected[0]}", caplog.text)
    # the CLI's verify reads the same checks: everything in place is usable now
    artifacts_cli(["verify", "--artifact-dir", str(tmp_path)])


def test_build_failing_its_checks_publishes_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def nan_latents(staging: Path) -> dict:
        np.save(staging / "val_latents.npy", np.full((2, 3), NAN, np.float32))
        return {}

    with pytest.raises(ArtifactCheckError, match=r"Not storing artefact latents/k1: val_latents.npy holds "
                                                 r"non-finite values .* lower model.optimizer.lr"):
        store.fetch_or_build("latents", "k1", "test artefact", nan_latents)
    assert sorted(p.name for p in (tmp_path / "latents").iterdir()) == ["k1.lock"]


def test_verify_names_an_artefact_that_fails_its_checks(tmp_path, capsys):
    files, meta, why = BAD_ARTEFACTS["nan weights"]
    write_unchecked(ArtifactStore(tmp_path), "stage1", "k1", files, meta)
    with pytest.raises(SystemExit, match="1 artefact"):
        artifacts_cli(["verify", "--artifact-dir", str(tmp_path)])
    assert re.search(rf"stage1/k1 .* NOT USABLE: {why}", capsys.readouterr().out)


def test_stored_classifier_with_nan_weights_is_rebuilt(tmp_path, mnist_dir, caplog):
    """The classifier lookup shares the store's checks: a NaN classifier artefact is never reused."""
    caplog.set_level(logging.INFO)
    cfg = compose_config(["ckpt=unused", "classifier.debug=fdr"], config_name="evaluate.yaml")
    with open_dict(cfg):
        cfg.paths.log_dir, cfg.paths.data_dir = str(tmp_path / "logs"), str(data_dir())
    first = resolve_classifier(cfg.classifier, cfg.paths, "mnist")
    ckpt = torch.load(first.ckpt_path, map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {k: v * NAN if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, first.ckpt_path)
    meta_file = first.ckpt_path.parent / "meta.json"  # as if published so, by a version without checks
    meta = json.loads(meta_file.read_text())
    meta["files"]["model.ckpt"] = sha256_file(first.ckpt_path)
    meta_file.write_text(json.dumps(meta))

    second = resolve_classifier(cfg.classifier, cfg.paths, "mnist")
    assert second.ckpt_path == first.ckpt_path and caplog.text.count("Training classifier") == 2
    assert "Refusing stored artefact" in caplog.text and "has non-finite weights" in caplog.text
    assert all(torch.isfinite(p).all() for p in second.extractor.parameters())
    assert len(list(first.ckpt_path.parent.parent.glob("*.rejected-*"))) == 1


def test_next_build_removes_what_a_killed_build_left(tmp_path):
    """A builder killed mid-build leaves its staging folder and run dir; the next build of the key
    removes both (under the lock), and leaves other keys' builds and published runs alone."""
    script = textwrap.dedent(f"""
        import os, signal
        from latentgen.stages.artifacts import ArtifactStore
        store = ArtifactStore({str(tmp_path)!r})
        with store.lock("stage1", "k1", "k1"):
            staging = store.staging_dir("stage1", "k1")
            (staging / "model.ckpt").write_bytes(b"half")
            run_dir = store.build_run_dir(staging)
            run_dir.mkdir(parents=True)
            (run_dir / "train.log").write_text("training")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    parent = tmp_path / "stage1"
    assert len(list(parent.glob(".k1.tmp-*"))) == 1 and len(list(parent.glob("k1.runs/*"))) == 1
    published_run = parent / "k1.runs" / "1-2"  # the run dir of an earlier, published build
    published_run.mkdir()
    other = ArtifactStore(tmp_path).staging_dir("stage1", "k2")  # another key's build, in progress

    folder, built = ArtifactStore(tmp_path).fetch_or_build("stage1", "k1", "k1", finite_latents)
    assert built and folder == parent / "k1"
    assert not list(parent.glob(".k1.tmp-*")) and list(parent.glob("k1.runs/*")) == [published_run]
    assert other.is_dir()


def _drop_dac(cmd: list[str]) -> list[str]:
    """``cmd`` run as root without the capabilities that let root ignore file permissions."""
    if not shutil.which("capsh"):
        pytest.skip("capsh not found (needed to drop root's permission overrides)")
    caps = "cap_dac_override,cap_dac_read_search,cap_fowner"
    return ["capsh", f"--drop={caps}", "--", "-c", shlex.join(cmd)]


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_read_only_store_serves_runs_without_a_lock(tmp_path, trained_run, mnist_dir):
    """A complete store on a read-only filesystem (a group's shared folder) is read without a lock;
    building into it fails with one error that says what to do."""
    from latentgen.stages.latent_cache import build_latent_cache
    from latentgen.stages.stage1 import STAGE1, artifact_key, load_stage1

    root = tmp_path / "store"
    overrides = ["+experiment=vqvae_mnist", "debug=fdr", *TINY]
    cfg = compose_train(overrides, tmp_path)
    key = artifact_key(cfg)
    ckpt = trained_run("vqvae_mnist", *TINY) / "checkpoints" / "last.ckpt"
    store = ArtifactStore(root)
    staging = store.staging_dir(STAGE1.kind, key)
    shutil.copyfile(ckpt, staging / "model.ckpt")
    stored = store.publish(STAGE1.kind, key, staging, {"note": "built by a colleague"}) / "model.ckpt"
    cache = build_latent_cache(load_stage1(stored), cfg.data, root, batch_size=64, max_items=64, device="cpu")
    _read_only(root)
    before = sorted(str(p) for p in root.rglob("*"))

    script = textwrap.dedent(f"""
        import sys
        from omegaconf import open_dict
        from latentgen.stages.latent_cache import build_latent_cache
        from latentgen.stages.stage1 import STAGE1, find_or_train, load_stage1
        from latentgen.utils.compose import compose_config
        cfg = compose_config({overrides!r})
        with open_dict(cfg):
            cfg.paths.data_dir = {str(data_dir())!r}
        path, key = find_or_train(cfg, {str(root)!r}, STAGE1, True, missing=None)
        print("stage1", path)
        print("cache", build_latent_cache(load_stage1(path), cfg.data, {str(root)!r}, max_items=64, device="cpu"))
        with open_dict(cfg):
            cfg.model.num_codes = 8  # another stage 1: it would have to be built
        find_or_train(cfg, {str(root)!r}, STAGE1, True, missing=None)
    """)
    proc = subprocess.run(_drop_dac([sys.executable, "-c", script]), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert f"stage1 {stored}\ncache {cache}\n" in proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == 1
    assert re.search(r"PermissionError: stage 1 .* has to be built, but the artefact store .* is not writable",
                     proc.stderr), proc.stderr[-3000:]
    assert sorted(str(p) for p in root.rglob("*")) == before


def _missing_message(tmp_path: Path, *overrides: str) -> str:
    cfg = compose_train(["+experiment=pixelcnn_mnist", "logger=csv", "stage1.auto_train=false",
                         "model.num_tokens=null", "model.grid_shape=null", *overrides], tmp_path)
    with open_dict(cfg):
        cfg.paths.artifact_dir = str(tmp_path / "store")
    with pytest.raises(RuntimeError, match="stage1.auto_train=false") as err:
        train(cfg)
    return str(err.value)


def test_auto_train_off_prints_commands_that_store_stage1(tmp_path, mnist_dir):
    store = tmp_path / "store"
    msg = _missing_message(tmp_path, "debug=limit")
    assert f"latentgen-artifacts train +experiment=vqvae_mnist debug=limit logger=csv paths.artifact_dir={store}\n" in msg
    assert "python -m latentgen.train +experiment=vqvae_mnist debug=limit logger=csv\n" in msg
    assert f"latentgen-artifacts register RUN_DIR --artifact-dir {store}\n" in msg
    # a fast_dev_run stage 1 saves no checkpoint to register: only the one-step command is offered
    msg = _missing_message(tmp_path, "debug=fdr")
    assert "latentgen-artifacts train +experiment=vqvae_mnist debug=fdr" in msg and "register" not in msg


def _commands(msg: str) -> list[list[str]]:
    """The commands a message prints, runnable here (``latentgen-artifacts`` via ``python -m``)."""
    cli = [sys.executable, "-m", "latentgen.stages.artifact_cli"]
    lines = [line.strip() for line in msg.splitlines() if line.startswith("  ")]
    return [cli + shlex.split(line)[1:] if line.startswith("latentgen-artifacts") else
            [sys.executable, *shlex.split(line)[1:]] for line in lines]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "LATENTGEN_DATA_DIR": str(data_dir()), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "LATENTGEN_LOG_DIR": str(cwd / "logs")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("route", ["train", "register"])
def test_printed_commands_store_the_stage1_the_prior_then_finds(tmp_path, mnist_dir, route, caplog):
    s1 = "stage1.overrides=[" + ",".join(f'"{o}"' for o in TINY) + "]"
    msg = _missing_message(tmp_path, "debug=limit", s1)
    one_step, train_cmd, register_cmd = _commands(msg)
    if route == "train":
        _run(one_step, tmp_path)
    else:
        _run(train_cmd, tmp_path)
        (run_dir,) = [p.parent.parent for p in (tmp_path / "logs").glob("*/runs/*/.hydra/config.yaml")]
        out = _run([str(run_dir) if a == "RUN_DIR" else a for a in register_cmd], tmp_path)
        assert "Stored artefact" in out and str(run_dir) in out
    caplog.set_level(logging.INFO)
    cfg = compose_train(["+experiment=pixelcnn_mnist", "logger=csv", "debug=limit", "stage1.auto_train=false",
                         "model.num_tokens=null", "model.grid_shape=null", "test=false", s1], tmp_path / "prior")
    with open_dict(cfg):
        cfg.paths.artifact_dir = str(tmp_path / "store")
    train(cfg)
    assert "Reusing stage-1 artefact" in caplog.text

