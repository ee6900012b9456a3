"""Content-addressed artefact store shared by runs, sweeps and Slurm jobs.

Each artefact is a directory ``<root>/<kind>/<key>/`` holding its files and a ``meta.json`` written
last. An artefact is *complete* only when ``meta.json`` exists and every file's SHA-256 matches it,
and *sound* only when it passes :func:`artifact_problems` (finite weights, metrics and latents). Only
complete, sound artefacts are reused, and ``publish`` refuses to store anything else.

A complete artefact is read without any lock, so a store on a read-only filesystem (a shared group
folder) serves every run. Builders hold an inter-process file lock (``<key>.lock``), so concurrent
runs build an artefact exactly once and the others wait and reuse it. Under that lock, leftovers of
interrupted builds of the key (staging folders ``.<key>.tmp-<id>`` and their run dirs
``<key>.runs/<id>``) are removed, and a stored artefact that fails its checks is moved aside to
``<key>.rejected-<time>`` (kept for inspection, never reused) and built again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from latentgen.utils.checkpoint_io import CheckpointError, load_checkpoint
from latentgen.utils.finite import nonfinite_names, shorten
from latentgen.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=False)

CHUNK_BYTES = 64 << 20  # float arrays are checked in chunks of this size (memory-mapped)
TRAINING_FIXES = ("lower model.optimizer.lr, clip gradients with trainer.gradient_clip_val=1.0 or train in fp32 "
                  "(trainer.precision=32-true)")
BUILD_FIXES = f"for a trained model: {TRAINING_FIXES}; for a latent cache: use a stage 1 whose outputs are finite"


class ArtifactCheckError(ValueError):
    """An artefact holds values no run may use (non-finite weights, metrics or latents)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_json(obj: Any) -> str:
    """Stable SHA-256 of a JSON-serialisable object (keys sorted)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- checks -----------------------------------------------------------------------------------------
def nonfinite_numbers(meta: Any, where: str = "") -> list[str]:
    """Where ``meta`` holds a non-finite float (e.g. ``metrics/val/loss``)."""
    if isinstance(meta, dict):
        return [p for k, v in meta.items() for p in nonfinite_numbers(v, f"{where}/{k}" if where else str(k))]
    if isinstance(meta, (list, tuple)):
        return [p for i, v in enumerate(meta) for p in nonfinite_numbers(v, f"{where}[{i}]")]
    return [where] if isinstance(meta, float) and not math.isfinite(meta) else []


def checkpoint_problems(path: Path) -> list[str]:
    """Whether ``path`` loads (without unpickling code) and every ``state_dict`` tensor is finite."""
    try:
        ckpt = load_checkpoint(path, purpose="store or reuse it as an artefact", mmap=True)
    except CheckpointError as err:
        return [f"{path.name} {err.problem}"]
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        return [f"{path.name} holds no state_dict"]
    bad = nonfinite_names(state)
    return [f"{path.name} has non-finite weights: {shorten(bad)}"] if bad else []


def array_problems(path: Path) -> list[str]:
    """Whether a float ``.npy`` array is finite, read memory-mapped in chunks of ``CHUNK_BYTES``."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        return [f"{path.name} cannot be read as a .npy array ({e})"]
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return []
    rows = arr.reshape(len(arr), -1) if arr.ndim else arr.reshape(1, 1)
    step = max(1, CHUNK_BYTES // max(1, rows.shape[1] * rows.itemsize))
    for start in range(0, len(rows), step):
        finite = np.isfinite(rows[start:start + step]).all(axis=1)
        if not finite.all():
            return [f"{path.name} holds non-finite values (first in item {start + int(np.argmin(finite))})"]
    return []


def artifact_problems(folder: Path, meta: dict[str, Any]) -> list[str]:
    """What makes an artefact unusable: non-finite ``*.ckpt`` weights, float ``*.npy`` values or
    numbers in its meta (its metrics)."""
    problems = []
    for f in sorted(folder.iterdir()):
        if f.suffix == ".ckpt":
            problems += checkpoint_problems(f)
        elif f.suffix == ".npy":
            problems += array_problems(f)
    bad = nonfinite_numbers(meta)
    return problems + ([f"its metadata has non-finite values: {shorten(bad)}"] if bad else [])


# -- store ------------------------------------------------------------------------------------------
class ArtifactStore:
    """Directory of complete, checksummed, checked artefacts under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def inspect(self, kind: str, key: str, verify: bool = True) -> tuple[dict[str, Any] | None, str | None]:
        """``(meta, None)`` for a complete, sound artefact, else ``(None, why not)`` (why: None if absent).

        Reads only: needs no lock and no write access. ``verify=False`` skips checksums and checks.
        """
        d = self.path(kind, key)
        meta_file = d / "meta.json"
        if not meta_file.is_file():
            return None, ("it is incomplete (no meta.json)" if d.exists() else None)
        try:
            meta = json.loads(meta_file.read_text())
            if verify:
                for name, digest in meta.get("files", {}).items():
                    f = d / name
                    if not f.is_file() or sha256_file(f) != digest:
                        return None, f"{name} is missing or its checksum differs"
                problems = artifact_problems(d, meta)
                if problems:
                    return None, "; ".join(problems)
        except json.JSONDecodeError:
            return None, "its meta.json is unreadable"
        except FileNotFoundError:  # moved aside by a builder while being read
            return None, "it disappeared while being read"
        return meta, None

    def meta(self, kind: str, key: str, verify: bool = True) -> dict[str, Any] | None:
        """The artefact's metadata if it is complete and sound, else None (with a warning why not)."""
        meta, problem = self.inspect(kind, key, verify)
        if problem:
            log.warning(f"Ignoring artefact {self.path(kind, key)}: {problem}")
        return meta

    @contextmanager
    def lock(self, kind: str, key: str, what: str) -> Iterator[None]:
        """Hold the artefact's inter-process lock; tells the user when it has to wait."""
        lock_path = self.path(kind, key).with_suffix(".lock")
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(lock_path.parent, os.W_OK):
                raise PermissionError(f"{lock_path.parent} is not writable")
            lock = FileLock(str(lock_path))
            lock.acquire(timeout=0.5)
        except TimeoutError:
            log.info(f"Another process is building {what} ({lock_path}); waiting for it")
            t0 = time.time()
            lock.acquire()
            log.info(f"Waited {time.time() - t0:.0f}s for {what}")
        except OSError as e:
            raise PermissionError(
                f"{what} has to be built, but the artefact store {self.root} is not writable ({e}). Point "
                "paths.artifact_dir (or LATENTGEN_LOG_DIR) at a writable folder, or have the store's owner "
                "build it there."
            ) from e
        try:
            yield
        finally:
            lock.release()

    def staging_dir(self, kind: str, key: str) -> Path:
        """A fresh private directory to write an artefact into before ``publish``."""
        d = self.path(kind, key).with_name(f".{key}.tmp-{os.getpid()}-{time.time_ns()}")
        d.mkdir(parents=True)
        return d

    @staticmethod
    def build_run_dir(staging: Path) -> Path:
        """Run dir of the training that fills ``staging`` (``<key>.runs/<pid>-<ns>``, kept after publish)."""
        key, build_id = staging.name[1:].split(".tmp-", 1)
        return staging.parent / f"{key}.runs" / build_id

    def remove_interrupted_builds(self, kind: str, key: str) -> None:
        """Delete the staging folders (and their run dirs) of builds of ``key`` that never published.

        Call only under ``lock(kind, key)``: builders of one key are serialised by it, so any staging
        folder of the key found then belongs to a build that died (killed, crashed host).
        """
        for staging in self.path(kind, key).parent.glob(f".{key}.tmp-*"):
            for d in (self.build_run_dir(staging), staging):
                shutil.rmtree(d, ignore_errors=True)
            log.info(f"Removed the leftovers of an interrupted build of artefact {kind}/{key}: {staging.name}")

    def set_aside(self, kind: str, key: str, reason: str) -> Path:
        """Move a stored artefact that must not be reused to ``<key>.rejected-<time>`` (under the lock)."""
        src = self.path(kind, key)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dst = src.with_name(f"{key}.rejected-{stamp}")
        n = 1
        while dst.exists():
            n += 1
            dst = src.with_name(f"{key}.rejected-{stamp}-{n}")
        src.rename(dst)
        log.warning(f"Refusing stored artefact {src}: {reason}. Moved it to {dst} and building it again.")
        return dst

    def publish(self, kind: str, key: str, staging: Path, meta: dict[str, Any]) -> Path:
        """Check and checksum the staged files, write ``meta.json`` last and move the directory into place.

        Raises ``ArtifactCheckError`` (storing nothing) when the staged artefact fails its checks.
        """
        problems = artifact_problems(staging, meta)
        if problems:
            raise ArtifactCheckError(
                f"Not storing artefact {kind}/{key}: {'; '.join(problems)}. Nothing was stored under "
                f"{self.root}. Fix what produced it ({BUILD_FIXES}) and run again."
            )
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        meta = {**meta, "key": key, "kind": kind, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = staging / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(staging / "meta.json")
        final = self.path(kind, key)
        if final.exists():  # an artefact that failed its checks, or an incomplete one
            self.set_aside(kind, key, self.inspect(kind, key)[1] or "replaced by a new build")
        staging.rename(final)
        return final

    def fetch_or_build(self, kind: str, key: str, what: str,
                       build: Callable[[Path], dict[str, Any]]) -> tuple[Path, bool]:
        """``(folder, built)`` of the complete, sound artefact ``kind/key``, built first if needed.

        A complete, sound artefact is returned without taking the lock (read-only stores work).
        Otherwise, under the lock: reuse it if another process built it meanwhile; else move a failing
        one aside, remove leftovers of interrupted builds, call ``build(staging)`` (it fills the
        staging folder and returns the meta) and publish. A failed build leaves no staging folder.
        """
        if self.inspect(kind, key)[0] is not None:
            return self.path(kind, key), False
        with self.lock(kind, key, what):
            meta, problem = self.inspect(kind, key)
            if meta is not None:
                return self.path(kind, key), False
            if problem:
                self.set_aside(kind, key, problem)
            self.remove_interrupted_builds(kind, key)
            staging = self.staging_dir(kind, key)
            try:
                return self.publish(kind, key, staging, build(staging)), True
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # gone after publish; a failed build's leftovers
