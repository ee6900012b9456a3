"""Reader for the IDX format used by MNIST and Fashion-MNIST (raw or gzip-compressed)."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype of the payload.
IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_REFETCH = "delete it so that it is downloaded again, or replace it with an intact copy"


def find_idx(folder: str | Path, stem: str) -> Path | None:
    """Return ``folder/stem`` or ``folder/stem.gz`` (raw preferred), or None if neither exists."""
    folder = Path(folder)
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_bytes(path: str | Path) -> bytes:
    """Return the decompressed content of an IDX file.

    Gzip is detected from the magic bytes, not the file name.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(
            f"cannot read IDX file {path}: {exc}; check that it exists and is readable"
        ) from exc
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"IDX file {path} is not a valid gzip stream ({exc}); it is probably truncated: {_REFETCH}"
        ) from exc


def parse_idx(data: bytes, source: str | Path = "<bytes>") -> np.ndarray:
    """Parse decompressed IDX bytes into a native-endian, writable numpy array."""
    if len(data) < 4:
        raise DatasetError(
            f"IDX file {source} is too short ({len(data)} bytes) to hold a header: {_REFETCH}"
        )
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DatasetError(
            f"IDX file {source} has a bad magic number {data[:4].hex()} (expected 0000<type><ndim>); "
            f"it is not an IDX file or is damaged: {_REFETCH}"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise DatasetError(
            f"IDX file {source} has unknown type code 0x{code:02x} (known: {known}): {_REFETCH}"
        )
    if ndim == 0:
        raise DatasetError(f"IDX file {source} declares 0 dimensions: {_REFETCH}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"IDX file {source} is truncated inside its header: {_REFETCH}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise DatasetError(
            f"IDX file {source} is truncated: shape {dims} needs {expected} payload bytes, found {actual}: {_REFETCH}"
        )
    if actual > expected:
        raise DatasetError(
            f"IDX file {source} has {actual - expected} trailing bytes after its {dims} payload: {_REFETCH}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a numpy array, validating header and size."""
    return parse_idx(read_idx_bytes(path), path)


def md5_of_idx(path: str | Path) -> str:
    """MD5 hex digest of the decompressed content of an IDX file."""
    return hashlib.md5(read_idx_bytes(path)).hexdigest()
