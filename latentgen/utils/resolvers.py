"""Where ``conf/`` is, how the training command line maps onto it, and the OmegaConf resolvers it uses
(registered when ``latentgen.utils`` is imported)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

_PACKAGE = Path(__file__).resolve().parents[1]
# A wheel ships conf/ inside the package; a source checkout (and an editable install) reads the
# repository's own conf/, so that edits there take effect without reinstalling.
CONF_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf"


def register_resolvers() -> None:
    """Register ``${latentgen.root:}`` (the directory the command runs in) once per process, and the
    config dirs of ``LATENTGEN_CONFIG_DIR``."""
    if not OmegaConf.has_resolver("latentgen.root"):
        OmegaConf.register_new_resolver("latentgen.root", lambda: os.environ.get("LATENTGEN_ROOT", os.getcwd()))
    from latentgen.utils import config_dirs
    from latentgen.utils.resume import register_resume_resolvers

    register_resume_resolvers()  # run dir names, W&B sweep groups, Slurm launcher values
    config_dirs.register()


def experiment_in_slot(overrides: Sequence[str]) -> list[str]:
    """``+experiment=NAME`` as ``experiment=NAME``: the experiment then fills the ``experiment`` slot of
    ``train.yaml``, before ``local`` and ``debug``, which therefore win over it (Hydra would add an
    appended ``+experiment=`` after everything else)."""
    return [o[1:] if o.startswith("+experiment=") else o for o in overrides]


def experiment_slot_cli(main: Callable[..., Any]) -> Callable[..., Any]:
    """A ``@hydra.main`` entrypoint that reads ``+experiment=NAME`` on its command line as ``experiment=NAME``."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        sys.argv[1:] = experiment_in_slot(sys.argv[1:])
        return main(*args, **kwargs)

    return run
