"""Name -> thing registries, in the style of timm's ``register_model``.

Benchmarks, models and methods register themselves with a decorator, so ``ftbench list`` is a dump
of these registries rather than a hand-kept list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ftbench.errors import UsageError, unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes or factories."""

    def __init__(self, kind: str, package: str = "", builtin: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        # Built-in name -> the module of ``package`` that registers it, imported on first use only,
        # so that a command imports the one module it needs (and torch/timm only if that does). This
        # import by name is how a registry's base module reaches the plugin modules above it without
        # importing them (the one exception to the floors, docs/extending.md).
        self.package = package
        self.builtin = builtin or {}
        # Name prefix -> (resolver for names with it, the hint an unknown name's error adds): whole
        # families of names a plugin module answers (``timm/NAME``), added by that module.
        self.families: dict[str, tuple[Callable[[str], T], str]] = {}

    def import_builtin(self, name: str) -> None:
        """Import the module that registers built-in ``name``, if it is one and not registered yet."""
        if name not in self._items and name in self.builtin:
            import importlib

            importlib.import_module(f"{self.package}.{self.builtin[name]}")

    def import_builtins(self) -> None:
        """Import every module that registers a built-in (for listings and the error naming them all)."""
        import importlib

        for module in sorted(set(self.builtin.values())):
            importlib.import_module(f"{self.package}.{module}")

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; names are unique."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add_family(self, prefix: str, resolve: Callable[[str], T], hint: str) -> None:
        """Answer every unregistered name starting with ``prefix`` by ``resolve(name)``."""
        self.families[prefix] = (resolve, hint)

    def lookup(self, name: str) -> T:
        """:meth:`get`, or a family's resolver for an unregistered name with its prefix; the error
        for an unknown name adds every family's hint."""
        if name not in self._items:
            for prefix, (resolve, _) in self.families.items():
                if name.startswith(prefix):
                    return resolve(name)
        try:
            return self.get(name)
        except UsageError as e:
            hints = [hint for _, hint in self.families.values()]
            raise UsageError("; ".join([str(e), *hints])) from None

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
