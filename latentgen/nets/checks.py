"""Input checks shared by the token networks: ids outside the embedding table fail with a clear error."""

from __future__ import annotations

from torch import Tensor, aminmax, stack


def check_id_range(name: str, ids: Tensor, high: int, fix: str) -> None:
    """Raise if ``ids`` leave [0, high): an out-of-range id would otherwise crash the embedding lookup
    (a device-side assert on GPU). Costs one host sync, so sampling loops check their inputs once."""
    if ids.numel():
        low, top = stack(aminmax(ids)).tolist()
        if low < 0 or top >= high:
            raise ValueError(f"{name} must lie in [0, {high}), got range [{low}, {top}]; {fix}")


def check_labels(labels: Tensor, batch_size: int, high: int, fix: str, check_range: bool = True) -> None:
    """``labels`` must be one class id per sample, in [0, high) (range checked when ``check_range``)."""
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape [{batch_size}] (one class id per sample), got {tuple(labels.shape)}")
    if check_range:
        check_id_range("labels", labels, high, fix)
