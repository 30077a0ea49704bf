"""Run a command's task function under Hydra, turning user mistakes into short messages.

Hydra parses the command line (overrides, ``-m``, ``--cfg``, ``--help``, ``--config-dir``)
and composes ``conf/<command>.yaml``. Hydra's own error printer exits with code 1 and a
paragraph; medimg asks Hydra to raise instead (``HYDRA_FULL_ERROR=1``), prints composition
errors and ``ConfigError`` in one or two lines, and exits with code 2 (in a sweep, after the
other jobs have run). Users who set
``HYDRA_FULL_ERROR=1`` themselves get the full traceback, as with any Hydra app.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from rich.console import Console
from rich.markup import escape

from medimg_cli.errors import ConfigError, TrainingStopped, describe_os_error, unknown_choice
from medimg_cli.trust import trusted_argv

_stderr = Console(stderr=True, highlight=False)
# Hydra plugins that add options to a hydra/ group, and how to get them
PLUGINS = {
    "hydra/sweeper": " (optuna: pip install 'medimg[optuna]' && pip install --no-deps hydra-optuna-sweeper)",
    "hydra/launcher": " (slurm, local: pip install 'medimg[cluster]')",
}


def print_error(command: str | None, message: str) -> None:
    """Print ``medimg [<command>]: error: <message>`` on stderr."""
    prog = f"medimg {command}" if command else "medimg"
    # escaped: messages hold brackets ('medimg[wandb]', [0, 1]) that rich would read as markup
    _stderr.print(f"[bold red]{prog}: error:[/] {escape(message)}", markup=True, soft_wrap=True)


def dispatch(command: str, subcommands: dict[str, str], argv: list[str]) -> str | int:
    """The subcommand named by ``argv[0]``, or the exit code after printing the subcommands (0 for
    ``--help``, 2 with a one-line error when it is missing or unknown). ``subcommands``: name -> help."""
    if argv and argv[0] in subcommands:
        return argv[0]
    if argv and argv[0] in ("-h", "--help", "help"):
        width = max(map(len, subcommands))
        lines = [f"usage: medimg {command} <subcommand> [overrides]", ""]
        lines += [f"  {name:<{width}}  {text}" for name, text in subcommands.items()]
        print("\n".join([*lines, "", f"'medimg {command} <subcommand> --help' shows its options."]))
        return 0
    first = next(iter(subcommands))
    print_error(command, f"expected a subcommand: {', '.join(subcommands)} (e.g. medimg {command} {first} --help)")
    return 2


def describe(error: Exception) -> str:
    """A short message for a ``ConfigError``, a Hydra or OmegaConf composition error or a file-system
    error a user can fix; ``""`` for an ``OSError`` that is a bug (its traceback is shown)."""
    if isinstance(error, (ConfigError, TrainingStopped)):
        return str(error)
    if isinstance(error, OSError) and not isinstance(error, HydraException):  # Hydra's MissingConfig is an OSError
        return describe_os_error(error) or ""
    if isinstance(error, MissingMandatoryValue):
        return f"{error.full_key} has no value; pass {error.full_key}=<value>"
    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, value = error.missing_cfg_file.rpartition("/")
        return str(unknown_choice(group or "config", value, error.options)) + PLUGINS.get(group, "")
    cause = error.__cause__ or error.__context__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(cause, OmegaConfBaseException):
        parent = getattr(cause, "parent_node", None)
        detail = str(cause).splitlines()[0]
        if isinstance(parent, DictConfig) and "not in struct" in detail:
            detail += f"; valid keys there: {', '.join(str(k) for k in parent.keys())}"
        return f"{' '.join(lines[:2])} ({detail})"
    return " ".join(lines[:3])


def run_hydra(command: str, task: Callable[[DictConfig], Any], argv: list[str]) -> int:
    """Compose the command's config from ``argv`` and call ``task``.

    Each command's config is named after it: ``medimg augment preview`` reads ``conf/augment_preview.yaml``.

    Returns:
        The exit code: 0, or 2 after a user mistake.
    """
    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        argv = trusted_argv(argv)
    except ConfigError as error:
        print_error(command, str(error))
        return 2

    failed_jobs, exit_code = 0, 0

    @hydra.main(version_base="1.3", config_path="pkg://medimg_cli.conf", config_name=command.replace(" ", "_"))
    def entry(cfg: DictConfig) -> Any:
        # A user mistake in one job is reported here, so the other jobs of a sweep still run.
        nonlocal failed_jobs, exit_code
        try:
            return task(cfg)
        except (ConfigError, OmegaConfBaseException, TrainingStopped, OSError) as error:
            if user_wants_traceback or not describe(error):
                raise
            print_error(command, describe(error))
            failed_jobs += 1
            exit_code = max(exit_code, getattr(error, "exit_code", 2))
            return None

    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [f"medimg {command}", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        entry()
    except (HydraException, OmegaConfBaseException, OSError) as error:  # OSError: Hydra making the run folder
        if user_wants_traceback or not describe(error):
            raise
        print_error(command, describe(error))
        return 2
    except ValueError:  # Optuna's sweeper asking for the best of trials that all failed (each said why)
        if not failed_jobs or user_wants_traceback:
            raise
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    return exit_code if failed_jobs else 0
