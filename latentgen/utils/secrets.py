"""Secrets in configs and on the command line: which keys hold one, and masking them.

A config key holds a secret when its name, in lower case and split into words at ``_``, ``-``, ``.``
and camelCase boundaries, matches one of these rules:

* it contains ``password``, ``passwd`` or ``secret`` (``db_password``, ``client_secret``);
* it is or ends with ``api_key`` / ``apikey`` (``api_key``, ``wandb_api_key``, ``apiKey``);
* its last word is ``token`` (``token``, ``auth_token``, ``hf_token``, ``github-token``), except a
  token of a model's vocabulary or a per-token quantity: ``mask_token``, ``pad_token``,
  ``bos_token``, ``eos_token``, ``unk_token``, ``cls_token``, ``sep_token``, ``use_mask_token``,
  ``bits_per_token``.

Plural or longer words are not secrets: ``num_tokens``, ``max_tokens``, ``tokens``, ``tokenizer``,
``mask_token_id``. The rule looks at key names only, at every depth including the top level, and
masks the whole value (a dict or list under a secret key included).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

MASK = "***"
SECRET_SUBSTRINGS = ("password", "passwd", "secret")
API_KEY_ENDINGS = ("api_key", "apikey")
# words before a final "token" that make it a model's vocabulary entry or a per-token quantity
NOT_SECRET_BEFORE_TOKEN = frozenset({"mask", "pad", "bos", "eos", "sos", "unk", "cls", "sep", "start",
                                     "end", "special", "per"})
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[_\-.\s]+")


def key_words(key: Any) -> list[str]:
    """``"wandb.apiKey"`` -> ``["wandb", "api", "key"]``."""
    return [w for w in _SEPARATORS.split(_CAMEL_BOUNDARY.sub("_", str(key)).lower()) if w]


def is_secret_key(key: Any) -> bool:
    """Whether a config key (its last component) names a secret; see the module docstring."""
    words = key_words(key)
    if not words:
        return False
    joined = "_".join(words)
    if any(s in joined for s in SECRET_SUBSTRINGS) or joined.endswith(API_KEY_ENDINGS):
        return True
    return words[-1] == "token" and (len(words) == 1 or words[-2] not in NOT_SECRET_BEFORE_TOKEN)


def scrub_secrets(container: Any) -> Any:
    """A copy of a plain dict/list config with the values of secret keys replaced by ``***``."""
    if isinstance(container, dict):
        return {k: MASK if is_secret_key(k) else scrub_secrets(v) for k, v in container.items()}
    if isinstance(container, list):
        return [scrub_secrets(v) for v in container]
    return container


def override_is_secret(override: str) -> bool:
    """Whether a command-line override (``+db.password=x``, ``nested={api_key: x}``) sets a secret."""
    key, sep, value = override.partition("=")
    if not sep or key.startswith("-"):
        return False
    last = re.split(r"[./@]", key.lstrip("~+"))[-1]
    if is_secret_key(last):
        return True
    # a dict value given inline: the keys inside count as well
    return any(is_secret_key(k) for k in re.findall(r"[{,]\s*([\w\-.]+)\s*:", value))


def mask_override(override: str) -> str:
    """``+db_password=hunter2`` -> ``+db_password=***``; other arguments are returned unchanged."""
    if not override_is_secret(override):
        return override
    return override.partition("=")[0] + "=" + MASK


def mask_text(text: str, overrides: list[str], kv_sep: str = "=") -> str:
    """``text`` with every secret override in it masked (lists of overrides, Hydra's
    ``override_dirname``, which joins them with ``kv_sep`` in place of ``=``)."""
    for line in overrides:
        if override_is_secret(line):
            masked = mask_override(line)
            text = text.replace(line, masked).replace(line.replace("=", kv_sep), masked.replace("=", kv_sep))
    return text


@contextlib.contextmanager
def masked_argv() -> Iterator[None]:
    """While inside, ``sys.argv`` shows secret overrides masked (for tools that record the command
    line, such as W&B); the real command line is restored afterwards, so that processes started
    later from ``sys.argv`` (DDP workers) get the real values."""
    original = sys.argv
    sys.argv = [original[0], *(mask_override(a) for a in original[1:])] if original else original
    try:
        yield
    finally:
        sys.argv = original


def _map_strings(container: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(container, dict):
        return {k: _map_strings(v, fn) for k, v in container.items()}
    if isinstance(container, list):
        return [_map_strings(v, fn) for v in container]
    return fn(container) if isinstance(container, str) else container


def _strings(container: Any) -> Iterator[str]:
    if isinstance(container, dict | list):
        for value in container.values() if isinstance(container, dict) else container:
            yield from _strings(value)
    elif isinstance(container, str):
        yield container


def mask_yaml_file(path: Path) -> None:
    """Rewrite a YAML file Hydra saved (config, hydra config, overrides) with its secrets masked:
    values of secret keys, and secret overrides wherever they appear as text."""
    if not path.is_file():
        return
    loaded = OmegaConf.load(path)
    kv_sep = OmegaConf.select(loaded, "hydra.job.config.override_dirname.kv_sep", default="=") \
        if isinstance(loaded, DictConfig) else "="
    doc = OmegaConf.to_container(loaded, resolve=False)
    secret_overrides = [s for s in _strings(doc) if override_is_secret(s)]
    masked = _map_strings(scrub_secrets(doc), lambda s: mask_text(s, secret_overrides, kv_sep))
    if masked == doc:
        return
    tmp = path.with_name(f".{path.name}.masking")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(masked)))
    os.replace(tmp, path)


def mask_hydra_files() -> None:
    """Mask secrets in the files Hydra wrote before the task started: this job's
    ``.hydra/{config,hydra,overrides}.yaml`` and, in a multirun, the sweep's ``multirun.yaml``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # composed without a Hydra app: Hydra wrote no files
        return
    hydra_cfg = HydraConfig.get()
    files = []
    if hydra_cfg.output_subdir is not None:
        folder = Path(hydra_cfg.runtime.output_dir) / str(hydra_cfg.output_subdir)
        files += [folder / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    if hydra_cfg.mode == RunMode.MULTIRUN:
        files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    for path in files:
        mask_yaml_file(path)
