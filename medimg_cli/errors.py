"""User-facing errors: one short message, no traceback; exit code 2 (a mistake) or 3 (training stopped)."""

from __future__ import annotations

import difflib
import errno
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


# What the file system answers when the place, not the program, is wrong: said in one line, exit 2.
_PLACE_ERRORS = {
    errno.ENOSPC: "free space there and run again (files written before are intact; a training run resumes "
    "with trainer.resume=true)",
    errno.EDQUOT: "free space within your quota and run again (a training run resumes with trainer.resume=true)",
    errno.EACCES: "pick a place you can write to, or change its permissions",
    errno.EPERM: "pick a place you can write to, or change its permissions",
    errno.EROFS: "pick a place on a writable file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder; pick another path",
    errno.EISDIR: "it is a folder; name a file",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "pick a shorter path",
}


def describe_os_error(error: OSError) -> str | None:
    """``"<path>: <what happened>; <what to do>"`` for a file-system error a user can fix (full disk,
    permissions, a file where a folder should be), or ``None`` for one that is a bug."""
    advice = _PLACE_ERRORS.get(error.errno)
    if advice is None or error.filename is None:
        return None
    what = (error.strerror or str(error)).lower()
    return f"{error.filename}: {what}; {advice}"


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
