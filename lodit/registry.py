"""Name -> component registries, so a config picks a variant by name.

Adding a variant is one class plus one ``@REGISTRY.register("name")`` line.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from lodit.errors import LoditError

T = TypeVar("T")


class Registry(Generic[T]):
    """A small named table of components of one kind (e.g. ``bottleneck``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            choices = ", ".join(sorted(self._entries)) or "(none registered)"
            raise LoditError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
