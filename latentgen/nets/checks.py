"""Input checks shared by the networks: ids outside an embedding table, and class labels, fail with a clear error."""

from __future__ import annotations

from torch import Tensor, aminmax, stack


def check_id_range(name: str, ids: Tensor, high: int, fix: str) -> None:
    """Raise if ``ids`` leave [0, high): an out-of-range id would otherwise crash the embedding lookup
    (a device-side assert on GPU). Costs one host sync, so sampling loops check their inputs once."""
    if ids.numel():
        low, top = stack(aminmax(ids)).tolist()
        if low < 0 or top >= high:
            raise ValueError(f"{name} must lie in [0, {high}), got range [{low}, {top}]; {fix}")


def check_labels(labels: Tensor | None, batch_size: int, num_classes: int | None, *, null_ok: bool = False,
                 check_range: bool = True) -> None:
    """The check of class labels: one id per sample in [0, num_classes), none for an unconditional model.

    ``null_ok``: the model also takes the null class ``num_classes`` of classifier-free guidance, and
    ``labels=None`` for it. The id range is checked when ``check_range`` (one host sync).
    """
    if num_classes is None:
        if labels is not None:
            raise ValueError("labels were given but the model is unconditional (num_classes=None): pass "
                             "labels=None, or train with model.num_classes")
        return
    if labels is None:
        if not null_ok:
            raise ValueError(f"labels are required since num_classes={num_classes}: pass one class id per sample")
        return
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape [{batch_size}] (one class id per sample), got {tuple(labels.shape)}")
    if check_range:
        null = f" and {num_classes} for no class" if null_ok else ""
        check_id_range("labels", labels, num_classes + null_ok, f"use class ids 0..{num_classes - 1}{null}")
