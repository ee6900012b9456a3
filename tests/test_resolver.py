"""A run's dependencies are resolved before it seeds: stage 1 is trained in a child process (never by
library code calling the training entrypoint), the prior starts the same whether its stage 1 was
trained now or reused, and the artefact records (without keying on) the devices it trained on."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import shlex
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from latentgen.stages.child_train import OUTPUT_LOG, ChildTrainingError
from latentgen.stages.identity import STAGE1, artifact_key
from latentgen.stages.stage1 import compose_stage1, resolve_stage1
from latentgen.train import train

from .conftest import REPO, TINY, compose_train

ENTRYPOINTS = {"latentgen.train", "latentgen.sample", "latentgen.evaluate", "latentgen.compare"}
STAGE1_TINY = "stage1.overrides=[" + ",".join(f"'{o}'" for o in TINY) + "]"
NUM_BATCHES = 3


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (``import a.b``, ``from a.b import c``: also ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_library_module_imports_an_entrypoint():
    """Not even each other: what two entrypoints share lives in a library module."""
    modules = sorted([*(REPO / "latentgen").rglob("*.py"), *(REPO / "launch").rglob("*.py")])  # launch: latentgen.launch
    offenders = {str(p.relative_to(REPO)): sorted(imported_modules(p) & ENTRYPOINTS) for p in modules}
    assert {p: names for p, names in offenders.items() if names} == {}


def _prior_cfg(tmp_path: Path, name: str, logs: Path, *overrides: str):
    """A tiny PixelCNN prior that only builds (no fit, no test), with its store under ``logs``."""
    cfg = compose_train(["+experiment=pixelcnn_mnist", "debug=fdr", "train=false", "test=false", STAGE1_TINY,
                         "model.num_tokens=null", *overrides], tmp_path / name)
    with open_dict(cfg):
        cfg.paths.log_dir = str(logs)
        cfg.paths.artifact_dir = str(logs / "artifacts")
    return cfg


def _start(cfg) -> dict:
    """Run ``train`` (it only builds) and keep the prior's initial weights and first train batches."""
    _, objects = train(cfg)
    GlobalHydra.instance().clear()
    loader = iter(objects["datamodule"].train_dataloader())
    return {"weights": {k: v.clone() for k, v in objects["model"].state_dict().items()},
            "batches": [next(loader) for _ in range(NUM_BATCHES)]}


def _stage1_runs(logs: Path) -> list[Path]:
    return sorted(p for p in (logs / "artifacts" / "stage1").glob("*.runs/*") if p.is_dir())


@pytest.fixture(scope="module")
def first_prior(tmp_path_factory, mnist_dir):
    """A prior started on an empty store: it trains its stage 1 (in a child process) first."""
    tmp = tmp_path_factory.mktemp("first_prior")
    logs = tmp / "logs"
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        started = _start(_prior_cfg(tmp, "trained", logs))
    return {"tmp": tmp, "logs": logs, "console": console.getvalue(), **started}


def test_prior_starts_the_same_whether_stage1_was_trained_now_or_reused(first_prior, caplog):
    logs = first_prior["logs"]
    assert len(_stage1_runs(logs)) == 1  # the first prior trained stage 1
    caplog.set_level(logging.INFO)
    reused = _start(_prior_cfg(first_prior["tmp"], "reused", logs))
    assert len(_stage1_runs(logs)) == 1 and "Reusing stage-1 artefact" in caplog.text

    trained = first_prior["weights"]
    assert trained.keys() == reused["weights"].keys()
    prior_weights = [k for k in trained if not k.startswith("stage1.")]
    assert prior_weights
    for name in trained:
        assert torch.equal(trained[name], reused["weights"][name]), name
    for a, b in zip(first_prior["batches"], reused["batches"], strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_stage1_training_runs_in_a_child_whose_output_is_shown_and_kept(first_prior):
    (run_dir,) = _stage1_runs(first_prior["logs"])
    log_text = (run_dir / OUTPUT_LOG).read_text()
    command = log_text.splitlines()[0]
    assert command.startswith("$ ")
    argv = shlex.split(command[2:])
    assert argv[1:4] == ["-m", "latentgen.train", "+experiment=vqvae_mnist"] and f"hydra.run.dir='{run_dir}'" in argv
    child_line = "Instantiating callback <latentgen.stages.run_export.StoreExport>"
    assert child_line in log_text and child_line in first_prior["console"]  # shown here, as it ran
    assert (run_dir / ".hydra" / "config.yaml").is_file()  # the child's own Hydra run


def test_stage1_artefact_records_devices_and_reuse_with_another_batch_size_warns(first_prior, caplog):
    logs, tmp = first_prior["logs"], first_prior["tmp"]
    (meta_file,) = (logs / "artifacts" / "stage1").glob("*/meta.json")
    assert json.loads(meta_file.read_text())["training"] == {
        "devices": 1, "num_nodes": 1, "accumulate_grad_batches": 1, "batch_size": 32, "effective_batch_size": 32}

    # the same stage 1 on 2 devices: the same artefact (devices are not part of its identity), with a warning
    cfg = _prior_cfg(tmp, "two_devices", logs, STAGE1_TINY[:-1] + ",'trainer.devices=2']")
    assert artifact_key(compose_stage1(cfg)) == meta_file.parent.name
    caplog.set_level(logging.INFO)
    stage1 = resolve_stage1(cfg)
    GlobalHydra.instance().clear()
    assert stage1.ckpt_path == meta_file.parent / "model.ckpt" and len(_stage1_runs(logs)) == 1
    assert "was trained with effective batch size 32 (batch 32 x 1 device(s)" in caplog.text
    assert "would train it with 64 (batch 32 x 2 device(s)" in caplog.text


def test_failed_stage1_training_names_the_command_and_its_output(tmp_path, mnist_dir):
    logs = tmp_path / "logs"
    broken = STAGE1_TINY[:-1] + ",'ckpt_path=/nonexistent/stage1.ckpt']"
    cfg = _prior_cfg(tmp_path, "prior", logs, broken)
    with pytest.raises(ChildTrainingError) as err:
        train(cfg)
    (run_dir,) = _stage1_runs(logs)
    msg = str(err.value)
    assert "Training stage 1 (vqvae_mnist) for the artefact store failed (exit code 1)" in msg
    assert "-m latentgen.train +experiment=vqvae_mnist" in msg and "ckpt_path=/nonexistent/stage1.ckpt" in msg
    assert f"its output: {run_dir / OUTPUT_LOG}" in msg and "ckpt_path=/nonexistent/stage1.ckpt does not exist" in msg
    assert not list((logs / "artifacts" / STAGE1.kind).glob("*/meta.json"))
    assert not list((logs / "artifacts" / STAGE1.kind).glob(".*.tmp-*"))
