"""Error type raised for missing, damaged or unreadable dataset files."""

from __future__ import annotations

from pathlib import Path

from latentgen.utils.errors import ClearError

DATA_DIR_ENV = "LATENTGEN_DATA_DIR"


class DatasetError(ClearError, RuntimeError):
    """A dataset file is missing, damaged or unreadable.

    The message always names the file concerned and what to do about it.
    """


def data_dir_fix(example: str | Path) -> str:
    """Standard advice on pointing the project at a folder holding the data.

    ``example`` is a path relative to the data root, e.g. ``mnist/train-images-idx3-ubyte.gz``.
    """
    return (
        f"set {DATA_DIR_ENV} or paths.data_dir=... to a folder containing {example}, "
        "or run on a machine with internet access with download=True to fetch it"
    )
