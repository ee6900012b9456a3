"""Tests for the data layer: IDX / CIFAR readers, verification, downloads, data modules."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pytest import MonkeyPatch

import latentgen.data.download as download_mod
from latentgen.data import (
    DATA_DIR_ENV,
    CIFAR10DataModule,
    DatasetError,
    ImageDataModule,
    MNISTDataModule,
    ensure_available,
    find_idx,
    get_spec,
    md5_of_idx,
    read_cifar_meta,
    read_idx,
    split_indices,
)
from latentgen.data.sources import CIFAR10, MNIST

ROOT = Path(__file__).resolve().parents[1]


def _real_data_dir() -> Path | None:
    for candidate in (os.environ.get(DATA_DIR_ENV), ROOT.parent / "shared" / "datasets"):
        if candidate and (Path(candidate) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


REAL = _real_data_dir()
needs_mnist = pytest.mark.skipif(REAL is None, reason=f"real MNIST not found; set {DATA_DIR_ENV}")
LABELS = "train-labels-idx1-ubyte"


@pytest.fixture(scope="module")
def mnist_dm() -> MNISTDataModule:
    dm = MNISTDataModule(str(REAL), batch_size=128, eval_batch_size=500, download=False)
    dm.prepare_data()
    dm.setup()
    return dm


def _mnist_copy(tmp_path: Path, skip: str = "", replace: dict[str, bytes] | None = None) -> Path:
    """A data root whose mnist/ links the real files, except ``skip`` and raw ``replace`` ones."""
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for fspec in MNIST.files:
        if fspec.name == skip:
            continue
        if replace and fspec.name in replace:
            (folder / fspec.name).write_bytes(replace[fspec.name])
        else:
            (folder / f"{fspec.name}.gz").symlink_to(REAL / "mnist" / f"{fspec.name}.gz")
    return folder.parent


def _real_raw(name: str) -> bytes:
    assert REAL is not None
    return gzip.decompress((REAL / "mnist" / f"{name}.gz").read_bytes())


# --- real MNIST ------------------------------------------------------------------------------


@needs_mnist
def test_mnist_shapes_ranges_and_sizes(mnist_dm: MNISTDataModule) -> None:
    assert (mnist_dm.name, mnist_dm.image_shape, mnist_dm.num_classes) == ("mnist", (1, 28, 28), 10)
    assert len(mnist_dm.class_names) == 10
    sizes = (len(mnist_dm.train_set), len(mnist_dm.val_set), len(mnist_dm.test_set))
    assert sizes == (55000, 5000, 10000)
    image, label = mnist_dm.test_set[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert label.dtype == torch.int64
    x, y = next(iter(mnist_dm.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (128,)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) == 1.0
    assert int(y.min()) >= 0 and int(y.max()) <= 9
    assert len(mnist_dm.train_dataloader()) == 55000 // 128  # last partial batch dropped
    test_y = torch.cat([b[1] for b in mnist_dm.test_dataloader()])
    assert test_y.shape == (10000,) and set(test_y.tolist()) == set(range(10))
    x, y = next(iter(mnist_dm.dataloader("val", batch_size=7)))
    for i in range(7):
        item_x, item_y = mnist_dm.val_set[i]
        assert torch.equal(x[i], item_x) and int(y[i]) == int(item_y)


@needs_mnist
def test_split_is_deterministic(mnist_dm: MNISTDataModule) -> None:
    train_a, val_a = split_indices(60000, 5000, seed=0)
    train_b, val_b = split_indices(60000, 5000, seed=0)
    assert np.array_equal(train_a, train_b) and np.array_equal(val_a, val_b)
    assert not np.array_equal(val_a, split_indices(60000, 5000, seed=1)[1])
    assert len(np.intersect1d(train_a, val_a)) == 0 and len(train_a) + len(val_a) == 60000
    assert np.array_equal(mnist_dm.val_set.indices.numpy(), val_a)
    # same indices in every run and process (pins the split algorithm)
    assert hashlib.md5(val_a.tobytes()).hexdigest() == "d6c2e67da1f7e4eee40d60d4fca2833a"


@needs_mnist
def test_md5_and_read_only_folder_untouched() -> None:
    assert md5_of_idx(REAL / "mnist" / f"{LABELS}.gz") == "a25bea736e30d166cdddb491f175f624"
    before = sorted(os.listdir(REAL / "mnist"))
    paths = ensure_available(REAL, "mnist", download=True)
    assert set(paths) == set(MNIST.file_names)
    assert sorted(os.listdir(REAL / "mnist")) == before


@needs_mnist
def test_gz_and_raw_equal(tmp_path: Path) -> None:
    raw = _real_raw(LABELS)
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "b").write_bytes(gzip.compress(raw))  # gzip detected by magic, not name
    a, b = read_idx(tmp_path / "a"), read_idx(tmp_path / "b")
    assert a.shape == (60000,) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert md5_of_idx(tmp_path / "a") == md5_of_idx(tmp_path / "b")
    assert find_idx(tmp_path, "a") == tmp_path / "a" and find_idx(tmp_path, "zz") is None


# --- damaged and missing files ---------------------------------------------------------------


def _damage(raw: bytes, kind: str) -> bytes:
    if kind == "truncated":
        return raw[:-100]
    if kind == "bad_magic":
        return b"\x00\x01" + raw[2:]
    if kind == "one_byte":
        return raw[:500] + bytes([raw[500] ^ 0xFF]) + raw[501:]
    return raw + b"\x00\x00\x00"


@needs_mnist
@pytest.mark.parametrize("kind", ["truncated", "bad_magic", "one_byte", "trailing"])
def test_damaged_file_is_rejected(tmp_path: Path, kind: str) -> None:
    words = {"bad_magic": "magic", "one_byte": "checksum"}.get(kind, kind)
    root = _mnist_copy(tmp_path, replace={LABELS: _damage(_real_raw(LABELS), kind)})
    with pytest.raises(DatasetError, match=words) as info:
        ensure_available(root, "mnist", download=False)
    assert LABELS in str(info.value)
    if kind != "one_byte":  # structure errors are caught even without checksums
        with pytest.raises(DatasetError, match=LABELS):
            read_idx(root / "mnist" / LABELS)


def test_truncated_gzip_and_bad_type_code(tmp_path: Path) -> None:
    raw = b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + bytes([1, 2, 3, 4])
    (tmp_path / "ok").write_bytes(raw)
    assert read_idx(tmp_path / "ok").tolist() == [1, 2, 3, 4]
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:-6])
    with pytest.raises(DatasetError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "code").write_bytes(b"\x00\x00\x07" + raw[3:])
    with pytest.raises(DatasetError, match="type code"):
        read_idx(tmp_path / "code")


@needs_mnist
def test_missing_file_without_download(tmp_path: Path) -> None:
    root = _mnist_copy(tmp_path, skip="t10k-labels-idx1-ubyte")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte") as info:
        ensure_available(root, "mnist", download=False)
    assert DATA_DIR_ENV in str(info.value)
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        MNISTDataModule(str(root), download=False).setup()


# --- downloads (simulated network) -----------------------------------------------------------


class FakeResponse:
    """Stands in for an HTTP response; raises ``fail`` after the first chunk if given."""

    def __init__(self, payload: bytes, fail: BaseException | None = None) -> None:
        self.headers = {"Content-Length": str(len(payload))}
        self.chunks = [payload[: len(payload) // 2], payload[len(payload) // 2 :]]
        self.fail = fail

    def read(self, size: int = -1) -> bytes:
        if not self.chunks:
            return b""
        if self.fail is not None and len(self.chunks) == 1:
            raise self.fail
        return self.chunks.pop(0)

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *args: object) -> None: ...


def _leftovers(folder: Path) -> list[str]:
    hidden = (p.name for p in folder.iterdir() if p.name.startswith("."))
    return sorted(name for name in hidden if not name.endswith(".lock"))


@needs_mnist
def test_offline_download_names_file_and_mirrors(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    def offline(url: str, timeout: float) -> FakeResponse:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(download_mod, "_open_url", offline)
    root = _mnist_copy(tmp_path, skip=LABELS)
    with pytest.raises(DatasetError, match=LABELS) as info:
        ensure_available(root, "mnist", download=True)
    for mirror in MNIST.mirrors:
        assert mirror in str(info.value)
    assert find_idx(root / "mnist", LABELS) is None and _leftovers(root / "mnist") == []


@needs_mnist
@pytest.mark.parametrize("fail", [ConnectionResetError("reset by peer"), KeyboardInterrupt()])
def test_interrupted_download_leaves_no_file(
    tmp_path: Path, monkeypatch: MonkeyPatch, fail: Any
) -> None:
    payload = gzip.compress(_real_raw(LABELS))
    monkeypatch.setattr(download_mod, "_open_url", lambda url, timeout: FakeResponse(payload, fail))
    root = _mnist_copy(tmp_path, skip=LABELS)
    with pytest.raises((DatasetError, KeyboardInterrupt)):
        ensure_available(root, "mnist", download=True)
    assert find_idx(root / "mnist", LABELS) is None and _leftovers(root / "mnist") == []


@needs_mnist
def test_download_falls_back_to_next_mirror(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    good = gzip.compress(_real_raw(LABELS))
    bad = gzip.compress(_damage(_real_raw(LABELS), "one_byte"))
    urls: list[str] = []

    def opener(url: str, timeout: float) -> FakeResponse:
        urls.append(url)
        return FakeResponse(bad if len(urls) == 1 else good)

    monkeypatch.setattr(download_mod, "_open_url", opener)
    root = _mnist_copy(tmp_path, skip=LABELS)
    paths = ensure_available(root, "mnist", download=True)
    assert paths[LABELS] == root / "mnist" / f"{LABELS}.gz" and len(urls) == 2
    assert md5_of_idx(paths[LABELS]) == "a25bea736e30d166cdddb491f175f624"
    umask = os.umask(0)
    os.umask(umask)
    assert paths[LABELS].stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert _leftovers(root / "mnist") == []


# --- CIFAR-10 on small fake batches ----------------------------------------------------------


def _cifar_batch(n: int, offset: int) -> dict[bytes, object]:
    rng = np.random.default_rng(offset)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [(offset + i) % 10 for i in range(n)]
    return {b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}


def _write_cifar(folder: Path) -> dict[str, dict[bytes, object]]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": _cifar_batch(4, offset=4 * (i - 1)) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(6, offset=100)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in CIFAR10.class_names], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def test_cifar_loader_on_fake_batches(tmp_path: Path) -> None:
    batches = _write_cifar(tmp_path / "cifar-10" / "cifar-10-batches-py")
    dm = CIFAR10DataModule(str(tmp_path), 4, val_size=5, download=False, verify_checksums=False)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 5, 6)
    x, y = next(iter(dm.dataloader("test", batch_size=6)))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    data = batches["test_batch"][b"data"]
    assert y.tolist() == batches["test_batch"][b"labels"]
    assert torch.equal(x[0, 0, 0, :], torch.from_numpy(data[0, :32]).float() / 255)  # red row 0
    assert torch.equal(x[0, 1, 0, :], torch.from_numpy(data[0, 1024:1056]).float() / 255)  # green
    labels = [int(v) for split in ("train", "val") for b in dm.dataloader(split) for v in b[1]]
    assert sorted(labels) == sorted(i % 10 for i in range(20))
    meta = tmp_path / "cifar-10" / "cifar-10-batches-py" / "batches.meta"
    assert read_cifar_meta(meta)[0] == "airplane"
    with pytest.raises(DatasetError, match="checksum mismatch"):
        ensure_available(tmp_path, "cifar-10", download=False, verify_checksums=True)


def test_cifar_bad_batch_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10" / "cifar-10-batches-py"
    _write_cifar(folder)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(bad))
    with pytest.raises(DatasetError, match="data_batch_3"):
        CIFAR10DataModule(str(tmp_path), val_size=1, download=False, verify_checksums=False).setup()


def test_cifar_archive_download(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    source = tmp_path / "src"
    _write_cifar(source / "cifar-10-batches-py")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    payload = buffer.getvalue()
    archive = dataclasses.replace(CIFAR10.archive, md5=hashlib.md5(payload).hexdigest())
    spec = dataclasses.replace(CIFAR10, archive=archive)
    monkeypatch.setattr(download_mod, "_open_url", lambda url, timeout: FakeResponse(payload))
    paths = ensure_available(tmp_path / "data", spec, download=True, verify_checksums=False)
    assert set(paths) == set(CIFAR10.file_names) and all(p.is_file() for p in paths.values())
    assert _leftovers(tmp_path / "data" / "cifar-10") == []


# --- argument validation ---------------------------------------------------------------------


BAD_ARGS = [{"val_size": -1}, {"val_size": 60000}, {"batch_size": 0}, {"num_workers": -1}]


@pytest.mark.parametrize("kwargs", BAD_ARGS)
def test_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MNISTDataModule("unused", **kwargs)


def test_usage_errors(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(TypeError, match="MNISTDataModule"):
        ImageDataModule("unused")
    dm = MNISTDataModule("unused")
    with pytest.raises(RuntimeError, match="setup"):
        dm.dataloader("train")
    with pytest.raises(ValueError, match="split"):
        dm.dataloader("bogus")
    assert MNISTDataModule("", val_size=0).data_dir == Path("data")  # no env var: ./data
    assert get_spec("Fashion_MNIST").folder == "fashion-mnist" and get_spec("cifar10") is CIFAR10
    with pytest.raises(ValueError, match="mnist"):
        get_spec("imagenet")
    monkeypatch.setenv(DATA_DIR_ENV, "/somewhere")
    assert MNISTDataModule("").data_dir == Path("/somewhere")
