"""Random number generator states in checkpoints, per rank, for exact resumes.

Lightning checkpoints hold weights, optimizer, schedulers and loop counters but no RNG state; without
it a resumed run shuffles the next epoch and restarts dead codebook entries differently from the
uninterrupted run. This callback stores Python, NumPy and torch (CPU and CUDA) states of every rank.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn


def capture_rng_state() -> dict[str, Any]:
    """Only tensors and plain Python values: checkpoints stay loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RNGState(Callback):
    """Save every rank's RNG states with each checkpoint and restore this rank's on resume.

    The state is restored when the checkpoint is loaded and once more at the start of the first
    training epoch after it: Lightning builds the train data iterator in between (drawing from the
    RNG), and the uninterrupted run drew its next epoch's shuffle from the saved state itself.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state = capture_rng_state()
        rank, world = _world()
        if world == 1:
            return {"per_rank": [state]}
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, state)  # every rank dumps checkpoints, rank 0 writes them
        return {"per_rank": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("per_rank") or []
        if not per_rank:
            return
        rank, world = _world()
        if len(per_rank) != world:
            rank_zero_warn(
                f"RNG states were saved by {len(per_rank)} rank(s) and are restored on {world}: every rank "
                "takes rank 0's state (resume is then not bit-exact)"
            )
        self._pending = per_rank[rank] if len(per_rank) == world else per_rank[0]
        restore_rng_state(self._pending)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        # resumed mid-epoch: no epoch start comes first, so restore before the first batch
        self.on_train_epoch_start(trainer, pl_module)
