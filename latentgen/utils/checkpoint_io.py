"""Checkpoints are data, not code: every checkpoint latentgen reads goes through ``load_checkpoint``.

``load_checkpoint(path, purpose=...)`` reads with ``torch.load(weights_only=True)`` and returns the
checkpoint dict. Anything else raises one :class:`CheckpointError` that names the file and what to
do: a truncated or damaged file, a file that is not a PyTorch checkpoint, a payload that is not a
dict, or a pickle that would import code when loaded (refused as unsafe, never run).

latentgen writes hyperparameters as plain containers (``plain_data``, applied when a checkpoint is
saved). Checkpoints of earlier versions hold OmegaConf containers: their classes are data types and
are allow-listed once, here, for every ``torch.load(weights_only=True)`` of the process (Lightning's
own loads included).
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import re
import typing
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

from latentgen.utils.errors import ClearError

# what an OmegaConf container pickles into: the containers, their metadata and value nodes, and the
# builtin types the metadata names
OMEGACONF_DATA_TYPES = (DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, StringNode, IntegerNode,
                        FloatNode, BooleanNode, typing.Any, collections.defaultdict, dict, list, int)
torch.serialization.add_safe_globals(list(OMEGACONF_DATA_TYPES))

INTACT_HINT = "pass an intact checkpoint written by latentgen, e.g. <run dir>/checkpoints/last.ckpt"


class CheckpointError(ClearError, ValueError):
    """A checkpoint file that latentgen cannot (or will not) use; the message names the file and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"checkpoint {path} {problem}: {fix}")

    def __reduce__(self):  # picklable, so it crosses process boundaries (DDP spawn, launchers) intact
        return type(self), (self.path, self.problem, self.fix)


def load_checkpoint(path: str | Path, *, purpose: str, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """The checkpoint dict stored in ``path``, read as data (``weights_only=True``).

    ``purpose`` completes "cannot be used to ..." in error messages, e.g. ``"resume training"``.
    ``mmap=True`` maps tensors instead of reading them (cheap for large files).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: {INTACT_HINT}")
    damaged = (f"cannot be used to {purpose}: it is truncated or damaged, or not a PyTorch checkpoint at all",
               INTACT_HINT)
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle's protocol precedes our error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(err))
        if unsafe is None:
            raise CheckpointError(path, *damaged) from None
        raise CheckpointError(
            path, f"is refused as unsafe: loading it would import {unsafe.group(1)}, and latentgen loads "
            "checkpoints as data only (tensors and plain containers)",
            "pass a checkpoint written by latentgen, e.g. <run dir>/checkpoints/last.ckpt; load this file by "
            "other means only if you trust where it came from") from None
    except PermissionError:
        raise CheckpointError(path, "cannot be read: permission denied", "make it readable, or copy it") from None
    except Exception:  # noqa: BLE001 - torch.load fails in many ways on foreign bytes: one error for all
        raise CheckpointError(path, *damaged) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"holds a {type(ckpt).__name__}, not a Lightning checkpoint (a dict)",
                              INTACT_HINT)
    return ckpt


def plain_data(value: Any) -> Any:
    """``value`` as plain Python data: OmegaConf containers, NumPy values and paths become dicts, lists,
    numbers and strings, so a checkpoint holding it loads with ``weights_only=True``."""
    if OmegaConf.is_config(value):
        return plain_data(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain_data(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    return value


@contextlib.contextmanager
def exit_on_checkpoint_error() -> Iterator[None]:
    """For entrypoints: a :class:`CheckpointError` ends the process with its message alone (exit code 1)."""
    try:
        yield
    except CheckpointError as err:
        raise SystemExit(f"Error: {err}") from None
