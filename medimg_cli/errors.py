"""User-facing errors: one short message, exit code 2, no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A user mistake in a config key, a value or an input file.

    The CLI prints the message (one or two lines) and exits with code 2.
    """


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_choice(what: str, value: str, choices: Iterable[str]) -> ConfigError:
    """Build the error for a name that is not one of ``choices`` (sorted in the message)."""
    choices = sorted(choices)
    return ConfigError(
        f"unknown {what} '{value}'. Valid: {', '.join(choices)}.{did_you_mean(value, choices)}"
    )
