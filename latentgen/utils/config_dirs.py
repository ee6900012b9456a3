"""``LATENTGEN_CONFIG_DIR``: the user's own config dirs, searched before latentgen's ``conf/``.

``LATENTGEN_CONFIG_DIR=/my/conf`` (several dirs: separated by ``os.pathsep``, the first one wins)
applies to every latentgen command and to ``compose_config``: ``/my/conf/experiment/my_exp.yaml``
runs with ``+experiment=my_exp``, ``/my/conf/local/default.yaml`` applies to every training run, and
a file with the same path as one of latentgen's replaces it.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

ENV = "LATENTGEN_CONFIG_DIR"


class UserConfigDirs(SearchPathPlugin):
    """Puts the dirs of ``LATENTGEN_CONFIG_DIR`` before latentgen's ``conf/`` (other Hydra apps: no change)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from latentgen.utils.resolvers import CONF_DIR

        dirs = [d for d in os.environ.get(ENV, "").split(os.pathsep) if d]
        main = [Path(e.path.removeprefix("file://")) for e in search_path.get_path() if e.provider == "main"]
        if not dirs or not any(p.resolve() == CONF_DIR for p in main):
            return
        for d in dirs:
            path = Path(d).expanduser().resolve()
            if not path.is_dir():
                raise NotADirectoryError(
                    f"{ENV} names {d}, which is not a directory: create it, or set {ENV} to your config "
                    f"dirs (separated by {os.pathsep!r}), or unset it"
                )
            search_path.prepend("latentgen-config-dir", f"file://{path}", anchor=SearchPathQuery(provider="main"))


def register() -> None:
    """Make Hydra use ``UserConfigDirs`` in this process (however latentgen was installed)."""
    Plugins.instance().register(UserConfigDirs)
