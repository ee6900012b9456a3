"""Print the resolved config as a rich tree (secrets masked) and save it in the run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

from latentgen.utils.secrets import scrub_secrets


def print_config_tree(
    cfg: DictConfig,
    order: Sequence[str] = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras"),
    resolve: bool = True,
    save_to: str | Path | None = None,
) -> None:
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in order if f in cfg] + [f for f in cfg if f not in order and f != "hydra"]
    values = scrub_secrets(OmegaConf.to_container(OmegaConf.masked_copy(cfg, fields), resolve=resolve))
    for field in fields:
        branch = tree.add(field, style="bold", guide_style="dim")
        value = values[field]
        text = OmegaConf.to_yaml(value) if isinstance(value, dict | list) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to is not None:
        with open(save_to, "w") as f:
            rich.print(tree, file=f)
