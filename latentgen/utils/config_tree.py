"""Print the resolved config as a rich tree and save it in the run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

SECRET_MARKERS = ("api_key", "apikey", "token", "password", "secret")


def scrub_secrets(container):
    """Return a copy of a plain dict/list config with values of secret-looking keys replaced."""
    if isinstance(container, dict):
        return {
            k: "***" if any(m in str(k).lower() for m in SECRET_MARKERS) else scrub_secrets(v)
            for k, v in container.items()
        }
    if isinstance(container, list):
        return [scrub_secrets(v) for v in container]
    return container


def print_config_tree(
    cfg: DictConfig,
    order: Sequence[str] = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras"),
    resolve: bool = True,
    save_to: str | Path | None = None,
) -> None:
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in order if f in cfg] + [f for f in cfg if f not in order and f != "hydra"]
    for field in fields:
        branch = tree.add(field, style="bold", guide_style="dim")
        value = cfg[field]
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=resolve)
            text = OmegaConf.to_yaml(scrub_secrets(value))
        else:
            text = str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to is not None:
        with open(save_to, "w") as f:
            rich.print(tree, file=f)
