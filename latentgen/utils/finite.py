"""NaN/inf checks shared by the training callback and the artefact store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch


def all_finite(tensors: Iterable[Any]) -> bool:
    """Whether every floating-point tensor is finite, with one host sync for all of them."""
    flags = [torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    if not flags:
        return True
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


def nonfinite_names(named: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors (or floats) in ``named`` that hold a NaN or inf."""
    bad = []
    for name, value in named.items():
        if isinstance(value, float):
            value = torch.tensor(value)
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def shorten(names: list[str], n: int = 5) -> str:
    """The first ``n`` names, and how many more there are."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
