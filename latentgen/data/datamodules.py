"""Lightning data modules for MNIST, Fashion-MNIST and CIFAR-10, held in memory as uint8."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .cifar import read_cifar_split
from .download import dataset_folder, ensure_available, resolve_data_dir
from .errors import DatasetError
from .idx import read_idx
from .sampler import ResumableTrainLoader
from .sources import DatasetSpec, get_spec

SPLITS = ("train", "val", "test")


class ImageTensorDataset(Dataset):
    """In-memory uint8 images ``[N,C,H,W]`` viewed through optional row ``indices``.

    Items are ``(float32 image in [0, 1] of shape [C,H,W], int64 label)``. ``__getitems__``
    converts a whole batch at once, which the DataLoader uses when present.
    """

    def __init__(self, images: Tensor, labels: Tensor, indices: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N,C,H,W], got {images.dtype} {list(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape [{images.shape[0]}], got {list(labels.shape)}"
            )
        self.images = images.contiguous()
        self.labels = labels.long().contiguous()
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self._images = self.images.numpy()  # shares memory with the tensors
        self._labels = self.labels.numpy()
        self._rows = None if self.indices is None else self.indices.numpy()

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else self.images.shape[0]

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Images ``float32 [B,C,H,W]`` in [0, 1] and labels ``int64 [B]`` for positions ``indices``."""
        rows = np.asarray(indices, dtype=np.int64)
        if self._rows is not None:
            rows = self._rows[rows]
        # numpy ops are single-threaded: torch's intra-op threads thrash on small batches
        # when the CPU is shared, which made this 30x slower.
        images = self._images[rows].astype(np.float32)
        images /= 255.0
        return torch.from_numpy(images), torch.from_numpy(self._labels[rows])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        images, labels = self.get_batch([index])
        return images[0], labels[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        images, labels = self.get_batch(indices)
        return list(zip(images.unbind(0), labels.unbind(0), strict=True))


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic sorted ``(train, val)`` index arrays partitioning ``range(n)``."""
    if not 0 <= val_size < n:
        raise ValueError(
            f"val_size={val_size} must be in [0, {n - 1}] for {n} training images; lower val_size"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def load_split(
    data_dir: str | Path, dataset: str | DatasetSpec, split: str, verify_checksums: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Read the 'train' or 'test' file split: ``(uint8 [N,C,H,W], int64 [N])``. Never downloads."""
    spec = get_spec(dataset)
    if split not in spec.splits:
        raise ValueError(f"split must be one of {sorted(spec.splits)}, got {split!r}")
    paths = ensure_available(data_dir, spec, download=False, verify_checksums=verify_checksums)
    if spec.format == "cifar":
        images, labels = read_cifar_split(dataset_folder(data_dir, spec), split)
    else:
        image_file, label_file = spec.splits[split]
        images, labels = read_idx(paths[image_file]), read_idx(paths[label_file])
        if images.dtype != np.uint8 or images.shape[1:] != spec.image_shape[1:]:
            raise DatasetError(
                f"{paths[image_file]} holds {images.dtype} {list(images.shape)}, expected uint8 "
                f"[N, {spec.image_shape[1]}, {spec.image_shape[2]}]; replace it with the {spec.name} file"
            )
        if labels.shape != images.shape[:1]:
            raise DatasetError(
                f"{paths[label_file]} holds {list(labels.shape)} labels for {len(images)} images in "
                f"{paths[image_file]}; replace the pair with matching {spec.name} files"
            )
        images = images[:, None]
        if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
            raise DatasetError(
                f"{paths[label_file]} has labels outside 0..{spec.num_classes - 1}; replace it"
            )
    return images, labels.astype(np.int64)


class ImageDataModule(ResumableTrainLoader):
    """Base data module: a deterministic train/val split of the train file plus the test file.

    ``data_dir`` is the data root holding ``mnist/``, ``fashion-mnist/`` and ``cifar-10/``
    (empty: ``$LATENTGEN_DATA_DIR`` or ``./data``). ``prepare_data`` downloads missing files
    if ``download``; ``setup`` never downloads. The train loader shuffles with a permutation of
    ``(shuffle_seed, epoch)`` (``shuffle_seed`` None: the run's seed), splits it over DDP ranks,
    drops a last incomplete batch and resumes mid-epoch from a checkpoint (``data.sampler``);
    ``dataloader(split)`` gives ordered loaders for encoding whole splits.
    """

    dataset_name: ClassVar[str] = ""

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 0,
        download: bool = True,
        verify_checksums: bool = True,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if not self.dataset_name:
            raise TypeError(
                "ImageDataModule is abstract: use MNISTDataModule, FashionMNISTDataModule or "
                "CIFAR10DataModule, or subclass it and set dataset_name"
            )
        self.spec = get_spec(self.dataset_name)
        if batch_size <= 0:
            raise ValueError(f"data.batch_size={batch_size}: it must be a positive number of images, e.g. data.batch_size=128")
        if eval_batch_size is not None and eval_batch_size <= 0:
            raise ValueError(
                f"eval_batch_size must be > 0 or None (same as batch_size), got {eval_batch_size}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0 <= val_size < self.spec.num_train:
            raise ValueError(
                f"val_size={val_size} must be in [0, {self.spec.num_train - 1}]: the {self.name} "
                f"train file has {self.spec.num_train} images"
            )
        self.save_hyperparameters()
        self.data_dir = resolve_data_dir(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.split_seed = split_seed
        self.download = download
        self.verify_checksums = verify_checksums
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.shuffle_seed = shuffle_seed
        self.train_set: ImageTensorDataset | None = None
        self.val_set: ImageTensorDataset | None = None
        self.test_set: ImageTensorDataset | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.spec.image_shape

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    def prepare_data(self) -> None:
        ensure_available(
            self.data_dir, self.spec, download=self.download, verify_checksums=self.verify_checksums
        )

    def setup(self, stage: str | None = None) -> None:
        """Load all splits into memory (once). Never downloads."""
        if self.train_set is not None:
            return
        train_x, train_y = load_split(self.data_dir, self.spec, "train", self.verify_checksums)
        test_x, test_y = load_split(self.data_dir, self.spec, "test", self.verify_checksums)
        train_idx, val_idx = split_indices(len(train_x), self.val_size, self.split_seed)
        images, labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
        self.train_set = ImageTensorDataset(images, labels, torch.from_numpy(train_idx))
        self.val_set = ImageTensorDataset(images, labels, torch.from_numpy(val_idx))
        self.test_set = ImageTensorDataset(torch.from_numpy(test_x), torch.from_numpy(test_y))

    def _dataset(self, split: str) -> ImageTensorDataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        dataset = getattr(self, f"{split}_set")
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup() must run before asking for the {split} loader"
            )
        return dataset

    def dataloader(
        self,
        split: str,
        shuffle: bool = False,
        batch_size: int | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        """Loader over 'train', 'val' or 'test' (ordered unless ``shuffle``)."""
        dataset = self._dataset(split)
        if batch_size is None:
            batch_size = self.batch_size if split == "train" else self.eval_batch_size
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self.resumable_train_loader(
            self._dataset("train"),
            self.batch_size,
            seed=self.shuffle_seed,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")


class MNISTDataModule(ImageDataModule):
    """MNIST digits, 1x28x28, 10 classes."""

    dataset_name = "mnist"


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST, 1x28x28, 10 classes."""

    dataset_name = "fashion-mnist"


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10, 3x32x32, 10 classes."""

    dataset_name = "cifar-10"


DATAMODULES: dict[str, type[ImageDataModule]] = {
    cls.dataset_name: cls for cls in (MNISTDataModule, FashionMNISTDataModule, CIFAR10DataModule)
}


def datamodule_class(dataset: str) -> type[ImageDataModule]:
    """Data module class for a dataset name ('mnist', 'fashion-mnist', 'cifar-10')."""
    return DATAMODULES[get_spec(dataset).name]
