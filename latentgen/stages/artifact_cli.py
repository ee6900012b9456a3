"""``latentgen-artifacts``: put trained models into the artefact store, list and verify it.

    latentgen-artifacts train +experiment=vqvae_mnist [overrides]   # train and store, as a prior would
    latentgen-artifacts register RUN_DIR [--artifact-dir DIR]        # store a finished training run
    latentgen-artifacts list [--artifact-dir DIR]                    # what the store holds
    latentgen-artifacts verify [--artifact-dir DIR]                  # checksums and checks of everything

``train`` does what a prior (or an evaluation) does for a missing model: under the artefact lock, it runs
``python -m latentgen.train <overrides>`` as a child process and stores that run the way ``register``
stores one. Both store the model under the key a prior's (or an evaluation's) lookup computes for the
same experiment and overrides, so a run with ``stage1.auto_train=false`` (or
``classifier.auto_train=false``) finds it afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import DictConfig

from latentgen.metrics.classifier_lookup import CLASSIFIER
from latentgen.stages.artifacts import ArtifactStore
from latentgen.stages.finished_run import run_config, stage_run
from latentgen.stages.stage1 import STAGE1, ArtifactKind, artifact_key, find_or_train
from latentgen.utils.compose import compose_config

# the ``stage`` of a training config -> the artefact its model is stored as
STAGE_ARTIFACTS = {"vqvae": STAGE1, "vqgan": STAGE1, "fsq": STAGE1, "vae": STAGE1, "classifier": CLASSIFIER}


def artifact_kind(cfg: DictConfig) -> ArtifactKind:
    stage = cfg.get("stage")
    if stage not in STAGE_ARTIFACTS:
        raise ValueError(f"stage={stage!r} ({cfg.get('task_name')}) is not stored as an artefact: only "
                         f"{sorted(STAGE_ARTIFACTS)} runs are (e.g. +experiment=vqvae_mnist, +experiment=classifier_mnist)")
    return STAGE_ARTIFACTS[stage]


def default_artifact_dir() -> Path:
    """``paths.artifact_dir`` as a training run here would resolve it (LATENTGEN_LOG_DIR, ./logs)."""
    return Path(compose_config([]).paths.artifact_dir)


def train_and_store(overrides: list[str]) -> tuple[Path, str]:
    """Train the run ``overrides`` describe straight into the store (reused if already stored), the
    way a prior trains a missing stage 1: in a child process, under the artefact lock."""
    cfg = compose_config(overrides)
    artifact = artifact_kind(cfg)
    return find_or_train(cfg, cfg.paths.artifact_dir, artifact, True, missing=lambda *_: "", overrides=overrides)


def register_run(run_dir: Path, artifact_dir: Path | None = None, key: str | None = None) -> tuple[Path, str, bool]:
    """Store a finished stage-1 or classifier run under the key its config hashes to (which must be
    ``key`` when given)."""
    run_dir = run_dir.resolve()
    cfg = run_config(run_dir)
    artifact = artifact_kind(cfg)
    store = ArtifactStore(artifact_dir or cfg.paths.artifact_dir)
    key = key or artifact_key(cfg)
    folder, built = store.fetch_or_build(artifact.kind, key, f"{artifact.name} {cfg.task_name} [{key}]",
                                         lambda staging: stage_run(run_dir, artifact, staging, expected_key=key))
    return folder, key, built


def store_entries(root: Path) -> list[tuple[str, str]]:
    """``(kind, key)`` of every artefact folder in the store (not staging, run or rejected folders)."""
    return [(kind.name, d.name) for kind in sorted(p for p in root.iterdir() if p.is_dir())
            for d in sorted(kind.iterdir()) if d.is_dir() and not d.name.startswith(".") and "." not in d.name]


def show(root: Path, verify: bool) -> int:
    """Print one line per artefact; with ``verify``, check each fully. Returns the number failing."""
    if not root.is_dir():
        raise FileNotFoundError(f"artefact store {root} does not exist: pass --artifact-dir DIR")
    store, failing = ArtifactStore(root), 0
    for kind, key in store_entries(root):
        meta, problem = store.inspect(kind, key, verify=verify)
        failing += meta is None
        status = "ok" if meta is not None else f"NOT USABLE: {problem}"
        what = (meta or {}).get("experiment") or (meta or {}).get("dataset") or ""
        print(f"{kind}/{key}  {what}  {(meta or {}).get('created', '')}  {status}")
    return failing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="latentgen-artifacts", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train a stage-1 or classifier experiment straight into the store")
    train_p.add_argument("overrides", nargs="+", help="Hydra overrides, as for python -m latentgen.train")
    reg = sub.add_parser("register", help="store a finished stage-1 or classifier run dir")
    reg.add_argument("run_dir", type=Path)
    reg.add_argument("--key", default=None, help="refuse the run unless its config hashes to this key")
    for name in ("list", "verify"):
        sub.add_parser(name, help=f"{name} the stored artefacts")
    for p in sub.choices.values():
        if p is not train_p:
            p.add_argument("--artifact-dir", type=Path, default=None,
                           help="the store (default: paths.artifact_dir as a run here resolves it)")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            path, key = train_and_store(args.overrides)
            print(f"Stored artefact {key}: {path}")
        elif args.command == "register":
            folder, key, built = register_run(args.run_dir, args.artifact_dir, args.key)
            print(f"{'Stored' if built else 'Already stored:'} artefact {key} from {args.run_dir}: {folder}")
        else:
            failing = show(args.artifact_dir or default_artifact_dir(), verify=args.command == "verify")
            if failing:
                sys.exit(f"{failing} artefact(s) are not usable (runs refuse and rebuild them)")
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"latentgen-artifacts {args.command}: {e}")


if __name__ == "__main__":
    main()
