"""``medimg <command> [arguments]``: pick the command, hand the rest of the line to it.

Each module in ``medimg_cli/commands/`` is a command: it has a one-line ``HELP`` and a
``main(argv) -> int``. Adding a command is adding a module there.

    medimg --help
    medimg train model=unet data.task=segmentation
    medimg train --help
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path

import medimg_cli.commands
import medimg_cli.conf
from medimg_cli.errors import unknown_choice
from medimg_cli.hydra_app import print_error, run_hydra


def commands() -> dict[str, str]:
    """All commands: name -> one-line help, read from the modules' source without importing
    them (importing torch would make ``medimg --help`` take seconds)."""
    found = {}
    for info in pkgutil.iter_modules(medimg_cli.commands.__path__):
        if info.name.startswith("_"):
            continue
        source = Path(info.module_finder.path, f"{info.name}.py").read_text()
        help_line = next(
            ast.literal_eval(node.value)
            for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "HELP" for t in node.targets)
        )
        found[info.name] = help_line
    return found


def usage(available: dict[str, str]) -> str:
    width = max(len(name) for name in available)
    lines = ["usage: medimg <command> [arguments]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_line}" for name, help_line in sorted(available.items())]
    lines += ["", "'medimg <command> --help' shows a command's options and config groups."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medimg`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `medimg train --help | head`: the reader left; not an error to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 141  # 128 + SIGPIPE, as a shell reports it


def _main(argv: list[str]) -> int:
    available = commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(available))
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"medimg {version('medimg')}")
        return 0
    name = argv[0]
    if name not in available:
        print_error(None, str(unknown_choice("command", name, available)))
        return 2
    config = _help_config(argv)
    if config is not None:  # Hydra's help needs the config alone: not the command's torch and MONAI
        words = config.split("_")
        return run_hydra(" ".join(words), lambda cfg: None, argv[len(words) :])
    return importlib.import_module(f"medimg_cli.commands.{name}").main(argv[1:])


def _help_config(argv: list[str]) -> str | None:
    """The config a ``--help`` line asks about (``train``, ``augment_preview``...), else ``None``."""
    if not any(arg in ("-h", "--help", "--hydra-help") for arg in argv[1:]):
        return None
    conf = Path(medimg_cli.conf.__file__).parent
    for words in (argv[:2], argv[:1]):  # a subcommand's config first: augment preview
        if all(not w.startswith("-") for w in words) and (conf / f"{'_'.join(words)}.yaml").is_file():
            return "_".join(words)
    return None


if __name__ == "__main__":
    sys.exit(main())
