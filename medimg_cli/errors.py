"""User-facing errors: one short message, no traceback; exit code 2 (a mistake) or 3 (training stopped)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A user mistake in a config key, a value or an input file.

    The CLI prints the message (one or two lines) and exits with code 2.
    """


class TrainingStopped(RuntimeError):
    """Training cannot go on meaningfully (a non-finite loss): one message, exit code 3."""

    exit_code = 3


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_choice(what: str, value: str, choices: Iterable[str]) -> ConfigError:
    """Build the error for a name that is not one of ``choices`` (sorted in the message)."""
    choices = sorted(choices)
    return ConfigError(f"unknown {what} '{value}'. Valid: {', '.join(choices)}.{did_you_mean(value, choices)}")


def check_arguments(prefix: str, owner: str, target: Callable[..., Any], args: Mapping[str, Any]) -> None:
    """Raise a ``ConfigError`` for the first key of ``args`` that ``target`` does not accept.

    Args:
        prefix: the config group of the keys, e.g. ``"model"`` (shown as ``model.<key>``).
        owner: what ``target`` is, for the message, e.g. ``"model 'cnn'"``.
        target: the function or class the keys are passed to.
        args: the keyword arguments from the config.
    """
    valid = [p for p in inspect.signature(target).parameters if p not in ("self", "params")]
    for key in args:
        if key not in valid:
            raise ConfigError(
                f"{prefix}.{key} is not an argument of {owner}. "
                f"Valid: {', '.join(valid) or 'none'}.{did_you_mean(key, valid)}"
            )
