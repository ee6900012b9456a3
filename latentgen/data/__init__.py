"""Data layer: dataset registry, IDX / CIFAR-10 readers, verified downloads, data modules."""

from .cifar import read_cifar_batch, read_cifar_meta, read_cifar_split
from .datamodules import (
    DATAMODULES,
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageTensorDataset,
    MNISTDataModule,
    datamodule_class,
    load_split,
    split_indices,
)
from .download import dataset_folder, ensure_available, resolve_data_dir, verify_file
from .errors import DATA_DIR_ENV, DatasetError
from .idx import find_idx, md5_of_idx, parse_idx, read_idx
from .sources import DATASETS, DatasetSpec, FileSpec, get_spec

__all__ = [
    "CIFAR10DataModule",
    "DATAMODULES",
    "DATASETS",
    "DATA_DIR_ENV",
    "DatasetError",
    "DatasetSpec",
    "FashionMNISTDataModule",
    "FileSpec",
    "ImageDataModule",
    "ImageTensorDataset",
    "MNISTDataModule",
    "datamodule_class",
    "dataset_folder",
    "ensure_available",
    "find_idx",
    "get_spec",
    "load_split",
    "md5_of_idx",
    "parse_idx",
    "read_cifar_batch",
    "read_cifar_meta",
    "read_cifar_split",
    "read_idx",
    "resolve_data_dir",
    "split_indices",
    "verify_file",
]
