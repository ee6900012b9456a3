"""Rank-aware logger: messages from DDP ranks other than 0 are dropped unless asked for."""

from __future__ import annotations

import logging

from lightning_utilities.core.rank_zero import rank_prefixed_message, rank_zero_only


class RankedLogger(logging.LoggerAdapter):
    def __init__(self, name: str = __name__, rank_zero_only: bool = True) -> None:
        super().__init__(logging.getLogger(name), extra={})
        self.rank_zero_only = rank_zero_only

    def log(self, level: int, msg: str, *args, rank: int | None = None, **kwargs) -> None:
        if not self.isEnabledFor(level):
            return
        current = getattr(rank_zero_only, "rank", 0)
        msg, kwargs = self.process(msg, kwargs)
        msg = rank_prefixed_message(msg, current)
        if self.rank_zero_only and current != 0:
            return
        if rank is None or current == rank:
            self.logger.log(level, msg, *args, **kwargs)
