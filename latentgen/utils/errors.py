"""Errors whose message is the whole story: what is wrong, and how to fix it."""

from __future__ import annotations


class ClearError(Exception):
    """Base of latentgen's errors that name the problem and the fix in their message.

    Entrypoints print such an error as one ``Error: ...`` line, without a traceback that would bury it.
    """
