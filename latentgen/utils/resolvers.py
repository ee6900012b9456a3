"""OmegaConf resolvers used by ``conf/`` (registered when ``latentgen.utils`` is imported)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def register_resolvers() -> None:
    """Register ``${latentgen.root:}`` (the directory the command runs in) once per process."""
    if not OmegaConf.has_resolver("latentgen.root"):
        OmegaConf.register_new_resolver("latentgen.root", lambda: os.environ.get("LATENTGEN_ROOT", os.getcwd()))
    from latentgen.utils.resume import register_resume_resolvers

    register_resume_resolvers()  # run dir names, W&B sweep groups, Slurm launcher values
