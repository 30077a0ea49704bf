"""Models and data sources from installed packages, found through entry points.

A package adds a model or a source to medimg without editing it, in its ``pyproject.toml``:

    [project.entry-points."medimg.models"]
    tiny_mlp = "my_package.models:TinyMLP"        # an nn.Module class, as in medimg_cli/models
    [project.entry-points."medimg.sources"]
    my_scans = "my_package.data:my_scans"          # (data config) -> Splits, as in medimg_cli/data

and then ``medimg train model=plugin model.name=tiny_mlp`` or ``data=plugin data.source=my_scans``
(their other keys as ``+model.<key>=...``). Checkpoints store the name, so ``eval`` and ``export``
rebuild them while the package is installed. Entry points are only loaded when a name is not
medimg's own, and only those of the two groups.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from medimg_cli.errors import ConfigError
from medimg_cli.registry import Registry


def load_plugins(group: str, registry: Registry[Any]) -> None:
    """Register every entry point of ``group`` (``medimg.models`` or ``medimg.sources``) in
    ``registry`` under its name; one that fails to load is one line naming it."""
    for point in entry_points(group=group):
        if point.name in registry:
            continue
        try:
            registry.register(point.name)(point.load())
        except Exception as error:  # an installed package's import error, whatever it is
            raise ConfigError(
                f"entry point {point.name} = {point.value} of {group} (package "
                f"{point.dist.name if point.dist else '?'}) cannot be loaded: {type(error).__name__}: {error}"
            ) from None
