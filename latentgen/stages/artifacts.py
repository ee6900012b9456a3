"""Content-addressed artefact store shared by runs, sweeps and Slurm jobs.

Each artefact is a directory ``<root>/<kind>/<key>/`` holding its files and a ``meta.json`` written
last. An artefact is *complete* only when ``meta.json`` exists and every file's SHA-256 matches it,
so an interrupted writer never leaves something a later run would trust. Producers hold an
inter-process file lock (``<key>.lock``) while they build, so concurrent runs build it exactly once
and the others wait and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from latentgen.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=False)


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


class ArtifactStore:
    """Directory of complete, checksummed artefacts under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def meta(self, kind: str, key: str, verify: bool = True) -> dict[str, Any] | None:
        """The artefact's metadata if it is complete (and its files verify), else None."""
        d = self.path(kind, key)
        meta_file = d / "meta.json"
        if not meta_file.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError:
            log.warning(f"Ignoring artefact {d}: unreadable meta.json")
            return None
        if verify:
            for name, digest in meta.get("files", {}).items():
                f = d / name
                if not f.is_file() or sha256_file(f) != digest:
                    log.warning(f"Ignoring artefact {d}: {name} is missing or its checksum differs")
                    return None
        return meta

    @contextmanager
    def lock(self, kind: str, key: str, what: str) -> Iterator[None]:
        """Hold the artefact's inter-process lock; tells the user when it has to wait."""
        lock_path = self.path(kind, key).with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0.5)
        except TimeoutError:
            log.info(f"Another process is building {what} ({lock_path}); waiting for it")
            t0 = time.time()
            lock.acquire()
            log.info(f"Waited {time.time() - t0:.0f}s for {what}")
        try:
            yield
        finally:
            lock.release()

    def staging_dir(self, kind: str, key: str) -> Path:
        """A fresh private directory to write an artefact into before ``publish``."""
        d = self.path(kind, key).with_name(f".{key}.tmp-{os.getpid()}-{time.time_ns()}")
        d.mkdir(parents=True)
        return d

    def publish(self, kind: str, key: str, staging: Path, meta: dict[str, Any]) -> Path:
        """Checksum the staged files, write ``meta.json`` last and move the directory into place."""
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        meta = {**meta, "key": key, "kind": kind, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = staging / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(staging / "meta.json")
        final = self.path(kind, key)
        if final.exists():  # a stale, incomplete artefact from a crashed writer
            shutil.rmtree(final)
        staging.rename(final)
        return final
