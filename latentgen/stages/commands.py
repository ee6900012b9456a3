"""Command lines as text: Hydra override values taken literally, and argv quoted for bash."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Any


def hydra_value(value: Any) -> str:
    """A Hydra override value taken literally (paths may hold '=', ',' or spaces)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def shell_word(arg: str) -> str:
    """Quote for bash, readably: ``key='value'`` Hydra overrides go in double quotes."""
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    if not re.search(r'["$`\\!]', arg):
        return f'"{arg}"'
    return shlex.quote(arg)


def shell_command(argv: Sequence[str]) -> str:
    """``argv`` as one line that bash splits back into ``argv``."""
    return " ".join(shell_word(a) for a in argv)
