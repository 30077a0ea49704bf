"""Configs do not run code: refuse the keys through which Hydra would import and call anything.

Hydra instantiates ``hydra.callbacks`` (and any ``_target_`` under ``hydra``, such as a launcher)
before medimg sees the config, so ``+hydra.callbacks.x._target_=shutil.copyfile`` on a command
line, or in a YAML file of a ``--config-dir`` folder, would run that function. medimg itself never
instantiates a ``_target_`` from a config, so it refuses both before Hydra starts, unless the user
passes ``--allow-callbacks`` (which also reaches the runs a benchmark starts, through
``MEDIMG_ALLOW_CALLBACKS``). The launchers medimg ships (``hydra/launcher=slurm``) and its one
callback (the sweep summary of ``conf/train.yaml``, a medimg class) come from the package and are
not scanned; a config folder passed on the command line is user input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from medimg_cli.errors import ConfigError

ALLOW_FLAG = "--allow-callbacks"
ALLOW_ENV = "MEDIMG_ALLOW_CALLBACKS"
_FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--info", "-i")
_ADVICE = f"medimg runs no code from configs; pass {ALLOW_FLAG} if you wrote it and trust it"


def trusted_argv(argv: list[str]) -> list[str]:
    """``argv`` without ``--allow-callbacks``, after refusing code-running keys unless it was given.

    Raises:
        ConfigError: an override or a ``--config-dir`` YAML file names ``_target_`` or
            ``hydra.callbacks``, naming the key and the file.
    """
    if ALLOW_FLAG in argv:
        os.environ[ALLOW_ENV] = "1"
        return [arg for arg in argv if arg != ALLOW_FLAG]
    if os.environ.get(ALLOW_ENV) == "1":
        return argv
    overrides, folders = _split(argv)
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if "_target_" in override or key.startswith(("hydra.callbacks", "hydra/callbacks")):
            raise ConfigError(f"override '{override}' would make Hydra import and call code; {_ADVICE}.")
        if key == "hydra.searchpath":
            folders += [p.removeprefix("file://") for p in _listed(override) if p.startswith("file://")]
    for folder in folders:
        for file, key in _code_keys_in(Path(folder).expanduser()):
            raise ConfigError(f"{file}: key '{key}' would make Hydra import and call code; {_ADVICE}.")
    return argv


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """The overrides of a Hydra command line and the folders given with ``--config-dir``/``-cd``."""
    overrides, folders, previous = [], [], None
    for arg in argv:
        flag, _, value = arg.partition("=")
        if previous in ("--config-dir", "-cd"):
            folders.append(arg)
        elif flag in ("--config-dir", "-cd") and value:
            folders.append(value)
        elif not arg.startswith("-") and previous not in _FLAGS_WITH_VALUE:
            overrides.append(arg)
        previous = arg
    return overrides, folders


def _listed(override: str) -> list[str]:
    """The items of a list override's value: ``key=[a,b]`` -> ``["a", "b"]``."""
    value = override.partition("=")[2].strip().strip("[]")
    return [item.strip().strip("'\"") for item in value.split(",") if item.strip()]


def _code_keys_in(folder: Path) -> Iterator[tuple[Path, str]]:
    """``(file, dotted key)`` of each ``_target_`` or ``hydra.callbacks`` in the YAML files under ``folder``."""
    files = sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]) if folder.is_dir() else []
    for file in files:
        try:
            content = yaml.safe_load(file.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # Hydra reports an unreadable file when (and if) it composes it
        under_callbacks = "callbacks" in file.relative_to(folder).parts[:-1]
        for key in _keys(content, ""):
            if key.endswith("_target_") or key.startswith("hydra.callbacks") or under_callbacks:
                yield file, key
                break


def _keys(node: Any, prefix: str) -> Iterator[str]:
    """Every dotted key path in a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            yield path
            yield from _keys(value, f"{path}.")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _keys(value, f"{prefix}{index}.")
