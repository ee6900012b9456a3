"""Checks of the config before anything is built, with errors that name the key and the fix.

* Trainer fields: Lightning reports a string or a fraction in an integer field with a bare
  ``AssertionError`` or a ``TypeError`` from deep inside its loops, ignores some fields under
  ``fast_dev_run``, and only once the trainer is built (after a prior's stage 1 has been trained).
* Secrets in the logger config (``logger.wandb.api_key=...``) are refused without echoing them.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

from lightning_fabric.connector import _PRECISION_INPUT
from omegaconf import DictConfig, OmegaConf

from latentgen.utils.errors import ClearError
from latentgen.utils.secrets import is_secret_key


class ConfigError(ClearError, ValueError):
    """A config value that cannot work. The message names the key, the value and the fix; the
    command line prints it alone, without a traceback."""


PRECISIONS = tuple(v for part in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(part))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= low


def _count_or_fraction(value: Any) -> bool:
    return (_is_int(value) and value >= 0) or (isinstance(value, float) and 0.0 <= value <= 1.0)


def _devices(value: Any) -> bool:
    if _is_int(value):
        return value >= -1
    if isinstance(value, str):
        return value == "auto" or all(p.strip().lstrip("-").isdigit() for p in value.split(","))
    return isinstance(value, list | tuple) and bool(value) and all(_is_int(v) and v >= 0 for v in value)


# key -> (accepted values, in words; example; check). ``null`` passes for every key.
TRAINER_RULES: dict[str, tuple[str, str, Callable[[Any], bool]]] = {
    "max_epochs": ("a whole number >= -1 (-1: no limit)", "10", _int_at_least(-1)),
    "min_epochs": ("a whole number >= 0", "1", _int_at_least(0)),
    "max_steps": ("a whole number >= -1 (-1: no limit)", "1000", _int_at_least(-1)),
    "min_steps": ("a whole number >= 0", "100", _int_at_least(0)),
    "limit_train_batches": ("a number of batches (int >= 0) or a fraction in [0.0, 1.0]", "0.25", _count_or_fraction),
    "limit_val_batches": ("a number of batches (int >= 0) or a fraction in [0.0, 1.0]", "10", _count_or_fraction),
    "limit_test_batches": ("a number of batches (int >= 0) or a fraction in [0.0, 1.0]", "10", _count_or_fraction),
    "limit_predict_batches": ("a number of batches (int >= 0) or a fraction in [0.0, 1.0]", "10", _count_or_fraction),
    "overfit_batches": ("a number of batches (int >= 0) or a fraction in [0.0, 1.0]", "3", _count_or_fraction),
    "log_every_n_steps": ("a whole number >= 0", "50", _int_at_least(0)),
    "accumulate_grad_batches": ("a whole number >= 1", "4", _int_at_least(1)),
    "num_sanity_val_steps": ("a whole number >= -1 (-1: the whole validation set)", "2", _int_at_least(-1)),
    "check_val_every_n_epoch": ("a whole number >= 1", "1", _int_at_least(1)),
    "num_nodes": ("a whole number >= 1", "2", _int_at_least(1)),
    "fast_dev_run": ("true, false or a number of batches (int >= 0)", "true",
                     lambda v: isinstance(v, bool) or (_is_int(v) and v >= 0)),
    "gradient_clip_val": ("a number >= 0", "1.0", lambda v: _is_number(v) and v >= 0),
    "devices": ("a device count (int, -1: all), 'auto', a list of device ids or a string like '0,1'", "1",
                _devices),
    "precision": (f"one of {', '.join(map(str, PRECISIONS))}", "bf16-mixed", lambda v: v in PRECISIONS),
}


def trainer_config_problems(trainer: DictConfig) -> list[str]:
    """One line per invalid trainer field: key, value, accepted values and an example."""
    problems = []
    for key, (accepted, example, check) in TRAINER_RULES.items():
        value = trainer.get(key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if value is not None and not check(value):
            problems.append(f"trainer.{key}={value!r} is invalid: give {accepted}, e.g. trainer.{key}={example}")
    return problems


def logger_secret_keys(loggers: DictConfig) -> list[str]:
    """Config paths of secret keys with a value in the logger config (``logger.wandb.api_key``)."""
    found = []

    def walk(node: Any, path: str) -> None:
        for key, value in node.items() if isinstance(node, dict) else ():
            if is_secret_key(key) and value is not None:
                found.append(f"{path}.{key}")
            else:
                walk(value, f"{path}.{key}")

    walk(OmegaConf.to_container(loggers, resolve=False), "logger")
    return found


def validate_config(cfg: DictConfig) -> None:
    """Raise one ConfigError for a secret in the logger config, or listing every invalid trainer field."""
    loggers = cfg.get("logger")
    secrets = logger_secret_keys(loggers) if isinstance(loggers, DictConfig) else []
    if secrets:
        raise ConfigError(
            f"{', '.join(secrets)} is refused: a key in the config or on the command line ends up in run "
            "files and the shell history. Remove it and set the WANDB_API_KEY environment variable, or run "
            "`wandb login` once on this machine."
        )
    trainer = cfg.get("trainer")
    problems = trainer_config_problems(trainer) if isinstance(trainer, DictConfig) else []
    if problems:
        raise ConfigError("invalid trainer config:\n  " + "\n  ".join(problems))
