"""Locate, verify and (optionally) download dataset files, writing atomically."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
from tqdm.auto import tqdm

from .errors import DATA_DIR_ENV, DatasetError, data_dir_fix
from .idx import find_idx, parse_idx, read_idx_bytes
from .sources import DatasetSpec, FileSpec, get_spec

DOWNLOAD_TIMEOUT_S = float(os.environ.get("LATENTGEN_DOWNLOAD_TIMEOUT", "15"))
_CHUNK = 1 << 20
_NET_ERRORS = (OSError, http.client.HTTPException, ValueError)

# (resolved path, size, mtime_ns, expected md5) of files verified in this process.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def _open_url(url: str, timeout: float) -> Any:
    """Open ``url`` for streaming (replaced in tests to simulate the network)."""
    request = urllib.request.Request(url, headers={"User-Agent": "latentgen"})
    return urllib.request.urlopen(request, timeout=timeout)


def dataset_folder(data_dir: str | Path, dataset: str | DatasetSpec) -> Path:
    """Folder that holds a dataset's files: ``<data_dir>/<folder>[/<subdir>]``."""
    spec = get_spec(dataset)
    folder = Path(data_dir).expanduser() / spec.folder
    return folder / spec.subdir if spec.subdir else folder


def _locate(spec: DatasetSpec, folder: Path, name: str) -> Path | None:
    if spec.format == "idx":
        return find_idx(folder, name)
    path = folder / name
    return path if path.is_file() else None


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_md5(spec: DatasetSpec, path: Path, fspec: FileSpec) -> None:
    """Raise DatasetError unless ``path`` has the expected content (no caching)."""
    if spec.format == "idx":
        data = read_idx_bytes(path)
        digest = hashlib.md5(data).hexdigest()
        if digest != fspec.md5:
            parse_idx(data, path)  # a damaged structure gets a more specific message
    else:
        digest = _md5_file(path)
    if digest != fspec.md5:
        what = "decompressed content" if spec.format == "idx" else "content"
        raise DatasetError(
            f"checksum mismatch for {path}: md5 of its {what} is {digest}, expected {fspec.md5} "
            f"({spec.name} {fspec.name}); the file is damaged or a different version: delete it so "
            "that it is downloaded again, or replace it with an intact copy "
            "(verify_checksums=False skips this check if you trust the file)"
        )


def verify_file(spec: DatasetSpec, path: Path, fspec: FileSpec) -> None:
    """Verify ``path`` against ``fspec.md5``; a success is remembered for this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, fspec.md5)
    if key in _VERIFIED:
        return
    _check_md5(spec, path, fspec)
    _VERIFIED.add(key)


def _fetch_to_temp(url: str, folder: Path, name: str, check: Callable[[Path], None]) -> Path:
    """Stream ``url`` into a hidden temp file in ``folder``, run ``check`` on it, return it.

    The temp file is removed on any failure, so nothing half-written is ever left under a
    name that a later run trusts.
    """
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url, DOWNLOAD_TIMEOUT_S) as response:
            headers = getattr(response, "headers", None) or {}
            total = int(headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"download {name}",
                mininterval=1.0,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        if total is not None and tmp.stat().st_size != total:
            raise DatasetError(
                f"download of {url} stopped after {tmp.stat().st_size} of {total} bytes"
            )
        check(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600 files; data files should be shareable
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _download_idx(spec: DatasetSpec, folder: Path, missing: list[FileSpec]) -> list[str]:
    """Download missing IDX files as ``<name>.gz``; return one error line per failed attempt.

    Stops at the first file no mirror could deliver, so an offline run fails fast.
    """
    failures: list[str] = []
    for fspec in missing:
        if failures:
            break
        for mirror in spec.mirrors:
            url = f"{mirror}{fspec.name}.gz"
            try:
                tmp = _fetch_to_temp(
                    url, folder, f"{fspec.name}.gz", lambda p, f=fspec: _check_md5(spec, p, f)
                )
            except (DatasetError, *_NET_ERRORS) as exc:
                failures.append(f"{url} ({type(exc).__name__}: {exc})")
                continue
            os.replace(tmp, folder / f"{fspec.name}.gz")
            failures.clear()  # an earlier mirror's failure no longer matters
            break
    return failures


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if (
                member.name.startswith("/")
                or ".." in parts
                or not (member.isfile() or member.isdir())
            ):
                raise DatasetError(
                    f"archive {archive} holds an unsafe entry {member.name!r}; delete it"
                )
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.10.12 / 3.11.4: entries were checked above
            tar.extractall(dest)


def _download_archive(spec: DatasetSpec, folder: Path, missing: list[FileSpec]) -> list[str]:
    """Download the dataset archive, unpack it beside ``folder``, move missing files in."""
    archive = spec.archive
    if archive is None:
        raise DatasetError(f"{spec.name} has no archive to download; place its files in {folder}")
    base = folder.parent if spec.subdir else folder

    def check(path: Path) -> None:
        digest = _md5_file(path)
        if digest != archive.md5:
            raise DatasetError(
                f"downloaded {archive.filename} has md5 {digest}, expected {archive.md5}"
            )

    try:
        tmp = _fetch_to_temp(archive.url, base, archive.filename, check)
    except (DatasetError, *_NET_ERRORS) as exc:
        return [f"{archive.url} ({type(exc).__name__}: {exc})"]
    extract_dir = Path(tempfile.mkdtemp(dir=base, prefix=".extract-"))
    try:
        _safe_extract(tmp, extract_dir)
        source = extract_dir / spec.subdir if spec.subdir else extract_dir
        folder.mkdir(parents=True, exist_ok=True)
        for fspec in missing:
            if not (source / fspec.name).is_file():
                raise DatasetError(
                    f"archive {archive.url} lacks {spec.subdir}/{fspec.name}; report the mirror"
                )
            os.replace(source / fspec.name, folder / fspec.name)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(extract_dir, ignore_errors=True)
    return []


def _download(spec: DatasetSpec, folder: Path, missing: list[FileSpec]) -> None:
    base = folder.parent if spec.subdir else folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create {folder} to download {spec.name} ({exc}): {data_dir_fix(spec.example_path())}"
        ) from exc
    if not os.access(base, os.W_OK):
        names = ", ".join(f.name for f in missing)
        raise DatasetError(
            f"{spec.name} files {names} are missing from the read-only folder {folder}; "
            f"copy them there, or {data_dir_fix(spec.example_path())} (in a writable folder)"
        )
    with FileLock(str(base / ".latentgen-download.lock")):
        missing = [f for f in missing if _locate(spec, folder, f.name) is None]  # another process?
        if not missing:
            return
        failures = (_download_archive if spec.format == "cifar" else _download_idx)(
            spec, folder, missing
        )
    still = [f.name for f in missing if _locate(spec, folder, f.name) is None]
    if still:
        tried = "; ".join(failures) or "no mirror configured"
        raise DatasetError(
            f"could not download {spec.name} file(s) {', '.join(still)} into {folder}. Tried: {tried}. "
            f"Fix: check the network, or {data_dir_fix(spec.example_path())}"
        )


def ensure_available(
    data_dir: str | Path,
    dataset: str | DatasetSpec,
    download: bool,
    verify_checksums: bool = True,
) -> dict[str, Path]:
    """Make sure all files of ``dataset`` exist under ``data_dir`` and are intact.

    Returns a mapping from each file's canonical name (without ``.gz``) to its path.
    Missing files are downloaded when ``download`` is true; files that already exist are
    never overwritten. Raises DatasetError naming the file and the fix otherwise.
    """
    spec = get_spec(dataset)
    folder = dataset_folder(data_dir, spec)
    missing = [f for f in spec.files if _locate(spec, folder, f.name) is None]
    if missing and download:
        _download(spec, folder, missing)
    elif missing:
        listed = ", ".join(
            str(folder / f.name) + ("[.gz]" if spec.format == "idx" else "") for f in missing
        )
        raise DatasetError(
            f"{spec.name} file(s) missing: {listed}. Fix: {data_dir_fix(spec.example_path())}"
        )
    paths: dict[str, Path] = {}
    for fspec in spec.files:
        path = _locate(spec, folder, fspec.name)
        if path is None:  # removed concurrently
            raise DatasetError(f"{folder / fspec.name} disappeared while checking it; run again")
        if verify_checksums:
            verify_file(spec, path, fspec)
        paths[fspec.name] = path
    return paths


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir`` if given, else ``$LATENTGEN_DATA_DIR``, else ``./data``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or "data"
    return Path(data_dir).expanduser()
