"""Name -> thing registries, in the style of timm's ``register_model``.

Benchmarks, models and methods register themselves with a decorator, so ``ftbench list`` is a dump
of these registries rather than a hand-kept list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ftbench.errors import unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes or factories."""

    def __init__(self, kind: str, package: str = "", builtin: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        # Built-in name -> the module of ``package`` that registers it, imported on first use only,
        # so that a command imports the one module it needs (and torch/timm only if that does).
        self.package = package
        self.builtin = builtin or {}

    def import_builtin(self, name: str) -> None:
        """Import the module that registers built-in ``name``, if it is one and not registered yet."""
        if name not in self._items and name in self.builtin:
            import importlib

            importlib.import_module(f"{self.package}.{self.builtin[name]}")

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; names are unique."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Look ``name`` up, raising a UsageError that lists the accepted names."""
        try:
            return self._items[name]
        except KeyError:
            raise unknown(self.kind, name, sorted(self._items)) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
