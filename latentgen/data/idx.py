"""Reader for the IDX format used by MNIST and Fashion-MNIST (raw or gzip-compressed)."""

from __future__ import annotations

import gzip
import hashlib
import math
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
_CHECK_PATH = "check that paths.data_dir (LATENTGEN_DATA_DIR) points at the dataset folder, or " + _REFETCH


def _type_name(code: int) -> str:
    return f"0x{code:02x} ({np.dtype(IDX_DTYPES[code]).name})"


ACCEPTED_TYPES = ", ".join(_type_name(c) for c in IDX_DTYPES)


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
        raise DatasetError(
            f"IDX file {source} has type code 0x{code:02x} (its header's type byte, at offset 2), which is no IDX "
            f"type (accepted: {ACCEPTED_TYPES}); it is damaged or not an IDX file: {_CHECK_PATH}"
        )
    if ndim == 0:
        raise DatasetError(f"IDX file {source} declares 0 dimensions: {_REFETCH}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"IDX file {source} is truncated inside its header: {_REFETCH}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[code])
    actual = len(data) - header
    _check_payload_size(source, code, dims, actual)
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _check_payload_size(source: str | Path, code: int, dims: tuple[int, ...], actual: int) -> None:
    """Raise DatasetError unless ``actual`` payload bytes are what the header declares."""
    count = math.prod(dims)  # exact: a damaged header can declare more elements than an int64 holds
    expected = count * np.dtype(IDX_DTYPES[code]).itemsize
    if actual == expected:
        return
    fitting = [c for c in IDX_DTYPES if c != code and count * np.dtype(IDX_DTYPES[c]).itemsize == actual]
    if fitting:
        raise DatasetError(
            f"IDX file {source} has type byte {_type_name(code)} in its header, but its {actual}-byte "
            f"payload of shape {dims} fits type {_type_name(fitting[0])}: the type byte is damaged "
            f"(accepted types: {ACCEPTED_TYPES}): {_REFETCH}"
        )
    shape = str(dims) if len(dims) <= 4 else f"({', '.join(map(str, dims[:4]))}, ...)"
    declared = f"{expected:.3g}" if expected >= 10**12 else str(expected)
    damage = ("is truncated" if actual < expected else f"has {actual - expected} trailing bytes")
    raise DatasetError(
        f"IDX file {source} does not match its header: the header declares type byte "
        f"{_type_name(code)} and {len(dims)} dimension(s) {shape}, i.e. {declared} bytes of data, but "
        f"{actual} bytes follow it. The file {damage} or its header is damaged (accepted type bytes: "
        f"{ACCEPTED_TYPES}): {_CHECK_PATH}"
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a numpy array, validating header and size."""
    return parse_idx(read_idx_bytes(path), path)


def md5_of_idx(path: str | Path) -> str:
    """MD5 hex digest of the decompressed content of an IDX file."""
    return hashlib.md5(read_idx_bytes(path)).hexdigest()
