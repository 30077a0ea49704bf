"""A small name -> builder registry with did-you-mean errors (in the manner of timm's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from medimg_cli.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; the name is also the YAML file stem and its ``name:`` key.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"model"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a name can be registered once."""

        def add(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; unknown names raise a ``ConfigError``."""
        if name not in self._items:
            raise unknown_choice(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
