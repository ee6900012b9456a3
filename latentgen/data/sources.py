"""Registry of the datasets the project knows: files, checksums, mirrors and image metadata."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from .cifar import BATCHES_DIR, META_FILE, TEST_BATCH, TRAIN_BATCHES


@dataclass(frozen=True)
class FileSpec:
    """One data file and the MD5 of its (decompressed, for IDX) content."""

    name: str
    md5: str


@dataclass(frozen=True)
class ArchiveSpec:
    """A downloadable archive that unpacks into the dataset's file folder."""

    url: str
    filename: str
    md5: str


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to locate, verify, download and describe one dataset.

    Files live in ``<data_dir>/<folder>/<subdir>/``. IDX datasets download each
    file as ``<mirror><name>.gz``; archive datasets download and unpack ``archive``.
    """

    name: str
    folder: str
    format: Literal["idx", "cifar"]
    files: tuple[FileSpec, ...]
    splits: MappingProxyType[str, tuple[str, ...]]
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    num_train: int
    num_test: int
    mirrors: tuple[str, ...] = ()
    archive: ArchiveSpec | None = None
    subdir: str = ""

    @property
    def file_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)

    def example_path(self) -> str:
        """A path, relative to the data root, that shows where the files belong."""
        first = self.files[0].name
        if self.format == "idx":
            return f"{self.folder}/{first}.gz"
        return f"{self.folder}/{self.subdir}/{first}"


_IDX_SPLITS = MappingProxyType(
    {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
)

MNIST = DatasetSpec(
    name="mnist",
    folder="mnist",
    format="idx",
    files=(
        FileSpec("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
        FileSpec("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
        FileSpec("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
        FileSpec("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
    ),
    splits=_IDX_SPLITS,
    image_shape=(1, 28, 28),
    num_classes=10,
    class_names=tuple(str(i) for i in range(10)),
    num_train=60000,
    num_test=10000,
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    folder="fashion-mnist",
    format="idx",
    files=(
        FileSpec("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        FileSpec("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9"),
        FileSpec("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
        FileSpec("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
    ),
    splits=_IDX_SPLITS,
    image_shape=(1, 28, 28),
    num_classes=10,
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    num_train=60000,
    num_test=10000,
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
)

CIFAR10 = DatasetSpec(
    name="cifar-10",
    folder="cifar-10",
    format="cifar",
    subdir=BATCHES_DIR,
    files=(
        FileSpec(TRAIN_BATCHES[0], "c99cafc152244af753f735de768cd75f"),
        FileSpec(TRAIN_BATCHES[1], "d4bba439e000b95fd0a9bffe97cbabec"),
        FileSpec(TRAIN_BATCHES[2], "54ebc095f3ab1f0389bbae665268c751"),
        FileSpec(TRAIN_BATCHES[3], "634d18415352ddfa80567beed471001a"),
        FileSpec(TRAIN_BATCHES[4], "482c414d41f54cd18b22e5b47cb7c3cb"),
        FileSpec(TEST_BATCH, "40351d587109b95175f43aff81a1287e"),
        FileSpec(META_FILE, "5ff9c542aee3614f3951f8cda6e48888"),
    ),
    splits=MappingProxyType({"train": TRAIN_BATCHES, "test": (TEST_BATCH,)}),
    image_shape=(3, 32, 32),
    num_classes=10,
    class_names=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    num_train=50000,
    num_test=10000,
    archive=ArchiveSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
)

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (MNIST, FASHION_MNIST, CIFAR10)}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "")


def get_spec(dataset: str | DatasetSpec) -> DatasetSpec:
    """Look a dataset up by name ('mnist', 'fashion-mnist', 'cifar-10'; '_'/'-' optional)."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    wanted = _normalize(dataset)
    for name, spec in DATASETS.items():
        if _normalize(name) == wanted:
            return spec
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
