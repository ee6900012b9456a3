"""Reader for the CIFAR-10 python pickle batches (``cifar-10-batches-py/``)."""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10

_REFETCH = (
    "delete the cifar-10-batches-py folder so that it is downloaded again, or replace the file"
)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Globals a CIFAR pickle may reference: numpy array/dtype reconstruction and bytes."""
    sample = np.zeros(1, dtype=np.uint8)
    allowed: dict[tuple[str, str], Any] = {}
    for func in (sample.__reduce__()[0], sample.__reduce_ex__(5)[0]):
        module = func.__module__
        allowed[(module, func.__name__)] = func
        allowed[(module.replace("numpy._core", "numpy.core"), func.__name__)] = func
    scalar_reduce = np.int64(0).__reduce__()[0]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = scalar_reduce
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = codecs.encode  # bytes in protocol <= 2 pickles
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(
            f"cannot read CIFAR-10 file {path}: {exc}; check that it exists"
        ) from exc
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # pickle raises many exception types on damaged input
        raise DatasetError(
            f"CIFAR-10 file {path} is not a readable pickle batch ({exc}): {_REFETCH}"
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetError(
            f"CIFAR-10 file {path} holds a {type(obj).__name__}, expected a dict: {_REFETCH}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file into ``(images uint8 [N,3,32,32], labels int64 [N])``."""
    path = Path(path)
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(
            f"CIFAR-10 file {path} lacks 'data' or 'labels' (keys: {sorted(batch)}): {_REFETCH}"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    pixels = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise DatasetError(
            f"CIFAR-10 file {path} has data {data.dtype}{list(data.shape)}, expected uint8[N, {pixels}]: {_REFETCH}"
        )
    if (
        labels.ndim != 1
        or labels.shape[0] != data.shape[0]
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise DatasetError(
            f"CIFAR-10 file {path} has {labels.shape} {labels.dtype} labels for {data.shape[0]} images: {_REFETCH}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(
            f"CIFAR-10 file {path} has labels outside 0..{NUM_CLASSES - 1}: {_REFETCH}"
        )
    return data.reshape(-1, *IMAGE_SHAPE).copy(), labels.astype(np.int64)


def read_cifar_meta(path: str | Path) -> list[str]:
    """Read the class names from ``batches.meta``."""
    path = Path(path)
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DatasetError(
            f"CIFAR-10 file {path} lacks a list of {NUM_CLASSES} 'label_names': {_REFETCH}"
        )
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def read_cifar_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the 'train' (5 batches) or 'test' split from a ``cifar-10-batches-py`` folder."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    names = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
    parts = [read_cifar_batch(Path(folder) / name) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
